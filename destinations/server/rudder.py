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
from functools import lru_cache
from typing import Any

from fastapi import APIRouter, Depends, Request, Response

from ..base import Destination, HttpRequest
from ..delivery.intake import IntakeReport, note_warnings
from ..errors import ConfigurationError, Filtered, InvalidMessage
from ..registry import destination_types
from .intake import Intake, find_intake

try:  # orjson parses and writes several times faster; the stdlib is the fallback, never a requirement
    import orjson
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    orjson = None  # type: ignore[assignment]

router = APIRouter(tags=["RudderStack transformer"])

API_VERSION_HEADERS = {"apiVersion": "2"}
FILTERED_STATUS = 298  # rudder-server's FilterEventCode: "deliberately not sent", never retried
MAX_BATCH_EVENTS = 100  # events merged into one routerTransform batchedRequest
_CACHE_SIZE = 256  # configured destinations kept; one per (type, Config) seen recently


# --- JSON ---------------------------------------------------------------------------------------


def loads(body: bytes) -> Any:
    """Parse a request body; ValueError when it is not JSON (or nested past any sense)."""
    if orjson is not None:
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the stdlib also takes what orjson refuses (integers past 64 bits, say)
    try:
        return json.loads(body)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def dumps(value: Any) -> bytes:
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass  # orjson.JSONEncodeError: an integer past 64 bits or a non-string key
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class JSONResponse(Response):
    """A JSON answer written by `dumps` (orjson when present): no validation, no re-encoding."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def _ok(content: Any) -> JSONResponse:
    try:
        return JSONResponse(content, headers=API_VERSION_HEADERS)
    except (TypeError, ValueError, RecursionError):  # echoed metadata nested too deeply to write back
        return _error(400, "the answer could not be written as JSON: metadata nested too deeply")


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
    except TypeError:  # an unhashable value (a list where a string belongs): validate uncached
        return cls(dict(items))
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
    payload = {
        "version": "1",
        "type": "REST",
        "method": request.method,
        "endpoint": request.url,
        "headers": request.headers,
        "params": dict(request.params),
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
        requests_, warnings = handler.handle_with_warnings(item.get("message"))
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
    intake: Intake | None = Depends(find_intake),  # noqa: B008
) -> Response:
    """One output item per vendor request (an event may mean several), each echoing its metadata."""
    found = _resolve(name)
    if found is None:
        return _error(404, f"Unknown destination: {name[:100]}")
    type_name, cls = found
    try:
        events = loads(await request.body())
    except ValueError:
        return _error(400, "the request body is not valid JSON")
    if not isinstance(events, list):
        return _error(400, "the request body must be a JSON array of {message, metadata, destination}")
    dest_type = type_name.upper()
    handlers = Handlers(cls)
    out: list[dict[str, Any]] = []
    append = out.append
    report = IntakeReport()
    for item in events:
        metadata, _, _, result = transform_event(handlers, item, report)
        if isinstance(result, EventFailure):
            append(result.item(dest_type, metadata, "processor"))
            continue
        user_id = _user_id(item.get("message"))
        for request_ in result:
            append({"output": _payload(request_, user_id), "metadata": metadata, "statusCode": 200})
    _count(intake, report)
    return _ok(out)


class _Batch:
    """Batchable requests of one destination to one endpoint, merged in arrival order."""

    __slots__ = ("destination", "events", "metadata", "request")

    def __init__(self, request: HttpRequest, destination: Any) -> None:
        self.request = request
        self.destination = destination
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
    """Batchable requests (JSON arrays to one endpoint) are merged, up to MAX_BATCH_EVENTS each.

    Output items keep the order of their first event and events their order inside a batch; an
    event never joins a batch placed before another item of its user's, so rudder-server's
    per-user ordering holds. An event rudder-server marks `dontBatch` (it failed
    inside a batch before) and an event that means several requests each get an item of their own;
    the latter's `batchedRequest` is the list of its requests.
    """
    try:
        body = loads(await request.body())
    except ValueError:
        return _error(400, "the request body is not valid JSON")
    events = body.get("input") if isinstance(body, dict) else None
    if not isinstance(events, list):
        return _error(400, 'the request body must be an object {"input": [...], "destType": "..."}')
    dest_type_name = body.get("destType")
    if not isinstance(dest_type_name, str) or not dest_type_name:
        dest_type_name = _definition_name(events)
        if not events:
            return _ok({"output": []})
    found = _resolve(dest_type_name)
    if found is None:
        return _error(404, f"Unknown destination: {dest_type_name[:100]}")
    type_name, cls = found
    dest_type = type_name.upper()

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
        batch, index = open_batches.get(key, (None, -1))
        # Joining an earlier batch would send this event before one of its user's that sits
        # in a later item; a full batch is closed too.
        if batch is None or len(batch.metadata) >= MAX_BATCH_EVENTS or index < last_item_of_user.get(user, -1):
            batch, index = _Batch(first, destination), len(out)
            open_batches[key] = (batch, index)
            out.append(batch)
        batch.events.extend(first.json)
        batch.metadata.append(metadata)
        last_item_of_user[user] = index
    _count(intake, report)
    return _ok({"output": [entry.item() if isinstance(entry, _Batch) else entry for entry in out]})


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
async def features() -> Response:
    """Every destination type is served by `/routerTransform` (so rudder-server batches for it).

    The two source flags only keep rudder-server from refusing this transformer: sources are not
    transformed here, so use SDK or HTTP API sources, not webhook sources, with this transformer.
    """
    return _ok({
        "routerTransform": {name.upper(): True for name in destination_types()},
        "regulations": [],
        "supportSourceTransformV1": True,
        "upgradedToSourceTransformV2": True,
        "supportTransformerProxyV1": False,
    })  # fmt: skip
