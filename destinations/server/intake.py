"""What every way in shares: the server's state (`Intake`, reached by routes through the `get_intake`
dependency) and the steps of taking events: reading and decompressing the body, parsing, checking
against the Segment spec and Segment's limits, committing to the outbox's inbox, and answering.

The tracking API, the browser and mobile routes (tracking.py) and the Webhooks route (webhook.py) are
thin routes over these steps, so a rule changes in one place. Nothing here imports a route module.

Why each rule is here:
- the write key arrives as the HTTP Basic username, or as `writeKey` in the body (segment-analytics-python
  2.3+ and analytics.js); it is compared in constant time;
- bodies may be gzip (analytics-python's `gzip=True`); Segment's limits (32 KB an event, 500 KB and 2,500
  events a batch) are checked on the decompressed text, with a decompressor that stops at the limit, so a
  small compressed bomb costs at most the limit in memory;
- `{"success": true}` means committed: the events are in the outbox before the answer is sent;
- errors are `{"code": …, "message": …}`, the form the libraries read into their `APIError`; 4xx means
  "do not send this again", 5xx and 429 "try again later".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import sqlite3
import threading
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from ..config import Config
from ..delivery import Delivery, IntakeReport, Outbox, Sender
from ..errors import InvalidMessage
from ..spec import json_value, message_id_of, parse_iso_datetime, parse_message
from .metrics import Metrics
from .upstream import Upstream

try:  # parses and measures several times faster; the stdlib does the same job when it is absent
    import orjson
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    orjson = None  # type: ignore[assignment]

log = logging.getLogger("destinations.server")

HOUSEKEEPING_EVERY = 60.0  # seconds between prunes: delivered requests past the dedupe window, the debugger's rows


class Intake:
    """What the endpoints share: configuration, outbox, workers, metrics and the secrets to check."""

    def __init__(self, config: Config, *, deliver: bool = True) -> None:
        self.config = config
        self.outbox = Outbox.configured(config.outbox, debug_keep=config.debugger.keep_count)
        self.write_keys = [k.get_secret_value().encode() for k in config.server.write_keys]
        #: Every webhook secret (several while one is rotated); empty: signatures are not checked.
        self.webhook_secrets = [s.get_secret_value().encode() for s in config.server.webhook_secret]
        # One thread commits: SQLite has one writer anyway, and a single committer never waits on itself.
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="intake")
        self.delivery: Delivery | None = None
        self.metrics = Metrics(
            config.destinations,
            outbox_stats=self.outbox.stats,
            delivery_counts=self.delivery_counts,
            inbox_count=self.outbox.inbox_count,
        )
        if deliver and config.destinations:
            self.delivery = Delivery(
                str(config.outbox.path),
                config.destinations,
                config.outbox,
                observe=self.metrics.observe_vendor,
                on_mapped=self._mapped,
                debug_keep=config.debugger.keep_count,
            )
        self._senders: dict[str, Sender] = {}
        #: rudder-transformer, for the transformer requests this package does not own.
        self.upstream = Upstream(config.rudder)
        self.upstream.on_forwarded = self.metrics.forwarded
        self._lock = threading.Lock()
        self._housekeeping = threading.Event()

    def _mapped(self, report: IntakeReport) -> None:
        """Accepted events were mapped: count them per destination (the mapper logs who will not get what)."""
        self.metrics.mapped(report)

    def check_write_key(self, key: str | None) -> bool:
        """True when no write key is configured, or `key` is one of them (compared in constant time)."""
        if not self.write_keys:
            return True
        if not key:
            return False
        given = key.encode("utf-8", "surrogatepass")
        ok = False
        for expected in self.write_keys:  # every key is compared, so timing tells nothing about which
            ok |= hmac.compare_digest(expected, given)
        return ok

    def sender(self, name: str) -> Sender:
        """The pooled sender of an instance, for direct mode."""
        with self._lock:
            sender = self._senders.get(name)
            if sender is None:
                cfg = self.config.outbox
                sender = self._senders[name] = Sender(
                    self.config.destinations[name],
                    connect_timeout=cfg.connect_timeout,
                    read_timeout=cfg.read_timeout,
                    max_retry_after=cfg.max_retry_after,
                )
            return sender

    def delivery_counts(self) -> dict[str, Counter[str]]:
        if self.delivery is None:
            return {}
        c = self.delivery.counters
        with c.lock:
            return {"delivered": Counter(c.delivered), "retried": Counter(c.retried), "dead": Counter(c.dead)}

    def start(self) -> None:
        if self.delivery is not None:
            self.delivery.start()
            threading.Thread(target=self._housekeep, name="housekeeping", daemon=True).start()

    def _housekeep(self) -> None:
        outbox = Outbox.configured(self.config.outbox, debug_keep=self.config.debugger.keep_count)
        while True:  # once at start, then every HOUSEKEEPING_EVERY
            try:
                pruned = outbox.prune()
                if pruned:
                    log.info("pruned %d delivered requests older than the dedupe window", pruned)
            except Exception:
                log.warning("pruning delivered requests failed; trying again later", exc_info=True)
            if self._housekeeping.wait(HOUSEKEEPING_EVERY):
                break
        outbox.close()

    def stop(self) -> None:
        """Finish what is in flight; everything else stays in the outbox."""
        self._housekeeping.set()
        self.executor.shutdown(wait=True)
        if self.delivery is not None:
            cfg = self.config.outbox
            self.delivery.stop(timeout=cfg.connect_timeout + cfg.read_timeout + 5.0)
        with self._lock:
            for sender in self._senders.values():
                sender.close()
            self._senders.clear()


def is_loopback(host: str) -> bool:
    """Whether a host name or address is this machine's loopback (localhost, 127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


async def get_intake(request: Request) -> Intake:
    """The FastAPI dependency through which every route reaches the server's state.

    A coroutine although it never waits: FastAPI runs a plain function dependency on its thread pool,
    a thread hop per request for an attribute read."""
    return request.app.state.intake  # type: ignore[no-any-return]


async def find_intake(request: Request) -> Intake | None:
    """`get_intake` for routes that also serve without it (the RudderStack router mounted alone)."""
    return getattr(request.app.state, "intake", None)


EVENT_LIMIT = 32 * 1024
BATCH_LIMIT = 500 * 1024
MAX_EVENTS = 2500
CALLS = ("track", "identify", "page", "screen", "group", "alias")
_GZIP = frozenset({"gzip", "x-gzip"})


class ApiError(Exception):
    """An answer other than success: rendered as `{"code", "message"}` (plus `extra`) with `status`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra or {}

    def response(self) -> JSONResponse:
        return JSONResponse(
            {"code": self.code, "message": self.message, **self.extra}, self.status, headers=self.headers
        )


def unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Basic realm="destinations"'})


# --- reading a body ---------------------------------------------------------------------------------


async def read_body(request: Request, *, raw_limit: int, limit: int, what: str = "the server's limit") -> bytes:
    """The body as JSON text: at most `raw_limit` bytes on the wire (413) and `limit` once decompressed (400);
    `what` names the limit in the error."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in _GZIP and encoding not in ("identity", ""):
        raise ApiError(415, "unsupported_encoding", "Content-Encoding must be gzip or absent")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > raw_limit:
        raise _too_large_raw(raw_limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > raw_limit:
            raise _too_large_raw(raw_limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    if encoding in _GZIP:
        return gunzip(body, limit, what)
    if len(body) > limit:
        raise _too_large(limit, what)
    return body


def _too_large_raw(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is larger than {limit:,} bytes")


def _too_large(limit: int, what: str) -> ApiError:
    size = f"{limit // 1024} KB" if limit % 1024 == 0 else f"{limit:,} bytes"
    return ApiError(400, "too_large", f"the body is larger than {size} ({what})")


def gunzip(data: bytes, limit: int, what: str = "the server's limit") -> bytes:
    """Decompress gzip (one or more members) without ever holding more than `limit` + 1 bytes of output."""
    out = bytearray()
    rest = data
    while True:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += decompressor.decompress(rest, limit + 1 - len(out))
        except zlib.error:
            raise ApiError(400, "invalid_gzip", "the body is not valid gzip (Content-Encoding: gzip)") from None
        if len(out) > limit or decompressor.unconsumed_tail:
            raise _too_large(limit, what + ", once decompressed")
        if not decompressor.eof:
            raise ApiError(400, "invalid_gzip", "the gzip body is truncated")
        rest = decompressor.unused_data
        if not rest.strip(b"\0"):  # some writers pad the last member with zeros
            return bytes(out)


def parse_json(body: bytes) -> Any:
    """The JSON value of a body (`spec.json_value`: integers of any length exact); an ApiError (400) saying
    where, when it is not JSON."""
    try:
        return json_value(body)
    except RecursionError:
        raise ApiError(400, "invalid_json", "the body is nested too deeply") from None
    except ValueError as exc:
        where = f" (line {exc.lineno}, column {exc.colno})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ApiError(400, "invalid_json", f"the body is not valid JSON{where}") from None


# --- write keys -------------------------------------------------------------------------------------


def basic_username(request: Request) -> str | None:
    """The username of an HTTP Basic header, where Segment's libraries put the write key."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(":")[0] or None


# --- preparing events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejected:
    index: int
    message_id: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "messageId": self.message_id, "reason": self.reason}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _corrected_timestamp(event: dict[str, Any], received_at: str) -> str:
    """Segment's rule for a missing `timestamp`: receivedAt minus the client's clock skew
    (sentAt - originalTimestamp), or receivedAt when the client sent neither."""
    original, sent = event.get("originalTimestamp"), event.get("sentAt")
    if isinstance(original, str) and isinstance(sent, str):
        try:
            skewed = parse_iso_datetime(received_at) - (parse_iso_datetime(sent) - parse_iso_datetime(original))
        except (ValueError, OverflowError):
            return received_at
        return skewed.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return received_at


def _merged(batch_value: Any, event_value: Any) -> Any:
    """A batch-level object under the event's own (the event's keys win, as in Segment)."""
    if not isinstance(batch_value, dict) or not batch_value:
        return event_value
    if event_value is None:
        return dict(batch_value)
    if isinstance(event_value, dict):
        return {**batch_value, **event_value}
    return event_value  # not an object: left for validation to name


def _text_id(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


@dataclass
class Prepared:
    """Events ready to route, with their index in the request, and the events refused."""

    events: list[dict[str, Any]]
    positions: list[int]
    rejected: list[Rejected]
    #: (index, type) of calls no destination takes, answered as taken (Segment's `delete`): see `prepare`.
    unsupported: list[tuple[int, str]] = field(default_factory=list)

    @property
    def received(self) -> int:
        return len(self.events) + len(self.rejected) + len(self.unsupported)


def _other_type(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip()) and value.strip().lower() not in CALLS


def prepare(
    events: list[Any],
    *,
    kind: str | None,
    received_at: str,
    batch: dict[str, Any] | None = None,
    measure: bool = True,
    default_kind: str | None = None,
    set_aside_other_types: bool = False,
) -> Prepared:
    """Events completed as Segment's API completes them, and checked against the Segment spec.

    `kind` is the call type of a single-event endpoint (it overrides the body's); `default_kind` the
    type of an event that has none (analytics.js's `/v1/t` …); `batch` the batch body whose `context`,
    `integrations` and `sentAt` apply to every event; `measure` checks each event against the 32 KB
    limit (not needed when the whole body is smaller than that). With `set_aside_other_types`, an event
    whose `type` is text but no spec call (Segment's Webhooks send `delete`) is set aside in
    `unsupported` instead of being rejected: Segment never retries a 4xx, and nothing is lost.
    """
    batch = batch or {}
    context, integrations, sent_at = batch.get("context"), batch.get("integrations"), batch.get("sentAt")
    out = Prepared([], [], [])
    rejected = out.rejected
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            rejected.append(Rejected(index, None, f"message: must be a JSON object, not {json_type(event)}"))
            continue
        event.pop("writeKey", None)
        if measure and (reason := _over_limit(event)):
            rejected.append(Rejected(index, _text_id(event.get("messageId")), reason))
            continue
        if kind is not None:
            event["type"] = kind
        elif default_kind is not None and event.get("type") is None:
            event["type"] = default_kind
        elif set_aside_other_types and _other_type(event.get("type")):
            out.unsupported.append((index, event["type"].strip().lower()[:40]))
            continue
        if context is not None:
            event["context"] = _merged(context, event.get("context"))
        if integrations is not None:
            event["integrations"] = _merged(integrations, event.get("integrations"))
        try:
            if _text_id(event.get("messageId")) is None:
                # From the content, so a client resending the same event without an id still dedupes.
                event["messageId"] = message_id_of(event)
            if event.get("sentAt") is None:
                event["sentAt"] = sent_at if isinstance(sent_at, str) else received_at
            if event.get("receivedAt") is None:
                event["receivedAt"] = received_at
            if event.get("timestamp") is None:
                event["timestamp"] = _corrected_timestamp(event, received_at)
            parsed = parse_message(event)
            if parsed.userId is None and parsed.anonymousId is None:
                raise InvalidMessage(parsed.event_label, "userId", "or anonymousId is required by the Segment spec")
        except InvalidMessage as exc:
            rejected.append(Rejected(index, _text_id(event.get("messageId")), str(exc)))
            continue
        except (ValueError, TypeError, RecursionError) as exc:  # text that cannot be encoded, nesting too deep
            reason = f"message: cannot be read ({type(exc).__name__})"
            rejected.append(Rejected(index, _text_id(event.get("messageId")), reason))
            continue
        out.events.append(event)
        out.positions.append(index)
    return out


def _over_limit(event: dict[str, Any]) -> str | None:
    """Why an event is over Segment's 32 KB, measured as compact JSON; None when it is within."""
    try:
        size = len(orjson.dumps(event)) if orjson is not None else 0
    except (TypeError, orjson.JSONEncodeError):
        size = 0
    try:
        size = size or len(
            json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")
        )
    except (ValueError, RecursionError):
        return "message: cannot be encoded as JSON"
    if size > EVENT_LIMIT:
        return f"message: larger than {EVENT_LIMIT // 1024} KB (Segment's limit for one event)"
    return None


def json_type(value: Any) -> str:
    """How an answer names the JSON type of a value: "a string", "an array", "null"."""
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "an array", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


# --- committing -------------------------------------------------------------------------------------


def commit(
    intake: Intake, events: list[dict[str, Any]], source: str | None = None
) -> tuple[IntakeReport, list[tuple[int, str]]]:
    """Commit events to the outbox's inbox in one transaction (the delivery process maps them into
    vendor requests); returns a report and the events that could not be stored at all, by position
    (found by storing one by one when the whole set fails)."""
    outbox = intake.outbox
    try:
        outbox.accept_events(events, source=source)
        return IntakeReport(messages=len(events)), []
    except sqlite3.Error:
        raise
    except (ValueError, TypeError, RecursionError, OverflowError):
        # Some event cannot be written (a lone surrogate in a string, nesting too deep to encode):
        # keep the others, one transaction each, and name the ones that fail.
        log.info("a batch could not be stored as a whole; storing its events one by one")
    stored = 0
    failed: list[tuple[int, str]] = []
    for position, event in enumerate(events):
        try:
            outbox.accept_events([event], source=source)
        except sqlite3.Error:
            raise
        except (ValueError, TypeError, RecursionError, OverflowError) as exc:
            failed.append((position, f"message: cannot be stored ({type(exc).__name__})"))
            continue
        stored += 1
    return IntakeReport(messages=stored), failed


async def accept(intake: Intake, source: str, prepared: Prepared) -> tuple[IntakeReport | None, list[Rejected]]:
    """Commit the good events off the event loop, then wake the workers; returns the report and every
    rejected event (spec failures and those that could not be stored)."""
    report: IntakeReport | None = None
    rejected, events = prepared.rejected, prepared.events
    if events:
        loop = asyncio.get_running_loop()
        try:
            report, failed = await loop.run_in_executor(intake.executor, commit, intake, events, source)
        except sqlite3.Error as exc:
            log.error("the outbox refused a commit (%s); answering 503 so the client retries", exc)
            intake.metrics.intake(source, prepared.received, 0, None)
            raise ApiError(
                503, "unavailable", "the outbox cannot store events right now; try again", headers={"Retry-After": "5"}
            ) from None
        if failed:
            more = [Rejected(prepared.positions[i], _text_id(events[i].get("messageId")), r) for i, r in failed]
            rejected = sorted([*rejected, *more], key=lambda r: r.index)
        if intake.delivery is not None and report.messages:
            intake.delivery.inbox_changed()
    intake.metrics.intake(source, prepared.received, len(rejected), report)
    return report, rejected
