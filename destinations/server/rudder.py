"""RudderStack's transformer protocol, so a self-hosted rudder-server can use this package as its
transformer (`DEST_TRANSFORM_URL`).

rudder-server then keeps doing what it is good at (queueing, retries, ordering, scaling out) and
asks this server only to turn each event into vendor requests. Three routes matter to it:

- `POST /v0/destinations/{name}` (the processor stage): a JSON array of `{message, metadata,
  destination}`; answer one item per vendor request, `{"output": <payload>, "metadata", "statusCode": 200}`,
  or a per-event failure `{"metadata", "statusCode": 400 | 298, "error", "statTags"}`.
- `POST /routerTransform` (the router stage, used for the types `/features` lists there):
  `{"input": [...], "destType"}`; answer `{"output": [{"batchedRequest", "metadata": [...],
  "destination", "batched", "statusCode"}]}`, where every input's job appears in exactly one item
  (rudder-server checks that and retries the whole call otherwise).
- `GET /features`: what this transformer supports; rudder-server refuses to start its processor
  against a transformer without `supportSourceTransformV1`/`upgradedToSourceTransformV2`.

rudder-server checks the header `apiVersion: 2` on every 200 answer and panics on a mismatch,
so every 200 here carries it. The forms follow rudder-server's `processor/types` and
`router/types` structs and rudder-transformer's `defaultRequestConfig`/`getErrorRespEvents`;
rudder-server's router sends a `JSON_ARRAY` body as the string found under `batch`, verbatim.

Nothing here knows a vendor: each event goes through `Destination.handle`. Secrets in
`destination.Config` stay in memory (a small cache of configured destinations) and never reach an
error text or a log line; the package's errors already name keys, never values.
"""

from __future__ import annotations

import json
import threading
from functools import lru_cache
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request, Response

from ..base import Destination, HttpRequest
from ..delivery import Outcome, Sender
from ..delivery.intake import IntakeReport, note_warnings
from ..errors import ConfigurationError, Filtered, InvalidMessage
from ..registry import destination_types
from ..spec import json_text, json_value
from .intake import Intake, find_intake

try:  # orjson parses and writes several times faster; the stdlib is the fallback, never a requirement
    import orjson
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    orjson = None  # type: ignore[assignment]

router = APIRouter(tags=["RudderStack transformer"])

API_VERSION_HEADERS = {"apiVersion": "2"}
FILTERED_STATUS = 298  # rudder-server's FilterEventCode: "deliberately not sent", never retried
MAX_BATCH_EVENTS = 100  # events merged into one routerTransform batchedRequest
DEFAULT_BATCH_BYTES = 500_000  # and bytes of its body, when no configuration says (the outbox's batch_bytes)
_CACHE_SIZE = 256  # configured destinations kept; one per (type, Config) seen recently


# --- JSON ---------------------------------------------------------------------------------------


def loads(body: bytes) -> Any:
    """Parse a request body (`spec.json_value`); ValueError when it is not JSON (or nested past any sense)."""
    try:
        return json_value(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def dumps(value: Any) -> bytes:
    """JSON bytes of an answer: orjson's, or `json_text`'s where orjson refuses (an integer past 64 bits, a
    non-string key, a lone surrogate in echoed metadata: written as its escape). RecursionError when nested
    past what either writes."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:  # orjson.JSONEncodeError
            pass
    return json_text(value).encode()


class JSONResponse(Response):
    """A JSON answer written by `dumps` (orjson when present): no validation, no re-encoding."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def _ok(content: Any) -> JSONResponse:
    try:
        return JSONResponse(content, headers=API_VERSION_HEADERS)
    except (TypeError, ValueError, RecursionError):
        return _unwritable()


def _unwritable(index: int | None = None, item: Any = None) -> JSONResponse:
    """The answer to a call whose echoed metadata is nested too deeply to write back (what `dumps` refuses),
    naming the event (its place in the call, and its messageId when it has one of text) when known."""
    message = item.get("message") if isinstance(item, dict) else None
    mid = message.get("messageId") if isinstance(message, dict) else None
    named = f" ({mid[:100]})" if isinstance(mid, str) and mid.strip() else ""
    which = f"event {index}{named}: metadata" if index is not None else "metadata"
    return _error(400, f"the answer could not be written as JSON: {which} nested too deeply")


def _error(status: int, text: str) -> JSONResponse:
    return JSONResponse({"error": text}, status_code=status)


# --- destinations -------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _resolve(name: str) -> tuple[str, type[Destination]] | None:
    """(type name, class) for a destination type in any case: rudder-server lower-cases the path."""
    types = destination_types()
    if name in types:
        return name, types[name]
    folded = name.lower()
    for key, cls in types.items():
        if key.lower() == folded:
            return key, cls
    return None


@lru_cache(maxsize=64)
def _setting_names(cls: type[Destination]) -> tuple[str, ...]:
    return tuple(cls.Settings.model_fields)


@lru_cache(maxsize=_CACHE_SIZE)
def _configured(cls: type[Destination], items: tuple[tuple[str, Any], ...]) -> Destination | ConfigurationError:
    """A destination for one Config, built once: settings validation costs more than most mappings.

    A bad Config is cached too (as its error), so a misconfigured destination does not pay for
    validation on every event either. Memory only: the settings hold secrets.
    """
    try:
        return cls(dict(items))
    except ConfigurationError as exc:
        return exc


@lru_cache(maxsize=_CACHE_SIZE)
def _configured_json(cls: type[Destination], items: str) -> Destination | ConfigurationError:
    return _configured.__wrapped__(cls, tuple((k, v) for k, v in json.loads(items)))


def destination_for(cls: type[Destination], config: Any) -> Destination:
    """The destination for a rudder-server `destination.Config`; ConfigurationError when it is bad.

    Keys the destination's Settings do not declare are dropped (a RudderStack Config also carries
    its own keys: event filters, consent settings, connection modes), and so are empty strings and
    nulls, which is how RudderStack stores an optional field left blank.
    """
    if not isinstance(config, dict):
        return cls(config)  # raises the package's own "must be an object" error
    get = config.get
    items = tuple([(key, value) for key in _setting_names(cls) if (value := get(key)) is not None and value != ""])
    try:
        found = _configured(cls, items)
    except TypeError:  # unhashable values (the shaping settings' objects and lists): cached by their JSON text
        found = _configured_json(cls, json.dumps(items, sort_keys=True))  # ASCII: lone surrogates escaped
    if isinstance(found, ConfigurationError):
        raise found.with_traceback(None)  # a cached instance: drop the last raise's traceback
    return found


class Handlers:
    """`destination_for` with a memory of the last Config: the events of one call nearly always
    share their destination, and comparing two Configs costs less than building a cache key."""

    __slots__ = ("_cls", "_config", "_found")

    def __init__(self, cls: type[Destination]) -> None:
        self._cls = cls
        self._config: Any = None
        self._found: Destination | ConfigurationError | None = None

    def get(self, config: Any) -> Destination:
        found = self._found
        if found is None or config != self._config:
            try:
                found = destination_for(self._cls, config)
            except ConfigurationError as exc:
                found = exc
            self._config, self._found = config, found
        if isinstance(found, ConfigurationError):
            raise found.with_traceback(None)
        return found


# --- one event ----------------------------------------------------------------------------------


def _payload(request: HttpRequest, user_id: str | None = None) -> dict[str, Any]:
    """rudder-transformer's transformed payload form; rudder-server's router sends it as is."""
    body = request.json
    json_body: Any = {}
    json_array: dict[str, str] = {}
    if isinstance(body, dict):
        json_body = body
    elif body is not None:  # an array (or any other JSON value) goes out verbatim as a string
        json_array = {"batch": dumps(body).decode()}
    headers, params = request.headers, request.params
    payload = {
        "version": "1",
        "type": "REST",
        "method": request.method,
        "endpoint": request.url,
        # Written out at once: the request's own dicts need no copy (`Destination.request` made them for it).
        "headers": headers if type(headers) is dict else dict(headers),
        "params": params if type(params) is dict else dict(params),
        "body": {"JSON": json_body, "JSON_ARRAY": json_array, "XML": {}, "FORM": {}},
        "files": {},
    }
    if user_id is not None:
        payload["userId"] = user_id
    return payload


def _user_id(message: Any) -> str:
    if isinstance(message, dict):
        for key in ("userId", "anonymousId"):
            value = message.get(key)
            if value is not None and value != "":
                return value if isinstance(value, str) else str(value)
    return ""


def _stat_tags(dest_type: str, metadata: Any, feature: str, category: str, error_type: str | None) -> dict[str, str]:
    """rudder-transformer's error tags (src/v0/util/tags.js), which rudder-server reports as is."""
    tags = {
        "errorCategory": category,
        "destType": dest_type,
        "module": "destination",
        "implementation": "native",
        "feature": feature,
    }
    if error_type:
        tags["errorType"] = error_type
    if isinstance(metadata, dict):
        for key in ("destinationId", "workspaceId"):
            value = metadata.get(key)
            if isinstance(value, str) and value:
                tags[key] = value
    return tags


class EventFailure:
    """Why one event produced no request: the status, text and tags rudder-server records."""

    __slots__ = ("category", "error", "error_type", "status")

    def __init__(self, status: int, error: str, category: str, error_type: str | None) -> None:
        self.status = status
        self.error = error
        self.category = category
        self.error_type = error_type

    def item(self, dest_type: str, metadata: Any, feature: str) -> dict[str, Any]:
        """The processor's form; the router's wraps metadata in a list and adds its own keys."""
        return {
            "metadata": metadata,
            "statusCode": self.status,
            "error": self.error,
            "statTags": _stat_tags(dest_type, metadata, feature, self.category, self.error_type),
        }


def transform_event(
    handlers: Handlers, item: Any, report: IntakeReport | None = None
) -> tuple[Any, Any, Destination | None, list[HttpRequest] | EventFailure]:
    """(metadata, destination, handler, requests or failure) for one `{message, metadata, destination}`.

    Values left out of the requests are logged and counted in `report` (rudder-server's answer has no
    place for them)."""
    if not isinstance(item, dict):
        failure = EventFailure(400, "each event must be an object with message, metadata and destination",
                               "dataValidation", "instrumentation")  # fmt: skip
        return {}, None, None, failure
    metadata = item.get("metadata")
    if metadata is None:
        metadata = {}
    destination = item.get("destination")
    config = destination.get("Config") if isinstance(destination, dict) else None
    handler = None
    try:
        handler = handlers.get({} if config is None else config)
        message = _by_display_name(item.get("message"), destination, handler.display_name)
        requests_, warnings = handler.handle_with_warnings(message)
    except Filtered as exc:
        failure = EventFailure(FILTERED_STATUS, exc.reason, "transformation", "filtered")
    except InvalidMessage as exc:
        if exc.internal:  # a mapping bug, not bad input: rudder-transformer tags those "transformation"
            failure = EventFailure(400, str(exc), "transformation", None)
        else:
            failure = EventFailure(400, str(exc), "dataValidation", "instrumentation")
    except ConfigurationError as exc:
        failure = EventFailure(400, str(exc), "dataValidation", "configuration")
    else:
        if warnings:
            message = item.get("message")
            mid = message.get("messageId") if isinstance(message, dict) else None
            note_warnings(report if report is not None else IntakeReport(), handler.name, mid, warnings)
        if requests_:
            return metadata, destination, handler, requests_
        failure = EventFailure(FILTERED_STATUS, "no vendor request for this event", "transformation", "filtered")
    return metadata, destination, handler, failure


def _count(intake: Intake | None, report: IntakeReport) -> None:
    """Warnings of one transform request into the app's metrics, under the destination type's name."""
    if report.warnings and intake is not None:
        intake.metrics.mapped(report)


def _by_display_name(message: Any, destination: Any, ours: str) -> Any:
    """The message with `integrations.<ours>` set from `integrations.<DisplayName>` of the destination
    definition, when only the latter is there: rudder-server filters by that DisplayName ("D·engage" in a
    workspace), so a message it sent us names us that way (processor/integrations/integrations.go)."""
    definition = destination.get("DestinationDefinition") if isinstance(destination, dict) else None
    shown = definition.get("DisplayName") if isinstance(definition, dict) else None
    integrations = message.get("integrations") if isinstance(message, dict) else None
    if not isinstance(shown, str) or shown == ours or not isinstance(integrations, dict):
        return message
    if shown not in integrations or ours in integrations:
        return message
    return {**message, "integrations": {**integrations, ours: integrations[shown]}}


async def _not_ours(
    request: Request, intake: Intake | None, route: str, text: str, body: bytes | None = None, *, status: int = 404
) -> Response:
    """A request for what this package does not own: to rudder-transformer when `[rudder] upstream` is set,
    else `status` (404: rudder-server's processor and router take it as final)."""
    if intake is not None and intake.upstream.enabled:
        return await intake.upstream.forward(request, route, body)
    return _error(status, text)


async def _ours(
    request: Request, intake: Intake | None, name: str, route: str, *, shape: type, what: str
) -> tuple[tuple[str, type[Destination]], Any] | Response:
    """((type name, class), parsed body) for a route about one of our types; otherwise the answer to give:
    the upstream's for another type, 400 for a body that is not JSON of `shape` (`what` describes it)."""
    found = _resolve(name)
    if found is None:
        return await _not_ours(request, intake, route, f"Unknown destination: {name[:100]}")
    try:
        body = loads(await request.body())
    except ValueError:
        return _error(400, "the request body is not valid JSON")
    if not isinstance(body, shape):
        return _error(400, f"the request body must be {what}")
    return found, body


# --- routes -------------------------------------------------------------------------------------

_EVENTS_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "message": {"type": "object"},
            "metadata": {"type": "object"},
            "destination": {"type": "object"},
        },
    },
}


@router.post(
    "/v0/destinations/{name}",
    response_class=JSONResponse,
    summary="rudder-server's processor transform for one destination type",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _EVENTS_SCHEMA}}}},
)
async def destination_transform(
    name: str,
    request: Request,
) -> Response:
    """One output item per vendor request (an event may mean several), each echoing its metadata."""
    # Called, not a dependency: FastAPI resolves a dependency on every request, and this route takes the most.
    intake = await find_intake(request)
    what = "a JSON array of {message, metadata, destination}"
    taken = await _ours(request, intake, name, "/v0/destinations", shape=list, what=what)
    if isinstance(taken, Response):
        return taken
    (type_name, cls), events = taken
    dest_type = type_name.upper()
    handlers = Handlers(cls)
    # Each answer item is written as soon as it is made, and its event let go: a body of events
    # and their answers as objects would keep thousands alive at once, each counted and walked by
    # the cycle collector, which then runs several times per request.
    parts: list[bytes] = []
    append = parts.append
    unwritable: int | None = None  # the first event whose answer cannot be written: the call is a 400
    unwritable_item: Any = None
    report = IntakeReport()
    for index, item in enumerate(events):
        events[index] = None
        metadata, _, _, result = transform_event(handlers, item, report)
        if unwritable is not None:  # the answer is a 400 already; the rest is mapped for its warnings only
            continue
        try:
            if isinstance(result, EventFailure):
                append(dumps(result.item(dest_type, metadata, "processor")))
                continue
            user_id = _user_id(item.get("message"))
            for request_ in result:
                append(dumps({"output": _payload(request_, user_id), "metadata": metadata, "statusCode": 200}))
        except (TypeError, ValueError, RecursionError):
            unwritable, unwritable_item = index, item
    _count(intake, report)
    if unwritable is not None:
        return _unwritable(unwritable, unwritable_item)
    return Response(b"[" + b",".join(parts) + b"]", media_type=JSONResponse.media_type, headers=API_VERSION_HEADERS)


class _Batch:
    """Batchable requests of one destination to one endpoint, merged in arrival order."""

    __slots__ = ("destination", "events", "metadata", "request", "size")

    def __init__(self, request: HttpRequest, destination: Any) -> None:
        self.request = request
        self.destination = destination
        self.size = 2  # the brackets of the JSON array
        self.events: list[Any] = []
        self.metadata: list[Any] = []

    def item(self) -> dict[str, Any]:
        merged = HttpRequest(self.request.method, self.request.url, self.request.params, self.request.headers,
                             self.events)  # fmt: skip
        return {
            "batchedRequest": _payload(merged),
            "metadata": self.metadata,
            "destination": self.destination,
            "batched": True,
            "statusCode": 200,
        }


def _batch_key(destination: Any, handler: Any, request: HttpRequest) -> tuple[Any, ...] | None:
    """Requests with equal keys may share one body; None when they must not be merged.

    The handler (one per Config, from the cache) is part of the key as well as the destination
    ID, so two destinations never share a body, nor two Configs of one destination.
    """
    dest_id = destination.get("ID") if isinstance(destination, dict) else None
    try:
        key = (dest_id, handler, request.method, request.url,
               tuple(request.params.items()), tuple(request.headers.items()))  # fmt: skip
        hash(key)
    except TypeError:
        return None
    return key


@router.post(
    "/routerTransform",
    response_class=JSONResponse,
    summary="rudder-server's router transform: batches of events for one destination type",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"input": _EVENTS_SCHEMA, "destType": {"type": "string"}},
                        "required": ["input"],
                    }
                }
            },
        }
    },
)
async def router_transform(request: Request, intake: Intake | None = Depends(find_intake)) -> Response:  # noqa: B008
    """rudder-server's router stage: `{"input": [...], "destType"}`, answered `{"output": [...]}`."""
    return await _router_stage(request, intake, "/routerTransform", wrap=True)


@router.post(
    "/batch",
    response_class=JSONResponse,
    summary="rudder-server's router batching (Router.<type>.enableBatching): as /routerTransform, a bare array",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}},
)
async def batch_transform(request: Request, intake: Intake | None = Depends(find_intake)) -> Response:  # noqa: B008
    """The same work as `/routerTransform`, answered as rudder-transformer's `batchProcess` does: the list
    of items itself (router/transformer/transformer.go reads BATCH answers unwrapped)."""
    return await _router_stage(request, intake, "/batch", wrap=False)


async def _router_stage(request: Request, intake: Intake | None, route: str, *, wrap: bool) -> Response:
    """Batchable requests (JSON arrays to one endpoint) are merged, up to MAX_BATCH_EVENTS events and the
    outbox's `batch_bytes` of body each.

    Output items keep the order of their first event and events their order inside a batch; an
    event never joins a batch placed before another item of its user's, so rudder-server's
    per-user ordering holds. An event rudder-server marks `dontBatch` (it failed
    inside a batch before) and an event that means several requests each get an item of their own;
    the latter's `batchedRequest` is the list of its requests.
    """
    raw = await request.body()
    try:
        body = loads(raw) if "content-encoding" not in request.headers else None
    except ValueError:
        body = None
    events = body.get("input") if isinstance(body, dict) else None
    if not isinstance(events, list):  # not for us to read: rudder-transformer's, when there is one
        return await _not_ours(
            request,
            intake,
            route,
            'the request body must be an object {"input": [...], "destType": "..."}',
            raw,
            status=400,
        )
    dest_type_name = body.get("destType")
    if not isinstance(dest_type_name, str) or not dest_type_name:
        dest_type_name = _definition_name(events)
        if not events:
            return _ok({"output": []} if wrap else [])
    found = _resolve(dest_type_name)
    if found is None:
        return await _not_ours(request, intake, route, f"Unknown destination: {dest_type_name[:100]}", raw)
    type_name, cls = found
    dest_type = type_name.upper()
    byte_cap = intake.config.outbox.batch_bytes if intake is not None else DEFAULT_BATCH_BYTES

    out: list[Any] = []
    handlers = Handlers(cls)
    open_batches: dict[tuple[Any, ...], tuple[_Batch, int]] = {}
    last_item_of_user: dict[Any, int] = {}
    report = IntakeReport()
    for item in events:
        metadata, destination, handler, result = transform_event(handlers, item, report)
        if isinstance(result, EventFailure):  # terminal for rudder-server: no order to keep
            failed = result.item(dest_type, metadata, "router")
            failed.update(metadata=[metadata], destination=destination, batched=False)
            out.append(failed)
            continue
        user = _ordering_key(metadata, item.get("message"))
        first = result[0]
        key = None
        if (len(result) == 1 and first.batchable and isinstance(first.json, list)
                and not (isinstance(metadata, dict) and metadata.get("dontBatch"))):  # fmt: skip
            key = _batch_key(destination, handler, first)
        if key is None:
            payloads = [_payload(r, _user_id(item.get("message"))) for r in result]
            out.append({
                "batchedRequest": payloads[0] if len(payloads) == 1 else payloads,
                "metadata": [metadata],
                "destination": destination,
                "batched": False,
                "statusCode": 200,
            })  # fmt: skip
            last_item_of_user[user] = len(out) - 1
            continue
        size = sum(len(dumps(e)) + 1 for e in first.json)
        batch, index = open_batches.get(key, (None, -1))
        # Joining an earlier batch would send this event before one of its user's that sits
        # in a later item; a full batch is closed too (by events or by bytes).
        if (batch is None or len(batch.metadata) >= MAX_BATCH_EVENTS or batch.size + size > byte_cap
                or index < last_item_of_user.get(user, -1)):  # fmt: skip
            batch, index = _Batch(first, destination), len(out)
            open_batches[key] = (batch, index)
            out.append(batch)
        batch.events.extend(first.json)
        batch.size += size
        batch.metadata.append(metadata)
        last_item_of_user[user] = index
    _count(intake, report)
    items = [entry.item() if isinstance(entry, _Batch) else entry for entry in out]
    return _ok({"output": items} if wrap else items)


def _ordering_key(metadata: Any, message: Any) -> Any:
    """Whose events must keep their order: rudder-server's job `userId`, else the message's ids."""
    user = metadata.get("userId") if isinstance(metadata, dict) else None
    if isinstance(user, str) and user:
        return user
    return _user_id(message)


def _definition_name(events: list[Any]) -> str:
    """The destination type named by the first event, for a body without `destType`."""
    for item in events[:1]:
        destination = item.get("destination") if isinstance(item, dict) else None
        definition = destination.get("DestinationDefinition") if isinstance(destination, dict) else None
        name = definition.get("Name") if isinstance(definition, dict) else None
        if isinstance(name, str):
            return name
    return ""


@router.get("/features", response_class=JSONResponse, summary="what this transformer supports, for rudder-server")
async def features(intake: Intake | None = Depends(find_intake)) -> Response:  # noqa: B008
    """Every destination type of this package is served by `/routerTransform` (so rudder-server batches for
    it), and by the proxy v1 route. With `[rudder] upstream`, rudder-transformer's own document is the base
    and these types are added to its `routerTransform` map: rudder-server sees one transformer.

    Without an upstream, the two source flags only keep rudder-server from refusing this transformer:
    sources are not transformed here.
    """
    ours = {name.upper(): True for name in destination_types()}
    document: dict[str, Any] = {
        "regulations": [], "supportSourceTransformV1": True, "upgradedToSourceTransformV2": True,
        "supportTransformerProxyV1": True,
    }  # fmt: skip
    if intake is not None and intake.upstream.enabled:
        upstream = await intake.upstream.get_json("/features")
        if not isinstance(upstream, dict):  # a status rudder-server retries, not a document without its types
            return _error(503, "rudder-transformer (upstream) did not answer /features; try again")
        document = upstream
    their_router = document.get("routerTransform")
    document["routerTransform"] = {**(their_router if isinstance(their_router, dict) else {}), **ours}
    # rudder-server compacts payloads for every type when this is on; these routes read full events only.
    document["supportDestTransformCompactedPayloadV1"] = False
    return _ok(document)


# --- the transformer proxy (v1) -----------------------------------------------------------------


def _job_status(outcome: Outcome) -> int:
    """rudder-server's status for one job (router/misc.go): 2xx delivered; 429, 408 and 5xx retried; any
    other 4xx aborted. A vendor error hidden in a 200 (Segmentify's BAD_INPUT) is a 400: aborted."""
    status = outcome.http
    if outcome.kind == "delivered":
        return status or 200
    if outcome.kind == "retry":
        return status if status in (408, 429) or status >= 500 else 500
    return status if 400 <= status < 500 else 400


@router.post(
    "/v1/destinations/{name}/proxy",
    response_class=JSONResponse,
    summary="rudder-server's router through the transformer proxy (v1): deliver one request, a status per job",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}},
)
async def proxy_v1(
    name: str,
    request: Request,
    intake: Intake | None = Depends(find_intake),  # noqa: B008
) -> Response:
    """Deliver the request rudder-server's router built from this package's `/routerTransform` output, with
    this package's sender and classifier, and answer rudder-transformer's DeliveryV1Response:
    `{"output": {"status", "message", "response": [{"statusCode", "metadata", "error"}]}}`, one item per
    job of `metadata` (router/transformer/transformer.go ProxyRequestPayload and ProxyResponseV1)."""
    taken = await _ours(request, intake, name, "/v1/destinations/proxy", shape=dict, what="the proxy request object")
    if isinstance(taken, Response):
        return taken
    (_, cls), body = taken
    jobs = body.get("metadata")
    jobs = jobs if isinstance(jobs, list) else [jobs] if isinstance(jobs, dict) else []
    if not jobs:
        return _proxied(jobs, 400, "no job in metadata: nothing to deliver")
    try:
        destination = destination_for(cls, body.get("destinationConfig") or {})
        method, url, params, headers, data = _vendor_call(body, destination)
    except (ConfigurationError, ValueError) as exc:
        return _proxied(jobs, 400, f"cannot be delivered: {exc}")
    sender = _proxy_sender(destination, intake, _proxy_timeout(request))
    outcome = await anyio.to_thread.run_sync(sender.send_raw, method, url, params, headers, data)
    message = f"{outcome.status} {outcome.detail}".strip()
    return _proxied(jobs, _job_status(outcome), message if outcome.kind != "delivered" else "delivered")


_PROXY_SENDERS: dict[tuple[int, float], Sender] = {}
_PROXY_SENDERS_LOCK = threading.Lock()


def _proxy_sender(destination: Destination, intake: Intake | None, read_timeout: float) -> Sender:
    """One pooled sender per configured destination (`destination_for` keeps those) and timeout."""
    key = (id(destination), read_timeout)
    with _PROXY_SENDERS_LOCK:
        sender = _PROXY_SENDERS.get(key)
        if sender is None or sender.destination is not destination:
            if len(_PROXY_SENDERS) >= _CACHE_SIZE:
                _PROXY_SENDERS.pop(next(iter(_PROXY_SENDERS))).close()
            outbox = intake.config.outbox if intake is not None else None
            sender = _PROXY_SENDERS[key] = Sender(
                destination,
                connect_timeout=outbox.connect_timeout if outbox else 5.0,
                read_timeout=read_timeout,
                max_retry_after=outbox.max_retry_after if outbox else 600.0,
            )
        return sender


def _proxied(jobs: list[Any], status: int, message: str) -> Response:
    # One HTTP call carried every job, so each job gets its outcome.
    error = "" if 200 <= status < 300 else message
    response = [{"statusCode": status, "metadata": job, "error": error} for job in jobs]
    return _ok({"output": {"status": status, "message": message, "response": response}})


def _proxy_timeout(request: Request) -> float:
    """rudder-server's `RdProxy-Timeout` (milliseconds) as the read timeout, 30 s without it."""
    try:
        return max(1.0, float(request.headers.get("rdproxy-timeout", "30000")) / 1000.0)
    except ValueError:
        return 30.0


_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


def _vendor_call(
    body: dict[str, Any], destination: Destination
) -> tuple[str, str, dict[str, Any], dict[str, str], bytes]:
    """(method, url, params, headers, body bytes) of the request in a proxy payload
    (processor/integrations/integrations.go PostParametersT), as this package's `/routerTransform` made it:
    to the destination's own base URL, with a JSON or JSON_ARRAY body. Anything else is a ValueError, which
    aborts the jobs: the vendor credentials go nowhere but the vendor, and a call that cannot be made as sent
    would fail the same way on every retry."""
    method, url = body.get("method"), body.get("endpoint")
    if not isinstance(method, str) or method.upper() not in _METHODS:
        raise ValueError(f"method must be one of {', '.join(sorted(_METHODS))}")
    if not isinstance(url, str) or not url.startswith(destination.base_url + "/"):
        raise ValueError(f"endpoint must be under this destination's {destination.url_setting}")
    params, headers = body.get("params") or {}, body.get("headers") or {}
    if not isinstance(params, dict) or not isinstance(headers, dict):
        raise ValueError("params and headers must be objects")
    if any(isinstance(v, dict | list) for v in params.values()):
        raise ValueError("params must be flat")
    payload = body.get("body") or {}
    array = payload.get("JSON_ARRAY") if isinstance(payload, dict) else None
    single = payload.get("JSON") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or payload.get("XML") or payload.get("FORM") or payload.get("GZIP"):
        raise ValueError("body must be JSON or JSON_ARRAY (the forms this package's transform makes)")
    if array:
        if not isinstance(array, dict) or not isinstance(array.get("batch"), str):
            raise ValueError("body.JSON_ARRAY.batch must be the array as JSON text")
        data = array["batch"].encode("utf-8")  # verbatim, as rudder-server's router sends it
    elif single:
        data = dumps(single)
    else:
        raise ValueError("body is empty")
    return (
        method.upper(),
        url,
        {str(k): v for k, v in params.items() if v is not None},
        {str(k): str(v) for k, v in headers.items()},
        data,
    )


# --- everything else: rudder-transformer's ------------------------------------------------------

# rudder-transformer's other routes: user transformations, sources, deletions, and any destination route.
# The Marketo bulk uploader's routes too (/fileUpload, /pollStatus, /getFailedJobs, /getWarningJobs).
_UPSTREAM_PATHS = ("/customTransform", "/v0/{rest:path}", "/v1/sources/{rest:path}", "/v1/destinations/{rest:path}",
                   "/v2/{rest:path}", "/transformation/{rest:path}", "/transformationLibrary/{rest:path}",
                   "/deleteUsers", "/extractor", "/extractLibs", "/transformerBuildVersion", "/buildVersion",
                   "/version", "/fileUpload", "/pollStatus", "/getFailedJobs", "/getWarningJobs")  # fmt: skip


async def _upstream_only(request: Request, intake: Intake | None = Depends(find_intake)) -> Response:  # noqa: B008
    route = request.scope.get("route")
    return await _not_ours(request, intake, getattr(route, "path", "other"), "Not found")


for _path in _UPSTREAM_PATHS:
    router.add_api_route(
        _path,
        _upstream_only,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )
