"""Masking of secrets: the one place that knows which request parts are secret."""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import traceback
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

MASK = "***"

# Query parameters and headers that carry credentials, for every vendor.
SECRET_PARAMS = frozenset({"apikey", "token", "org_token", "orgtoken", "api_key", "writekey", "write_key"})
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key"})


def mask_params(params: Mapping[str, Any], declared: frozenset[str] = frozenset()) -> dict[str, Any]:
    """`params` with the built-in secret names and a destination's `declared` ones (lower case) masked."""
    return {k: (MASK if k.lower() in SECRET_PARAMS or k.lower() in declared else v) for k, v in params.items()}


def mask_headers(headers: Mapping[str, str], declared: frozenset[str] = frozenset()) -> dict[str, str]:
    return {k: (MASK if k.lower() in SECRET_HEADERS or k.lower() in declared else v) for k, v in headers.items()}


def redact_text(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each secret value in free text (response bodies, exception texts)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


_QUERY_SECRET = re.compile(r"(?i)\b(" + "|".join(sorted(SECRET_PARAMS)) + r")=([^&\s\"']+)")


def redact_query(text: str) -> str:
    """Mask secret query parameters in a URL or log line: `?apiKey=abc` -> `?apiKey=***`."""
    return _QUERY_SECRET.sub(lambda m: f"{m.group(1)}={MASK}", text)


class QuerySecretFilter(logging.Filter):
    """Masks secret query parameters in records of loggers that print URLs (urllib3 at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        record.msg = redact_query(str(record.msg))
        return True


_FILTER = QuerySecretFilter()


def guard_http_logs() -> None:
    """Attach the filter to urllib3's loggers (once): they log request lines with the query string."""
    for name in ("urllib3.connectionpool", "urllib3.connection", "requests", "httpx"):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def secret_forms(values: Iterable[str]) -> list[str]:
    """Every form a secret can take in a vendor's answer, an exception text or a log line. The plain secrets are
    each value as set and, for a Basic/Bearer value, its token and the password decoded from it (eSputnik's API
    key); each is masked as it is, URL-encoded (all of it, or all but `/`; either case of hex; `+` for spaces),
    as a JSON string with escaped slashes (PHP's json_encode) and in base64. Forms shorter than 4 characters are
    left out (they would mask ordinary text)."""
    plain = [v for v in values if v]
    for v in list(plain):
        if v.startswith(("Basic ", "Bearer ")):
            token = v.split(" ", 1)[1]
            plain.append(token)
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                plain.append(base64.b64decode(token).decode("utf-8").split(":", 1)[-1])
    out = []
    for v in plain:
        textual = [v]
        # Every character encoded, or all but "/" (what urllib's `quote` and most URL builders leave), each in
        # either case of hex; `+` for spaces; slashes escaped (PHP's json_encode).
        for encoded in (quote(v, safe=""), quote(v)):
            textual += [encoded, re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), encoded)]
        textual += [quote_plus(v), v.replace("/", "\\/")]
        out += [*textual, base64.b64encode(v.encode()).decode("ascii")]
        # Inside longer base64 text (an echoed URL or body): each of those forms, wherever it starts.
        for form in dict.fromkeys(textual):
            out += _base64_inside(form.encode())
    return list(dict.fromkeys(v for v in out if len(v) >= 4))  # once each, in order


def _base64_inside(secret: bytes) -> list[str]:
    """The base64 characters that `secret` alone decides wherever it starts inside longer encoded text (an echoed
    URL or body in base64): its encoding after 0, 1 and 2 bytes of anything, less the characters at either end that
    it shares with its neighbours."""
    forms = []
    for before in range(3):
        encoded = base64.b64encode(bytes(before) + secret).decode("ascii").rstrip("=")
        first, end = -(-8 * before // 6), 8 * (before + len(secret)) // 6  # whole characters of the secret's bits
        forms.append(encoded[first:end])
    return forms


def masked_traceback(exc: BaseException, secrets: Iterable[str]) -> str:
    """`exc`'s traceback as text with every form of each secret masked (`secret_forms`): what a fault's log line
    carries instead of the raw traceback, for a library caller's or a command's log, which masks nothing itself."""
    return redact_text("".join(traceback.format_exception(exc)), secret_forms(secrets))
