"""Segment's HTTP tracking API as its libraries call it: `/v1/batch`, `/v1/import` and `/v1/track` …
(analytics-python, rudder-sdk-python and Segment's other server libraries), `/v1/t|p|i|g|a|s` and `/v1/b`
(analytics.js in the browser, and the mobile libraries' batches). The steps are in intake.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .intake import (
    BATCH_LIMIT,
    CALLS,
    EVENT_LIMIT,
    MAX_EVENTS,
    ApiError,
    Intake,
    accept,
    basic_username,
    get_intake,
    json_type,
    now_iso,
    parse_json,
    prepare,
    read_body,
    unauthorized,
)  # fmt: skip

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


async def _intake(request: Request, intake: Intake, kind: str | None, *, from_path: bool = True) -> JSONResponse:
    """One route of the tracking API: a batch when `kind` is None, else one event of that call type
    (the path's type overriding the body's, or, `from_path` False, used only when the body has none)."""
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
        raise ApiError(400, "invalid_body", f"the body must be a JSON object, not {json_type(data)}")
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
        prepared = (
            prepare([data], kind=kind, received_at=received_at, measure=False)
            if from_path
            else prepare([data], kind=None, default_kind=kind, received_at=received_at, measure=False)
        )
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


def _endpoint(kind: str | None, *, from_path: bool = True) -> Callable[..., Any]:
    async def endpoint(request: Request, intake: Intake = Depends(get_intake)) -> JSONResponse:  # noqa: B008
        return await _intake(request, intake, kind, from_path=from_path)

    return endpoint


# analytics.js (analytics-next's Segment.io plugin) posts each call to `{apiHost}/<first letter of its type>`
# and, in batching mode, to `{apiHost}/b`, as text/plain JSON with writeKey in the body and in Basic auth
# (packages/browser/src/plugins/segmentio/index.ts, fetch-dispatcher.ts, batched-dispatcher.ts). The mobile
# libraries (analytics-kotlin, analytics-swift) post their batches to `{apiHost}/b`.
BROWSER_CALLS = {"t": "track", "p": "page", "i": "identify", "g": "group", "a": "alias", "s": "screen"}


# (path, call type or None for a batch, type from the path over the body's, summary, operation id)
_ROUTES: list[tuple[str, str | None, bool, str, str]] = [
    ("/v1/batch", None, True, "Segment batch: up to 2,500 events, 500 KB", "segment_batch"),
    ("/v1/import", None, True, "Segment import: the batch endpoint under its historical name", "segment_import"),
    ("/v1/b", None, True, "analytics.js batching mode and the mobile libraries: a batch, as /v1/batch", "segment_b"),
    *((f"/v1/{c}", c, True, f"Segment {c}: one event, 32 KB", f"segment_{c}") for c in CALLS),
    *(
        (f"/v1/{letter}", c, False, f"analytics.js {c}: one event, 32 KB; the type from the body, else {c}",
         f"browser_{c}")
        for letter, c in BROWSER_CALLS.items()
    ),
]  # fmt: skip
for _path, _kind, _from_path, _summary, _operation in _ROUTES:
    router.add_api_route(
        _path,
        _endpoint(_kind, from_path=_from_path),
        methods=["POST"],
        summary=_summary,
        responses=_RESPONSES,
        openapi_extra=_openapi(_BATCH_SCHEMA if _kind is None else _EVENT_SCHEMA),
        operation_id=_operation,
    )


@router.post(
    "/v1/m",
    summary="analytics.js's own usage metrics: answered and ignored",
    responses={200: {"description": "Always", **_OK}},
    operation_id="browser_metrics",
)
async def browser_metrics(request: Request, intake: Intake = Depends(get_intake)) -> JSONResponse:  # noqa: B008
    """analytics-next reports its own counters here (packages/browser/src/core/stats/remote-metrics.ts);
    read within the tracking routes' limit, then dropped."""
    await read_body(request, raw_limit=intake.config.server.max_body_bytes, limit=EVENT_LIMIT)
    return JSONResponse({"success": True})


#: Every path of the tracking API, read off the routes: the ones a browser may call, so the ones CORS
#: applies to (app.py).
TRACKING_PATHS = frozenset(route.path for route in router.routes)
