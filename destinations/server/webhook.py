"""`POST /webhook`: Segment's Webhooks destination pointed at this server.

Segment signs each call with the shared secret: `X-Signature` is the hex HMAC-SHA1 of the raw body
(for an array of messages, of the first element's raw text). The digest is computed over the bytes
exactly as received, so the first element is located in the body rather than re-serialised.

Two modes (`[server] delivery`):
- "outbox": the messages are committed like the tracking API's and delivered by the workers;
- "direct": stateless, for many identical processes behind a load balancer: each message is mapped
  and sent to every vendor before answering. 200 means every request was delivered or failed for
  good (the body says which, per destination); 503 or 429 (with Retry-After when a vendor gave one)
  asks Segment to send the whole call again, so destinations that already got it get it again:
  direct mode is at-least-once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from ..base import Destination, HttpRequest
from ..delivery.intake import IntakeReport, note_warnings
from ..errors import Filtered, InvalidMessage
from .intake import (
    ApiError,
    Intake,
    Prepared,
    accept,
    get_intake,
    now_iso,
    parse_json,
    prepare,
    read_body,
    unauthorized,
)

if TYPE_CHECKING:
    from ..delivery import Outcome, Sender

log = logging.getLogger("destinations.server")

_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def first_element(body: bytes) -> bytes | None:
    """The exact bytes of the first element of a JSON array body (None: not an array, or empty)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    start = _WS.match(text, 0).end()  # type: ignore[union-attr]
    if text[start : start + 1] != "[":
        return None
    start = _WS.match(text, start + 1).end()  # type: ignore[union-attr]
    if text[start : start + 1] in ("]", ""):
        return None
    try:
        _, end = _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):
        return None
    return text[start:end].encode("utf-8")


def signature_ok(secret: bytes, body: bytes, given: str) -> bool:
    """`given` against the HMAC-SHA1 of the body, and for an array of its first element, in constant time."""
    given_bytes = given.strip().lower().encode("latin-1", "replace")
    ok = hmac.compare_digest(hmac.new(secret, body, hashlib.sha1).hexdigest().encode(), given_bytes)
    first = first_element(body)
    if first is not None:
        ok |= hmac.compare_digest(hmac.new(secret, first, hashlib.sha1).hexdigest().encode(), given_bytes)
    return ok


# --- direct delivery --------------------------------------------------------------------------------


@dataclass
class DirectResult:
    """What became of the messages for one destination instance."""

    delivered: int = 0
    failed: int = 0
    filtered: int = 0
    invalid: int = 0
    retry: bool = False
    not_sent: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    retry_after: float | None = None
    throttled: bool = False
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        status = "retry" if self.retry else "failed" if self.failed else "delivered" if self.delivered else "skipped"
        out: dict[str, Any] = {"status": status, "delivered": self.delivered, "failed": self.failed}
        if self.filtered:
            out["filtered"] = self.filtered
        if self.invalid:
            out["invalid"] = self.invalid
            out["errors"] = self.errors[:10]
        if self.not_sent:
            out["notSent"] = self.not_sent
        if self.statuses:
            out["vendorStatuses"] = dict(self.statuses)
        return out


def deliver_direct(intake: Intake, name: str, destination: Destination, messages: list[dict[str, Any]]) -> DirectResult:
    """Map and send every message for one instance, in order; stop at the first retryable failure so a
    later event never overtakes an earlier one that Segment will send again."""
    result = DirectResult()
    sender: Sender = intake.sender(name)
    metrics = intake.metrics
    for position, message in enumerate(messages):
        try:
            requests_, warnings = destination.handle_with_warnings(message)
        except Filtered:
            result.filtered += 1
            metrics.filtered.labels(name).inc()
            continue
        except InvalidMessage as exc:
            result.invalid += 1
            result.errors.append(str(exc))
            metrics.invalid.labels(name).inc()
            mid = message.get("messageId")
            log.info("%s will not get %s: %s", name, mid, exc, extra={"destination": name, "messageId": mid})
            continue
        if warnings:
            report = IntakeReport()
            note_warnings(report, name, message.get("messageId"), warnings)
            metrics.mapped(report)
        for request in requests_:
            outcome = _timed_send(intake, name, sender, request)
            result.statuses[outcome.status] += 1
            if outcome.kind == "delivered":
                result.delivered += 1
                metrics.direct_outcome(name, "delivered")
            elif outcome.kind == "retry":
                result.retry = True
                result.throttled = outcome.status == "429"
                if outcome.retry_after is not None:
                    result.retry_after = max(result.retry_after or 0.0, outcome.retry_after)
                metrics.direct_outcome(name, "retried")
                result.not_sent = len(messages) - position - 1
                log.warning(
                    "%s: the vendor answered %s; asking the sender to retry",
                    name,
                    outcome.status,
                    extra={"destination": name},
                )
                return result
            else:
                result.failed += 1
                metrics.direct_outcome(name, "dead")
                what = "refused the account's credentials" if outcome.kind == "config" else "refused a request for good"
                log.warning("%s: the vendor %s (%s)", name, what, outcome.status, extra={"destination": name})
    return result


def _timed_send(intake: Intake, name: str, sender: Sender, request: HttpRequest) -> Outcome:
    started = time.monotonic()
    outcome = sender.send(request)
    intake.metrics.observe_vendor(name, outcome, time.monotonic() - started)
    return outcome


async def direct(intake: Intake, prepared: Prepared, unsupported: list[dict[str, Any]]) -> JSONResponse:
    """Deliver to every instance at once (one thread each), then answer for all of them."""
    results: dict[str, DirectResult] = {}
    messages = prepared.events

    async def one(name: str, destination: Destination) -> None:
        results[name] = await anyio.to_thread.run_sync(deliver_direct, intake, name, destination, messages)

    if messages:
        async with anyio.create_task_group() as group:
            for name, destination in intake.config.destinations.items():
                group.start_soon(one, name, destination)
    intake.metrics.intake("webhook", prepared.received, len(prepared.rejected), None)
    if messages:
        intake.metrics.accepted.labels("webhook").inc(len(messages))
    body: dict[str, Any] = {"destinations": {name: results[name].to_dict() for name in sorted(results)}}
    if prepared.rejected:
        body["rejected"] = [r.to_dict() for r in prepared.rejected]
    if unsupported:
        body["unsupported"] = unsupported
    retrying = [r for r in results.values() if r.retry]
    if retrying:
        throttled = all(r.throttled for r in retrying)
        waits = [r.retry_after for r in retrying if r.retry_after is not None]
        headers = {"Retry-After": str(math.ceil(max(waits)))} if waits else None
        code, status = ("throttled", 429) if throttled else ("unavailable", 503)
        names = ", ".join(sorted(n for n, r in results.items() if r.retry))
        message = f"not delivered to {names} yet; send this call again"
        return JSONResponse({"code": code, "message": message, **body}, status, headers=headers)
    if prepared.rejected and not messages and not unsupported:
        raise ApiError(400, "invalid_events", prepared.rejected[0].reason, extra=body)
    failed = any(r.failed for r in results.values())
    return JSONResponse({"success": True, "delivered": not failed, **body})


# --- the endpoint -----------------------------------------------------------------------------------

router = APIRouter(tags=["Segment Webhooks destination"])


def chosen_by_segment(message: Any) -> None:
    """Drop `integrations.All` from a message Segment's Webhooks destination sent: Segment already chose
    to send it, and Engage sends `{"All": false, "Webhooks": true}`, which would otherwise filter it at
    every destination. A destination's own key set to false still turns it off (MAPPINGS "Real traffic")."""
    integrations = message.get("integrations") if isinstance(message, dict) else None
    if isinstance(integrations, dict):
        for key in [k for k in integrations if isinstance(k, str) and k.lower() == "all"]:
            del integrations[key]


_MESSAGE = {"type": "object", "description": "A Segment message as the Webhooks destination sends it."}
_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [_MESSAGE, {"type": "array", "items": _MESSAGE}]}}},
    },
    "parameters": [
        {
            "name": "X-Signature",
            "in": "header",
            "required": False,
            "description": "hex HMAC-SHA1 of the body (of the first element for an array), when webhook_secret is set",
            "schema": {"type": "string"},
        }
    ],
}
_ERROR = {"content": {"application/json": {"schema": {"type": "object", "required": ["code", "message"]}}}}


@router.post(
    "/webhook",
    summary="Segment Webhooks destination: one message or an array",
    openapi_extra=_OPENAPI,
    responses={
        200: {"description": "Committed (outbox mode) or delivered / failed for good (direct mode)"},
        400: {"description": "Bad JSON, bad gzip, or every message invalid", **_ERROR},
        401: {"description": "Missing or wrong X-Signature", **_ERROR},
        413: {"description": "The body is larger than the server's limit", **_ERROR},
        429: {"description": "A vendor throttles (direct mode): retry after Retry-After", **_ERROR},
        503: {"description": "A vendor is unavailable (direct mode) or the outbox is: retry", **_ERROR},
    },
    operation_id="segment_webhook",
)
async def webhook(request: Request, intake: Intake = Depends(get_intake)) -> JSONResponse:  # noqa: B008
    limit = intake.config.server.webhook_max_body_bytes
    body = await read_body(request, raw_limit=limit, limit=limit)
    if intake.webhook_secrets:
        given = request.headers.get("x-signature")
        if not given:
            raise unauthorized("X-Signature is required: the hex HMAC-SHA1 of the body with the shared secret")
        # Every secret is tried, so that one being rotated in or out passes, and timing tells nothing.
        ok = False
        for secret in intake.webhook_secrets:
            ok |= signature_ok(secret, body, given)
        if not ok:
            raise unauthorized("X-Signature does not match the body (hex HMAC-SHA1 with the shared secret)")
    data = parse_json(body)
    if isinstance(data, dict):
        messages: list[Any] = [data]
    elif isinstance(data, list):
        messages = data
    else:
        raise ApiError(400, "invalid_body", "the body must be a message (JSON object) or an array of messages")
    for message in messages:
        chosen_by_segment(message)
    prepared = prepare(messages, kind=None, received_at=now_iso(), measure=False, set_aside_other_types=True)
    unsupported = set_aside(intake, prepared, messages)
    if intake.config.server.delivery == "direct":
        return await direct(intake, prepared, unsupported)
    _, rejected = await accept(intake, "webhook", prepared)
    if rejected and len(rejected) == len(prepared.rejected) + len(prepared.events) and not unsupported:
        raise ApiError(
            400,
            "invalid_events",
            f"every message was rejected; the first: {rejected[0].reason}",
            extra={"rejected": [r.to_dict() for r in rejected]},
        )
    answer: dict[str, Any] = {"success": True}
    if rejected:
        answer["rejected"] = [r.to_dict() for r in rejected]
    if unsupported:
        answer["unsupported"] = unsupported
    return JSONResponse(answer)


# The calls Segment's Webhooks send that are no spec call; any other type is counted as "other", so that
# a sender cannot grow the metric's labels.
KNOWN_OTHER_TYPES = frozenset({"delete"})


def set_aside(intake: Intake, prepared: Prepared, messages: list[Any]) -> list[dict[str, Any]]:
    """Count and log the calls no destination takes (Segment's `delete` for a user deletion): answered as
    taken, since Segment never retries a 4xx and there is nothing to retry."""
    out = []
    for index, kind in prepared.unsupported:
        message = messages[index]
        intake.metrics.unsupported.labels("webhook", kind if kind in KNOWN_OTHER_TYPES else "other").inc()
        ids = {k: message.get(k) for k in ("messageId", "userId", "anonymousId") if isinstance(message.get(k), str)}
        log.info("Segment sent a %s call (%s); no destination takes %s calls: answered and set aside", kind,
                 ", ".join(f"{k} {v}" for k, v in ids.items()) or "no id", kind, extra=ids)  # fmt: skip
        out.append({"index": index, "type": kind})
    return out


# Webhooks (Actions) may send with PUT or PATCH; the same route takes them.
for _method in ("PUT", "PATCH"):
    router.add_api_route(
        "/webhook",
        webhook,
        methods=[_method],
        summary=f"Segment Webhooks (Actions) with {_method}: as POST",
        responses={200: {"description": "As POST"}},
        operation_id=f"segment_webhook_{_method.lower()}",
    )
