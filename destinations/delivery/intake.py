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
from .outbox import Event, Holder, Outbox, StoredForm

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
    dead_events: int = 0  # events set aside: they could not be read, mapped or stored (`outbox dead` lists them)


def route(
    messages: Iterable[Any], destinations: Mapping[str, Destination], outbox: Outbox, *, keep_errors: int = 100
) -> IntakeReport:
    """Map every message for every instance and commit all resulting requests in one transaction; a
    message whose requests cannot be stored is counted invalid for each instance that took it."""
    report = IntakeReport()
    events = [_map(message, destinations, report, keep_errors=keep_errors) for message in messages]
    _commit(outbox, events, destinations, report, keep_errors=keep_errors)
    return report


def _map(
    message: Any,
    destinations: Mapping[str, Destination],
    report: IntakeReport,
    *,
    inbox_id: int | None = None,
    keep_errors: int = 100,
) -> Event:
    """One message's requests for every instance that takes it; never raises: a message that cannot be
    mapped at all comes back as an Event with the reason (set aside, not retried)."""
    report.messages += 1
    try:
        mid, user = message_id_of(message), user_key(message)
    except (ValueError, TypeError, RecursionError) as exc:
        return Event([], inbox_id, f"it has no readable messageId or user ({type(exc).__name__})")
    try:  # parsed once for every instance; a message that fails is handed to each as it came
        parsed: Any = parse_message(message)
    except InvalidMessage:
        parsed = message
    except RecursionError:
        return Event([], inbox_id, "it is nested too deep to read")
    items: list[tuple[str, str, str, list[HttpRequest]]] = []
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
    return Event(items, inbox_id)


def _commit(
    outbox: Outbox,
    events: list[Event],
    destinations: Mapping[str, Destination],
    report: IntakeReport,
    *,
    holder: Holder | None = None,
    lease: float = 60.0,
    keep_errors: int = 100,
) -> None:
    result = outbox.enqueue(events, forms=stored_forms(destinations), holder=holder, lease=lease)
    report.duplicates += result.duplicates
    report.accepted.update(result.accepted)
    for position, reason in result.failed:
        event = events[position]
        report.dead_events += 1
        mid = event.items[0][1] if event.items else None
        log.error("an accepted event was set aside, %s: %s", mid or f"inbox event {event.inbox_id}", reason,
                  extra={"messageId": mid})  # fmt: skip
        for name, *_ in event.items:
            report.invalid[name] += 1
            if mid is not None and len(report.errors) < keep_errors:
                report.errors.append((mid, name, f"message: {reason}"))


def note_warnings(report: IntakeReport, name: str, message_id: str | None, warnings: list[MappingWarning]) -> None:
    """Count and log the values a destination instance left out of a message's requests."""
    for w in warnings:
        report.warnings[(name, w.field)] += 1
        log.warning("%s sent %s without a value: %s", name, message_id, w,
                    extra={"destination": name, "messageId": message_id})  # fmt: skip


def stored_forms(destinations: Mapping[str, Destination]) -> dict[str, StoredForm]:
    """How each instance's requests are stored: its declared credential names left out, its base URL taken off."""
    return {name: StoredForm(*d.credential_names(), d.base_url) for name, d in destinations.items()}


def map_inbox(
    outbox: Outbox,
    destinations: Mapping[str, Destination],
    holder: Holder,
    *,
    limit: int = 500,
    lease: float = 60.0,
) -> IntakeReport:
    """Map accepted events from the inbox into vendor requests, under the mapper lease; the requests are
    committed in the same transaction that removes the events from the inbox. An event that cannot be
    read, mapped or stored is set aside as a dead inbox event with its reason; the others go on.

    Raises LeaseLost when another process took the mapper lease meanwhile (nothing is committed)."""
    report = IntakeReport()
    claimed = outbox.claim_inbox(limit, holder, lease)
    if not claimed:
        return report
    events = []
    for rid, body in claimed:
        try:
            message = json.loads(body)
        except (ValueError, RecursionError) as exc:
            report.messages += 1
            events.append(Event([], rid, f"it is not readable JSON ({type(exc).__name__})"))
            continue
        events.append(_map(message, destinations, report, inbox_id=rid))
    try:
        _commit(outbox, events, destinations, report, holder=holder, lease=lease)
    except Exception:  # LeaseLost too: this process did not die mapping them, so it is not an attempt to count
        outbox.unclaim_inbox([rid for rid, _ in claimed])
        raise
    return report
