"""Routing messages to destination instances and committing their requests to the outbox."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..base import Destination, HttpRequest
from ..errors import Filtered, InvalidMessage, MappingWarning
from ..spec import parse_message
from .outbox import Outbox

log = logging.getLogger("destinations.mapping")


def message_id_of(message: Any) -> str:
    """The message's `messageId`, or a digest of its content, so a message sent twice dedupes either way."""
    if isinstance(message, dict):
        mid = message.get("messageId")
        if isinstance(mid, str) and mid.strip():
            return mid
    text = json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def user_key(message: Any) -> str:
    """Whose order a request keeps: userId || anonymousId, as the handlers saw them."""
    if isinstance(message, dict):
        for key in ("userId", "anonymousId"):
            value = message.get(key)
            if value is not None and not isinstance(value, bool) and str(value).strip():
                return str(value).strip()
    return ""


@dataclass
class IntakeReport:
    """What routing did with a set of messages."""

    messages: int = 0
    accepted: Counter[str] = field(default_factory=Counter)  # requests committed, per instance
    duplicates: int = 0
    filtered: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (messageId, instance, reason)
    # Optional values left out, per (instance, field stable name): MAPPINGS "Real traffic".
    warnings: Counter[tuple[str, str]] = field(default_factory=Counter)


def route(
    messages: Iterable[Any], destinations: Mapping[str, Destination], outbox: Outbox, *, keep_errors: int = 100
) -> IntakeReport:
    """Map every message for every instance and commit all resulting requests in one transaction."""
    report = IntakeReport()
    items = _map(messages, destinations, report, keep_errors=keep_errors)
    result = outbox.enqueue(items, credentials=credential_names(destinations))
    report.duplicates = result.duplicates
    report.accepted.update(result.accepted)
    return report


def _map(
    messages: Iterable[Any], destinations: Mapping[str, Destination], report: IntakeReport, *, keep_errors: int = 100
) -> list[tuple[str, str, str, list[HttpRequest]]]:
    """(instance, messageId, user key, requests) for every message and instance that takes it."""
    items: list[tuple[str, str, str, list[HttpRequest]]] = []
    for message in messages:
        report.messages += 1
        mid, user = message_id_of(message), user_key(message)
        try:  # parsed once for every instance; a message that fails is handed to each as it came
            parsed: Any = parse_message(message)
        except InvalidMessage:
            parsed = message
        for name, destination in destinations.items():
            try:
                requests_, warnings = destination.handle_with_warnings(parsed)
            except Filtered:
                report.filtered[name] += 1
                continue
            except InvalidMessage as exc:
                report.invalid[name] += 1
                if len(report.errors) < keep_errors:
                    report.errors.append((mid, name, str(exc)))
                continue
            if warnings:
                note_warnings(report, name, mid, warnings)
            if requests_:
                items.append((name, mid, user, requests_))
    return items


def note_warnings(report: IntakeReport, name: str, message_id: str | None, warnings: list[MappingWarning]) -> None:
    """Count and log the values a destination instance left out of a message's requests."""
    for w in warnings:
        report.warnings[(name, w.field)] += 1
        log.warning("%s sent %s without a value: %s", name, message_id, w,
                    extra={"destination": name, "messageId": message_id})  # fmt: skip


def credential_names(destinations: Mapping[str, Destination]) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
    """Each instance's declared credential names, for the outbox to leave out."""
    return {name: d.credential_names() for name, d in destinations.items()}


def map_inbox(
    outbox: Outbox, destinations: Mapping[str, Destination], *, limit: int = 500, lease: float = 60.0
) -> IntakeReport:
    """Map accepted events from the inbox into vendor requests; the requests are committed in the
    same transaction that removes the events from the inbox."""
    claimed = outbox.claim_inbox(limit, lease)
    report = IntakeReport()
    if not claimed:
        return report
    messages = [json.loads(body) for _, body in claimed]
    items = _map(messages, destinations, report)
    result = outbox.enqueue(items, inbox_ids=[rid for rid, _ in claimed], credentials=credential_names(destinations))
    report.duplicates = result.duplicates
    report.accepted.update(result.accepted)
    return report
