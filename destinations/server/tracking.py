"""Segment's HTTP tracking API (`/v1/batch`, `/v1/import`, `/v1/track` …), so analytics-python,
rudder-sdk-python and Segment's other libraries can point their `host` at this server.

What a library expects, and why each rule is here:
- the write key arrives as the HTTP Basic username, or as `writeKey` in the body (segment-analytics-python
  2.3+); it is compared in constant time;
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
import json
import logging
import sqlite3
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..delivery import IntakeReport, message_id_of
from ..errors import InvalidMessage
from ..spec import parse_iso_datetime, parse_message

if TYPE_CHECKING:
    from .app import Intake

try:  # parses and measures several times faster; the stdlib does the same job when it is absent
    import orjson
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    orjson = None  # type: ignore[assignment]

log = logging.getLogger("destinations.server")

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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """The JSON value of a body; NaN and Infinity are not JSON. orjson first; what it refuses (a lone
    surrogate, an integer beyond 64 bits) is given to the stdlib, so both read the same documents."""
    if orjson is not None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(body, parse_constant=_no_constant)
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

    @property
    def received(self) -> int:
        return len(self.events) + len(self.rejected)


def prepare(
    events: list[Any],
    *,
    kind: str | None,
    received_at: str,
    batch: dict[str, Any] | None = None,
    measure: bool = True,
) -> Prepared:
    """Events completed as Segment's API completes them, and checked against the Segment spec.

    `kind` is the call type of a single-event endpoint (it overrides the body's); `batch` the batch
    body whose `context`, `integrations` and `sentAt` apply to every event; `measure` checks each
    event against the 32 KB limit (not needed when the whole body is smaller than that).
    """
    batch = batch or {}
    context, integrations, sent_at = batch.get("context"), batch.get("integrations"), batch.get("sentAt")
    out = Prepared([], [], [])
    rejected = out.rejected
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            rejected.append(Rejected(index, None, f"message: must be a JSON object, not {_json_type(event)}"))
            continue
        event.pop("writeKey", None)
        if measure and (reason := _over_limit(event)):
            rejected.append(Rejected(index, _text_id(event.get("messageId")), reason))
            continue
        if kind is not None:
            event["type"] = kind
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


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "an array", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__
    )


# --- committing -------------------------------------------------------------------------------------


def commit(intake: Intake, events: list[dict[str, Any]]) -> tuple[IntakeReport, list[tuple[int, str]]]:
    """Commit events to the outbox's inbox in one transaction (the delivery process maps them into
    vendor requests); returns a report and the events that could not be stored at all, by position
    (found by storing one by one when the whole set fails)."""
    outbox = intake.outbox
    try:
        outbox.accept_events(events)
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
            outbox.accept_events([event])
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
            report, failed = await loop.run_in_executor(intake.executor, commit, intake, events)
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


# --- the endpoints ----------------------------------------------------------------------------------

router = APIRouter(tags=["Segment tracking API"])

_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A Segment message (https://segment.com/docs/connections/spec/common/).",
    "properties": {
        "type": {"type": "string", "enum": list(CALLS)},
        "userId": {"type": ["string", "null"]},
        "anonymousId": {"type": ["string", "null"]},
        "messageId": {"type": "string"},
        "timestamp": {"type": "string", "format": "date-time"},
        "event": {"type": "string"},
        "properties": {"type": "object"},
        "traits": {"type": "object"},
        "context": {"type": "object"},
        "integrations": {"type": "object"},
        "writeKey": {"type": "string"},
    },
}
_BATCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["batch"],
    "properties": {
        "batch": {"type": "array", "maxItems": MAX_EVENTS, "items": _EVENT_SCHEMA},
        "context": {"type": "object"},
        "integrations": {"type": "object"},
        "sentAt": {"type": "string", "format": "date-time"},
        "writeKey": {"type": "string"},
    },
}
_ERROR = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        }
    }
}
_OK = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["success"],
                "properties": {
                    "success": {"type": "boolean"},
                    "rejected": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "index": {"type": "integer"},
                                "messageId": {"type": ["string", "null"]},
                                "reason": {"type": "string"},
                            },
                        },
                    },
                },
            }
        }
    }
}


def _openapi(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "security": [{"writeKey": []}, {}],
    }


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Committed to the outbox; `rejected` lists events refused one by one", **_OK},
    400: {"description": "Bad JSON, bad gzip, a limit exceeded, or every event invalid", **_ERROR},
    401: {"description": "Missing or unknown write key", **_ERROR},
    413: {"description": "The body is larger than the server's limit", **_ERROR},
    415: {"description": "A Content-Encoding other than gzip", **_ERROR},
    503: {"description": "The outbox cannot store events now; retry", **_ERROR},
}


async def _intake(request: Request, kind: str | None) -> JSONResponse:
    intake: Intake = request.app.state.intake
    limit, what = (
        (BATCH_LIMIT, "Segment's limit for a batch") if kind is None else (EVENT_LIMIT, "Segment's limit for one event")
    )
    body = await read_body(request, raw_limit=intake.config.server.max_body_bytes, limit=limit, what=what)
    authorized = intake.check_write_key(basic_username(request))
    try:
        data = parse_json(body)
    except ApiError:
        if not authorized:  # an unauthenticated caller learns nothing about its body
            raise unauthorized(_KEY_HELP) from None
        raise
    if not isinstance(data, dict):
        if not authorized:
            raise unauthorized(_KEY_HELP)
        raise ApiError(400, "invalid_body", f"the body must be a JSON object, not {_json_type(data)}")
    if not authorized:
        body_key = data.get("writeKey")
        if not intake.check_write_key(body_key if isinstance(body_key, str) else None):
            raise unauthorized(_KEY_HELP if body_key is None and basic_username(request) is None else _KEY_WRONG)
    received_at = now_iso()
    if kind is None:
        events = data.get("batch")
        if not isinstance(events, list):
            raise ApiError(400, "invalid_batch", "batch must be an array of events")
        if len(events) > MAX_EVENTS:
            raise ApiError(
                400, "too_many_events", f"a batch holds at most {MAX_EVENTS:,} events; this one has {len(events):,}"
            )
        prepared = prepare(events, kind=None, received_at=received_at, batch=data, measure=len(body) > EVENT_LIMIT)
    else:
        prepared = prepare([data], kind=kind, received_at=received_at, measure=False)
    _, rejected = await accept(intake, "tracking", prepared)
    if rejected and len(rejected) == prepared.received:
        if kind is not None:
            raise ApiError(400, "invalid_message", rejected[0].reason)
        raise ApiError(
            400,
            "invalid_events",
            f"every event of the batch was rejected; the first: {rejected[0].reason}",
            extra={"rejected": [r.to_dict() for r in rejected]},
        )
    if rejected:
        return JSONResponse({"success": True, "rejected": [r.to_dict() for r in rejected]})
    return JSONResponse({"success": True})


_KEY_HELP = "a write key is required: send it as the HTTP Basic username, or as writeKey in the body"
_KEY_WRONG = "the write key is not one of this server's write keys"


def _endpoint(kind: str | None) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> JSONResponse:
        return await _intake(request, kind)

    return endpoint


router.add_api_route(
    "/v1/batch",
    _endpoint(None),
    methods=["POST"],
    summary="Segment batch: up to 2,500 events, 500 KB",
    responses=_RESPONSES,
    openapi_extra=_openapi(_BATCH_SCHEMA),
    operation_id="segment_batch",
)
router.add_api_route(
    "/v1/import",
    _endpoint(None),
    methods=["POST"],
    summary="Segment import: the batch endpoint under its historical name",
    responses=_RESPONSES,
    openapi_extra=_openapi(_BATCH_SCHEMA),
    operation_id="segment_import",
)
for _call in CALLS:
    router.add_api_route(
        f"/v1/{_call}",
        _endpoint(_call),
        methods=["POST"],
        summary=f"Segment {_call}: one event, 32 KB",
        responses=_RESPONSES,
        openapi_extra=_openapi(_EVENT_SCHEMA),
        operation_id=f"segment_{_call}",
    )
