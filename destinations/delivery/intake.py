"""Routing messages to destination instances and committing their requests to the outbox."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..base import CART, Destination, HttpRequest
from ..carts import CartBook
from ..errors import Filtered, InvalidMessage, MappingWarning
from ..fields import sharing
from ..redaction import masked_traceback
from ..spec import has_surrogate, json_text, json_value, message_id_of, parse_message, raw_label
from . import debugger
from .outbox import Holder, LeaseLost, MessageRequests, Outbox, StoredForm

log = logging.getLogger("destinations.mapping")


def user_key(message: Any) -> str:
    """Whose order a request keeps: userId || anonymousId, as the handlers saw them."""
    if isinstance(message, dict):
        for key in ("userId", "anonymousId"):
            value = message.get(key)
            if value is None or isinstance(value, bool):
                continue
            if text := (value if type(value) is str else str(value)).strip():
                return text
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
    # Messages that could not be read, mapped or stored: from the inbox, set aside (`outbox dead` lists them);
    # from `send`, reported and not stored.
    dead_events: int = 0


def route(
    messages: Iterable[Any], destinations: Mapping[str, Destination], outbox: Outbox, *, keep_errors: int = 100
) -> IntakeReport:
    """Map every message for every instance and commit all resulting requests in one transaction; a
    message whose requests cannot be stored is counted invalid for each instance that took it."""
    report = IntakeReport()
    carts = outbox.cart_book()
    now = time.time()
    origin = ("send", now, None) if outbox.debug_keep else None
    events = [_map(message, destinations, report, keep_errors=keep_errors, carts=carts, origin=origin)
              for message in messages]  # fmt: skip
    _commit(outbox, events, destinations, report, keep_errors=keep_errors, carts=carts)
    return report


def _map(
    message: Any,
    destinations: Mapping[str, Destination],
    report: IntakeReport,
    *,
    inbox_id: int | None = None,
    keep_errors: int = 100,
    carts: CartBook | None = None,
    origin: tuple[str | None, float | None, str | None] | None = None,
) -> MessageRequests:
    """One message's requests for every instance that takes it; never raises: a message that cannot be
    mapped at all comes back as a MessageRequests with the reason (set aside, not retried). An instance
    that declares the cart enrichment is handed cart events with the whole cart from `carts`. With `origin`
    (way in, received at, the stored JSON text) the message's debugger record comes with it."""
    report.messages += 1
    ids = _identity(message, inbox_id)
    if isinstance(ids, MessageRequests):
        return ids
    mid = ids[0]
    try:  # parsed once for every instance; a message that fails is handed to each as it came
        parsed: Any = parse_message(message)
    except InvalidMessage:
        parsed = message
    except RecursionError:
        return MessageRequests([], inbox_id, "it is nested too deep to read", mid)
    sharing(parsed)  # every destination's Call derives the message's parts once; nothing here changes it
    try:
        items, outcomes = _hand(message, parsed, ids, destinations, report, keep_errors=keep_errors, carts=carts,
                                origin=origin)  # fmt: skip
    except (sqlite3.Error, MemoryError):  # the machine's state (a locked or full file, memory), not the event's:
        raise  # the round fails and is retried
    except Exception as exc:  # a fault of this package, not of the message: set aside, said, and the round goes on
        trace = masked_traceback(exc, _secrets(destinations))
        log.error("%s (%s) could not be mapped\n%s", mid, raw_label(message), trace, extra={"messageId": mid})
        again = (f"map it again with `destinations outbox replay --event {inbox_id}`" if inbox_id is not None
                 else "send it again")  # fmt: skip
        reason = f"it could not be mapped ({type(exc).__name__}: a fault of this package, logged with its traceback)"
        return MessageRequests([], inbox_id, f"{reason}; once fixed, {again}", mid)
    finally:
        sharing(None)
    record = None
    if origin is not None:
        record = debugger.record(message, origin[2], origin[0], origin[1], outcomes, message_id=mid, now=time.time())
    try:  # while the bodies are at hand; one that cannot be made is left to the outbox, which sets it aside
        texts = [[json_text(r.json) for r in requests_] for _, _, _, requests_ in items]
    except (ValueError, TypeError, RecursionError, OverflowError):
        texts = None
    return MessageRequests(items, inbox_id, None, mid, record, texts)


def _hand(
    message: Any,
    parsed: Any,
    ids: tuple[str, str],
    destinations: Mapping[str, Destination],
    report: IntakeReport,
    *,
    keep_errors: int,
    carts: CartBook | None,
    origin: tuple[str | None, float | None, str | None] | None,
) -> tuple[list[tuple[str, str, str, list[HttpRequest]]], dict[str, Any]]:
    """`_map`'s requests for every instance (instance, messageId, user key, requests) and, with `origin`, the
    outcome of each for the debugger; counted in `report`."""
    mid, user = ids
    items: list[tuple[str, str, str, list[HttpRequest]]] = []
    outcomes: dict[str, Any] = {}
    # A messageId no UTF-8 can carry can be stored nowhere: not as a cart's record of the events it took (which
    # would fail the round), nor with its requests, so the outbox sets the message aside, saying why.
    carts = carts if mid.isascii() or not has_surrogate(mid) else None
    for name, destination in destinations.items():
        handed = parsed
        if carts is not None and CART in destination.enrichments:
            # A resend of a cart event: its requests are stored already, and its cart change applied.
            if duplicates := carts.resent(name, destination, parsed, mid):
                report.duplicates += duplicates
                if origin is not None:
                    outcomes[name] = {"outcome": "requests", "count": duplicates, "warnings": []}
                continue
            try:
                handed = carts.hand(name, destination, message, parsed, mid)
            except Exception as exc:  # a bug in the cart must not stop the round: the message goes on as it came
                log.error("%s: the cart of %s could not be applied; it is handed on as it came\n%s", name, mid,
                          masked_traceback(exc, _secrets(destinations)))  # fmt: skip
        try:
            requests_, warnings = destination.handle_with_warnings(handed)
        except Filtered as exc:
            report.filtered[name] += 1
            if origin is not None:
                outcomes[name] = {"outcome": "filtered", "reason": exc.reason}
            continue
        except InvalidMessage as exc:
            report.invalid[name] += 1
            if len(report.errors) < keep_errors:
                report.errors.append((mid, name, str(exc)))
            if origin is not None:
                outcomes[name] = {"outcome": "invalid", "reason": str(exc), "path": exc.path}
            continue
        if warnings:
            note_warnings(report, name, mid, warnings)
        if requests_:
            items.append((name, mid, user, requests_))
        if origin is not None:
            # The requests themselves are the outbox's rows (kept while the debugger shows their message).
            outcomes[name] = {
                "outcome": "requests",
                "count": len(requests_),
                "warnings": [str(w) for w in warnings],
            }
    return items, outcomes


def _secrets(destinations: Mapping[str, Destination]) -> list[str]:
    """Every instance's secrets, for a fault's traceback (`masked_traceback`)."""
    return [secret for destination in destinations.values() for secret in destination.secrets()]


def _identity(message: Any, inbox_id: int | None) -> tuple[str, str] | MessageRequests:
    """(messageId, user key), or the message set aside saying which cannot be read."""
    try:
        mid = message_id_of(message)
    except (ValueError, TypeError, RecursionError) as exc:
        return MessageRequests([], inbox_id, f"messageId: cannot be read, nor a digest made of the message in its"
                                             f" place ({type(exc).__name__}); send a messageId of text")  # fmt: skip
    try:
        return mid, user_key(message)
    except (ValueError, TypeError, RecursionError) as exc:
        return MessageRequests([], inbox_id, f"userId/anonymousId: cannot be read as text ({type(exc).__name__})",
                               mid)  # fmt: skip


def _commit(
    outbox: Outbox,
    events: list[MessageRequests],
    destinations: Mapping[str, Destination],
    report: IntakeReport,
    *,
    holder: Holder | None = None,
    lease: float = 60.0,
    keep_errors: int = 100,
    carts: CartBook | None = None,
) -> None:
    result = outbox.enqueue(events, forms=stored_forms(destinations), holder=holder, lease=lease, carts=carts)
    report.duplicates += result.duplicates
    report.accepted.update(result.accepted)
    for position, reason in result.failed:
        message = events[position]
        report.dead_events += 1
        mid = message.message_id
        if message.inbox_id is not None:
            log.error("inbox event %d (%s) was set aside as dead: %s", message.inbox_id, mid or "no messageId", reason,
                      extra={"messageId": mid})  # fmt: skip
        else:
            log.error("%s was not stored: %s", mid or "a message", reason, extra={"messageId": mid})
        if mid is not None and not message.items and len(report.errors) < keep_errors:
            report.errors.append((mid, "every destination", f"message: {reason}"))
        for name, *_ in message.items:
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
    events: list[MessageRequests] = []
    carts = outbox.cart_book()
    renewed = time.monotonic()
    try:
        for rid, body, source, received in claimed:
            if time.monotonic() - renewed > lease / 3:  # a slow round keeps its lease: a live mapper is not replaced
                outbox.renew_mapper(holder, lease)
                renewed = time.monotonic()
            try:
                message = json_value(body)
            except (ValueError, RecursionError) as exc:
                report.messages += 1
                # Where it breaks (line, column), never what it holds: the text may carry anything.
                where = f": {exc}" if isinstance(exc, ValueError) else ": nested too deep"
                events.append(MessageRequests([], rid, f"it is not readable JSON ({type(exc).__name__}{where})"))
                continue
            if not isinstance(message, dict):  # the server takes only objects: a damaged row, or one put there by hand
                report.messages += 1
                events.append(MessageRequests([], rid, "it is not a JSON object"))
                continue
            origin = (source, received, body) if outbox.debug_keep else None
            events.append(_map(message, destinations, report, inbox_id=rid, carts=carts, origin=origin))
    except sqlite3.Error:  # the database's state (locked, full), not an event's: no attempt to count
        with contextlib.suppress(sqlite3.Error):  # else the claim counts once, as a process that stopped
            outbox.unclaim_inbox(holder)
        raise
    try:
        _commit(outbox, events, destinations, report, holder=holder, lease=lease, carts=carts)
    except LeaseLost:  # another mapper has these events now: their count is its business
        raise
    except Exception:  # this process did not die mapping them: not an attempt to count
        outbox.unclaim_inbox(holder)
        raise
    return report
