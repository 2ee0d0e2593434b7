"""Masking of secrets: the one place that knows which request parts are secret."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"

# Query parameters and headers that carry credentials, for every vendor.
SECRET_PARAMS = frozenset({"apikey", "token", "org_token", "orgtoken", "api_key"})
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key"})


def mask_params(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (MASK if k.lower() in SECRET_PARAMS else v) for k, v in params.items()}


def mask_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: (MASK if k.lower() in SECRET_HEADERS else v) for k, v in headers.items()}


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret value in free text (response bodies, exception texts)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text
