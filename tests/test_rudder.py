"""RudderStack's transformer protocol end to end: a real uvicorn server on a loopback socket, fed
request bodies in the form rudder-server sends (processor `TransformerEvent`s with full metadata
and `backendconfig.DestinationT`, router `RouterJobT`s with job metadata).

Vendor payloads are compared with what `Destination.handle` returns for the same message (the
mappings themselves are checked by the fixtures); here the subject is the wire form around them.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import anyio.to_thread
import pytest
import requests
import uvicorn
from fastapi import FastAPI
from pydantic import SecretStr

from destinations import HttpRequest, get_destination
from destinations.base import Destination, SettingsModel
from destinations.server import rudder

SECRET = "sk_live_RUDDER_SECRET_7f3a9c"
WORKSPACE = "2bXJxqA9lA0Q1wLXhYd5pQPWgqH"
SOURCE = "2bXJxr3mWg5dV0rDz8kQmS3yzA1"

# rudder-server's processor client sends these with every transform call.
RUDDER_HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "X-Feature-Gzip-Support": "?1",
    "X-Feature-Filter-Code": "?1",
}

SETTINGS: dict[str, dict[str, Any]] = {
    "segmentify": {"apiKey": SECRET, "dataCenterUrl": "https://dce1.segmentify.com"},
    "dengage": {"apiKey": SECRET, "dataCenterUrl": "https://dce1.dengage.com"},
    "esputnik": {"apiKey": SECRET},
    "wigzo": {"orgToken": SECRET, "token": "wigzo-token-1"},
}
# Keys a RudderStack destination Config carries besides the vendor's own settings.
RUDDER_CONFIG_EXTRAS: dict[str, Any] = {
    "eventFilteringOption": "disable",
    "whitelistedEvents": [{"eventName": ""}],
    "blacklistedEvents": [{"eventName": ""}],
    "oneTrustCookieCategories": [],
    "ketchConsentPurposes": [{"purpose": ""}],
    "connectionMode": {"web": "cloud"},
    "useNativeSDK": {"web": False},
}
DEFINITIONS = {
    "segmentify": ("1oMqK0s6dXhd3zQ1Rxo9vZ0aN0g", "SEGMENTIFY", "Segmentify"),
    "dengage": ("1oMqK7fFr5Dx1YbK3QZkP9gSdNw", "DENGAGE", "D·engage"),
    "esputnik": ("1oMqKBpLq0rBvNq6g5n5SC3T4Hk", "ESPUTNIK", "eSputnik"),
    "wigzo": ("1oMqKF0mVN9dG5UuJjK3b2yq8Vt", "WIGZO", "Wigzo"),
}


# --- request bodies as rudder-server builds them -------------------------------------------------


def rudder_message(
    event: str | None = "Order Completed", *, user: str = "user-1001", page: str = "https://shop.example.com/checkout"
) -> dict[str, Any]:
    """A JavaScript SDK v3 track (or identify when event is None) after rudder-server's gateway."""
    message: dict[str, Any] = {
        "anonymousId": "8d872292-709c-4fe2-8ef8-3d1d4b8a0b6f",
        "channel": "web",
        "context": {
            "app": {
                "build": "1.0.0",
                "name": "RudderLabs JavaScript SDK",
                "namespace": "com.rudderlabs.javascript",
                "version": "3.0.0",
            },
            "library": {"name": "RudderLabs JavaScript SDK", "version": "3.0.0"},
            "locale": "en-US",
            "os": {"name": "", "version": ""},
            "page": {
                "path": "/checkout",
                "referrer": "https://www.google.com/",
                "referring_domain": "www.google.com",
                "search": "",
                "title": "Checkout",
                "url": page,
                "tab_url": page,
                "initial_referrer": "$direct",
                "initial_referring_domain": "",
            },
            "screen": {"density": 2, "width": 1440, "height": 900, "innerWidth": 1440, "innerHeight": 789},
            "traits": {"email": "jane@example.com", "phone": "+905551112233"},
            "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 Chrome/120.0",
            "sessionId": 1714989600000,
            "timezone": "GMT+0100",
            "campaign": {},
        },
        "integrations": {"All": True},
        "messageId": "f2e4d1c0-1111-4aaa-8bbb-000000000001",
        "originalTimestamp": "2024-05-06T10:00:00.000Z",
        "receivedAt": "2024-05-06T10:00:00.120Z",
        "request_ip": "203.0.113.7",
        "rudderId": "bf412108-0357-4330-b119-7305e767823c",
        "sentAt": "2024-05-06T10:00:00.050Z",
        "timestamp": "2024-05-06T10:00:00.070Z",
        "type": "track",
        "userId": user,
    }
    if event is None:
        message.update(type="identify", traits={"email": "jane@example.com", "firstName": "Jane", "lastName": "Doe"})
    else:
        message["event"] = event
        message["properties"] = {
            "order_id": "ord-1",
            "total": 99.5,
            "currency": "EUR",
            "products": [
                {"product_id": "P1", "sku": "S1", "name": "Shoe", "price": 49.75, "quantity": 1, "category": "Shoes"},
                {"product_id": "P2", "sku": "S2", "name": "Sock", "price": 49.75, "quantity": 1, "category": "Socks"},
            ],
        }
    return message


def rudder_destination(kind: str, config: dict[str, Any] | None = None, dest_id: str = "2bXJy0pJp9vCjl8qkQ7zrWYeG1H"):
    def_id, def_name, display = DEFINITIONS.get(kind, ("1oMqKxxxxxxxxxxxxxxxxxxxxxx", kind.upper(), kind))
    return {
        "ID": dest_id,
        "Name": f"{display} production",
        "DestinationDefinition": {
            "ID": def_id,
            "Name": def_name,
            "DisplayName": display,
            "Config": {"transformAt": "router", "transformAtV1": "router", "saveDestinationResponse": True},
            "ResponseRules": None,
        },
        "Config": {**SETTINGS.get(kind, {}), **RUDDER_CONFIG_EXTRAS} if config is None else config,
        "Enabled": True,
        "WorkspaceID": WORKSPACE,
        "Transformations": [],
        "IsProcessorEnabled": True,
        "RevisionID": "2bXJy3kX7QkqB3y0a1Lk2qWm3zR",
    }


def processor_metadata(job_id: int, message: dict[str, Any], destination: dict[str, Any]) -> dict[str, Any]:
    """processor/types.Metadata as rudder-server marshals it."""
    return {
        "sourceId": SOURCE,
        "workspaceId": WORKSPACE,
        "namespace": "",
        "instanceId": "rudder-server-0",
        "sourceType": "Javascript",
        "sourceCategory": "",
        "trackingPlanId": "",
        "trackingPlanVersion": 0,
        "sourceTpConfig": None,
        "mergedTpConfig": None,
        "destinationId": destination["ID"],
        "jobRunId": "",
        "jobId": job_id,
        "sourceBatchId": "",
        "sourceJobId": "",
        "sourceJobRunId": "",
        "sourceTaskId": "",
        "sourceTaskRunId": "",
        "recordId": None,
        "destinationType": destination["DestinationDefinition"]["Name"],
        "messageId": message.get("messageId", ""),
        "oauthAccessToken": "",
        "messageIds": None,
        "rudderId": "<<>>8d872292-709c-4fe2-8ef8-3d1d4b8a0b6f<<>>user-1001",
        "receivedAt": "2024-05-06T10:00:00.120Z",
        "eventName": message.get("event", ""),
        "eventType": message.get("type", ""),
        "sourceDefinitionId": "1TW48i2bIzEl1HPf825cEznfIM8",
        "destinationDefinitionId": destination["DestinationDefinition"]["ID"],
        "transformationId": "",
        "transformationVersionId": "",
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    }


def processor_event(kind: str, message: dict[str, Any], job_id: int = 1, **dest: Any) -> dict[str, Any]:
    """processor/types.TransformerEvent."""
    destination = rudder_destination(kind, **dest)
    return {
        "message": message,
        "metadata": processor_metadata(job_id, message, destination),
        "destination": destination,
        "connection": {"sourceId": SOURCE, "destinationId": destination["ID"], "enabled": True, "config": {}},
        "libraries": None,
        "credentials": None,
    }


def router_job(kind: str, message: dict[str, Any], job_id: int, *, dont_batch: bool = False, **dest: Any):
    """router/types.RouterJobT, its metadata a JobMetadataT."""
    destination = rudder_destination(kind, **dest)
    user = message.get("userId") or message.get("anonymousId")
    return {
        "message": message,
        "metadata": {
            "userId": f"<<>>{message.get('anonymousId', '')}<<>>{user}",
            "jobId": job_id,
            "sourceId": SOURCE,
            "sourceCategory": "",
            "destinationId": destination["ID"],
            "attemptNum": 0,
            "receivedAt": "2024-05-06T10:00:00.120Z",
            "createdAt": "2024-05-06T10:00:00.300Z",
            "firstAttemptedAt": "",
            "transformAt": "router",
            "workspaceId": WORKSPACE,
            "secret": None,
            "workerAssignedTime": "2024-05-06T10:00:01.000000001Z",
            "dontBatch": dont_batch,
            "traceparent": "",
        },
        "destination": destination,
        "connection": {"sourceId": SOURCE, "destinationId": destination["ID"], "enabled": True, "config": {}},
    }


# --- the server ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    """The router in a minimal app on a free loopback port, served by uvicorn in a thread."""
    app = FastAPI()
    app.include_router(rudder.router)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def post(http: requests.Session, url: str, body: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(url, data=data, headers=RUDDER_HEADERS, timeout=10)


def wire_form(request: HttpRequest, user_id: str | None) -> dict[str, Any]:
    """What rudder-server expects for one vendor request, written out by hand."""
    body = request.json
    expected = {
        "version": "1",
        "type": "REST",
        "method": request.method,
        "endpoint": request.url,
        "headers": request.headers,
        "params": request.params,
        "body": {
            "JSON": body if isinstance(body, dict) else {},
            "JSON_ARRAY": {"batch": body} if isinstance(body, list) else {},  # compared parsed, below
            "XML": {},
            "FORM": {},
        },
        "files": {},
    }
    if user_id is not None:
        expected["userId"] = user_id
    return expected


def parsed(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with its JSON_ARRAY string parsed, after checking that it is a string."""
    out = copy.deepcopy(payload)
    batch = out["body"]["JSON_ARRAY"]
    if batch:
        assert set(batch) == {"batch"}
        assert isinstance(batch["batch"], str)
        batch["batch"] = json.loads(batch["batch"])
    return out


# --- /v0/destinations/{name} --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["segmentify", "dengage", "esputnik", "wigzo"])
def test_processor_transform_gives_each_vendor_payload(base_url: str, http: requests.Session, kind: str) -> None:
    events = [processor_event(kind, rudder_message(), 1), processor_event(kind, rudder_message(None), 2)]
    answer = post(http, f"{base_url}/v0/destinations/{kind}", events)

    assert answer.status_code == 200
    assert answer.headers["apiVersion"] == "2"
    assert answer.headers["content-type"] == "application/json"
    items = answer.json()
    handler = get_destination(kind, SETTINGS[kind])
    expected = [
        (event["metadata"], request_)
        for event in events
        for request_ in handler.handle(event["message"])
    ]  # fmt: skip
    assert len(items) == len(expected) == 2
    for item, (metadata, request_) in zip(items, expected, strict=True):
        assert set(item) == {"output", "metadata", "statusCode"}
        assert item["statusCode"] == 200
        assert item["metadata"] == metadata  # echoed in full, untouched
        assert parsed(item["output"]) == wire_form(request_, "user-1001")


def test_vendor_endpoints_params_and_headers_by_hand(base_url: str, http: requests.Session) -> None:
    def first_output(kind: str, message: dict[str, Any]) -> dict[str, Any]:
        answer = post(http, f"{base_url}/v0/destinations/{kind}", [processor_event(kind, message)])
        assert answer.status_code == 200
        return answer.json()[0]["output"]

    out = first_output("segmentify", rudder_message())
    assert out["endpoint"] == "https://dce1.segmentify.com/add/events/v1.json"
    assert out["params"] == {"apiKey": SECRET}  # rudder-server delivers it, so it must be here
    assert out["headers"]["Content-Type"] == "application/json"
    assert out["headers"]["Origin"] == "https://shop.example.com"
    assert out["body"]["JSON"] == {}
    events = json.loads(out["body"]["JSON_ARRAY"]["batch"])
    assert [e["name"] for e in events] == ["CHECKOUT"]
    assert events[0]["step"] == "purchase"
    assert events[0]["orderNo"] == "ord-1"
    assert [p["productId"] for p in events[0]["productList"]] == ["P1", "P2"]

    out = first_output("dengage", rudder_message())
    assert out["endpoint"] == "https://dce1.dengage.com/add/events/v1.json"
    assert out["params"] == {"apiKey": SECRET}

    out = first_output("esputnik", rudder_message())
    assert out["endpoint"] == "https://esputnik.com/api/v2/event"
    assert out["params"] == {}
    basic = base64.b64decode(out["headers"]["Authorization"].removeprefix("Basic ")).decode()
    assert basic.endswith(f":{SECRET}")
    assert out["body"]["JSON"]["eventTypeKey"] == "orderCompleted"
    assert out["body"]["JSON_ARRAY"] == {}

    out = first_output("wigzo", rudder_message())
    assert out["endpoint"] == "https://tracker.wigzopush.com/rest/v1/learn/event"
    assert out["params"] == {"token": "wigzo-token-1", "org_token": SECRET}
    assert out["body"]["JSON"]["eventName"] == "order_completed"


@pytest.mark.parametrize("name", ["SEGMENTIFY", "Segmentify", "segmentify"])
def test_destination_name_in_any_case(base_url: str, http: requests.Session, name: str) -> None:
    answer = post(http, f"{base_url}/v0/destinations/{name}", [processor_event("segmentify", rudder_message())])
    assert answer.status_code == 200
    assert answer.json()[0]["statusCode"] == 200


def test_extra_config_keys_and_blank_optional_settings_are_ignored(base_url: str, http: requests.Session) -> None:
    config = {**SETTINGS["segmentify"], **RUDDER_CONFIG_EXTRAS, "origin": "", "device": None, "someFutureKey": 1}
    answer = post(http, f"{base_url}/v0/destinations/segmentify", [processor_event("segmentify", rudder_message(),
                                                                                   config=config)])  # fmt: skip
    [item] = answer.json()
    assert item["statusCode"] == 200
    assert json.loads(item["output"]["body"]["JSON_ARRAY"]["batch"])[0]["device"] == "PC"


def stat_tags(category: str, error_type: str | None, feature: str = "processor") -> dict[str, str]:
    tags = {
        "errorCategory": category,
        "destType": "SEGMENTIFY",
        "module": "destination",
        "implementation": "native",
        "feature": feature,
        "destinationId": "2bXJy0pJp9vCjl8qkQ7zrWYeG1H",
        "workspaceId": WORKSPACE,
    }
    if error_type:
        tags["errorType"] = error_type
    return tags


def test_per_event_failures_are_items_beside_the_successes(base_url: str, http: requests.Session) -> None:
    no_key = {k: v for k, v in SETTINGS["segmentify"].items() if k != "apiKey"}
    bad_url = {**SETTINGS["segmentify"], "dataCenterUrl": "ftp://dce1.segmentify.com"}
    no_order = rudder_message()
    no_order["properties"]["products"] = []
    group = {**rudder_message(), "type": "group", "groupId": "g1"}
    turned_off = {**rudder_message(), "integrations": {"All": True, "Segmentify": False}}
    events = [
        processor_event("segmentify", rudder_message(), 1),
        processor_event("segmentify", rudder_message(), 2, config=no_key),
        processor_event("segmentify", rudder_message(), 3, config=bad_url),
        processor_event("segmentify", no_order, 4),
        processor_event("segmentify", group, 5),
        processor_event("segmentify", turned_off, 6),
        processor_event("segmentify", rudder_message(), 7),
    ]
    answer = post(http, f"{base_url}/v0/destinations/segmentify", events)
    assert answer.status_code == 200
    assert answer.headers["apiVersion"] == "2"
    items = answer.json()
    assert [item["metadata"]["jobId"] for item in items] == [1, 2, 3, 4, 5, 6, 7]
    assert [item["statusCode"] for item in items] == [200, 400, 400, 400, 298, 298, 200]
    for item, event in zip(items, events, strict=True):
        assert item["metadata"] == event["metadata"]

    missing, wrong, invalid, group_item, off = items[1:6]
    assert set(missing) == {"metadata", "statusCode", "error", "statTags"}
    assert "apiKey is required" in missing["error"]
    assert missing["statTags"] == stat_tags("dataValidation", "configuration")
    assert "dataCenterUrl must be an http(s) URL" in wrong["error"]
    assert "properties.products" in invalid["error"]
    assert invalid["statTags"] == stat_tags("dataValidation", "instrumentation")
    assert group_item["error"] == "Segmentify does not take group calls"
    assert group_item["statTags"] == stat_tags("transformation", "filtered")
    assert "integrations.Segmentify" in off["error"]


def test_malformed_events_are_400_items_not_500s(base_url: str, http: requests.Session) -> None:
    events = [
        5,
        {"metadata": {"jobId": 2}},
        {"message": "text", "metadata": {"jobId": 3}, "destination": rudder_destination("segmentify")},
        {"message": rudder_message(), "metadata": {"jobId": 4}, "destination": {"Config": ["apiKey"]}},
        {"message": {"type": "track"}, "metadata": {"jobId": 5}, "destination": rudder_destination("segmentify")},
    ]
    answer = post(http, f"{base_url}/v0/destinations/segmentify", events)
    assert answer.status_code == 200
    items = answer.json()
    assert [item["statusCode"] for item in items] == [400] * 5
    assert [item["metadata"].get("jobId") for item in items] == [None, 2, 3, 4, 5]
    assert all(item["error"] and item["statTags"]["destType"] == "SEGMENTIFY" for item in items)


def test_metadata_too_deep_to_echo_is_a_400_for_the_call(base_url: str, http: requests.Session) -> None:
    # Parsed by orjson (1024 levels), written back by neither orjson (255) nor the stdlib (its recursion limit).
    deep = b"[" * 1010 + b'{"jobId": 2}' + b"]" * 1010
    first = json.dumps(processor_event("segmentify", rudder_message())).encode()
    second = json.dumps(processor_event("segmentify", rudder_message(), job_id=2)).encode()
    second = second.replace(b'"metadata": {', b'"metadata": ' + deep + b', "was": {', 1)
    answer = post(http, f"{base_url}/v0/destinations/segmentify", b"[" + first + b"," + second + b"]")
    assert answer.status_code == 400
    assert answer.json() == {
        "error": "the answer could not be written as JSON: event 1 (f2e4d1c0-1111-4aaa-8bbb-000000000001): metadata"
        " nested too deeply"
    }


def test_metadata_with_a_lone_surrogate_is_echoed_as_its_escape(base_url: str, http: requests.Session) -> None:
    """Valid JSON (`"\\ud800"`) that no UTF-8 can carry used to fail the whole call as "nested too deeply"; the
    item echoes it as the same escape, and every other item is answered as usual."""
    first = json.dumps(processor_event("segmentify", rudder_message())).encode()
    second = json.dumps(processor_event("segmentify", rudder_message(), job_id=2)).encode()
    second = second.replace(b'"metadata": {', b'"metadata": {"note": "a\\ud800b", ', 1)
    answer = post(http, f"{base_url}/v0/destinations/segmentify", b"[" + first + b"," + second + b"]")
    assert answer.status_code == 200
    items = json.loads(answer.content)
    assert [item["statusCode"] for item in items] == [200, 200]
    assert items[1]["metadata"]["note"] == "a\ud800b"
    assert b'"note":"a\\ud800b"' in answer.content


class _Watched(dict):  # type: ignore[type-arg]
    """A parsed event a weak reference can follow (a plain dict cannot have one)."""


def test_processor_lets_each_event_go_once_answered(
    base_url: str, http: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call's events and answers held all at once are thousands of objects the cycle collector counts and walks
    several times per call; each event is let go once its answer is written."""
    watched: list[weakref.ref[_Watched]] = []
    alive: list[int] = []
    read, transform = rudder.loads, rudder.transform_event

    def loads(body: bytes) -> Any:
        events = [_Watched(item) for item in read(body)]
        watched.extend(weakref.ref(item) for item in events)
        return events

    def transform_event(handlers: rudder.Handlers, item: Any, report: Any = None) -> Any:
        alive.append(sum(ref() is not None for ref in watched))
        return transform(handlers, item, report)

    monkeypatch.setattr(rudder, "loads", loads)
    monkeypatch.setattr(rudder, "transform_event", transform_event)
    events = [processor_event("segmentify", rudder_message(), job_id=job) for job in range(1, 11)]
    answer = post(http, f"{base_url}/v0/destinations/segmentify", events)
    assert answer.status_code == 200
    assert [item["metadata"]["jobId"] for item in answer.json()] == list(range(1, 11))
    assert alive == list(range(10, 0, -1))  # the event in hand and those after it


def test_processor_calls_take_no_thread_hop(
    base_url: str, http: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FastAPI runs a plain-function dependency on its thread pool; the intake lookup is a coroutine instead."""
    hops: list[Any] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    answer = post(http, f"{base_url}/v0/destinations/segmentify", [processor_event("segmentify", rudder_message())])
    assert answer.status_code == 200
    assert hops == []


def test_unknown_destination_is_404(base_url: str, http: requests.Session) -> None:
    answer = post(http, f"{base_url}/v0/destinations/mixpanel", [processor_event("segmentify", rudder_message())])
    assert answer.status_code == 404
    assert answer.json() == {"error": "Unknown destination: mixpanel"}
    answer = post(http, f"{base_url}/routerTransform", {"input": [], "destType": "MIXPANEL"})
    assert answer.status_code == 404
    assert answer.json() == {"error": "Unknown destination: MIXPANEL"}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v0/destinations/segmentify", b'[{"message": {'),
        ("/v0/destinations/segmentify", b""),
        ("/v0/destinations/segmentify", b"\xff\xfe"),
        ("/v0/destinations/segmentify", b'{"input": []}'),
        ("/routerTransform", b"{nope"),
        ("/routerTransform", b"[]"),
        ("/routerTransform", b'{"input": {}, "destType": "SEGMENTIFY"}'),
        ("/v0/destinations/segmentify", b"[" * 5000 + b"]" * 5000),
        ("/routerTransform", b'{"input": ' + b"[" * 5000 + b"]" * 5000 + b', "destType": "SEGMENTIFY"}'),
    ],
)
def test_bad_bodies_are_400_json(base_url: str, http: requests.Session, path: str, body: bytes) -> None:
    answer = post(http, base_url + path, body)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/json"
    assert isinstance(answer.json()["error"], str)


def test_secrets_from_config_never_reach_errors_or_logs(
    base_url: str, http: requests.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    bad_configs = [
        {"apiKey": SECRET, "dataCenterUrl": SECRET},
        {"apiKey": SECRET, "dataCenterUrl": "https://dce1.segmentify.com", "testMode": SECRET},
        {"apiKey": SECRET, "dataCenterUrl": "https://dce1.segmentify.com", "device": SECRET},
        {"apiKey": [SECRET], "dataCenterUrl": "https://dce1.segmentify.com"},
        {"apiKey": {"value": SECRET}, "dataCenterUrl": "https://dce1.segmentify.com", "origin": SECRET},
    ]
    events = [processor_event("segmentify", rudder_message(), i, config=c) for i, c in enumerate(bad_configs)]
    events.append(processor_event("segmentify", {**rudder_message(), "type": "alias"}, 9))
    events.append(processor_event("segmentify", {"type": "track", "event": "x"}, 10))
    answer = post(http, f"{base_url}/v0/destinations/segmentify", events)
    assert answer.status_code == 200
    assert all(item["statusCode"] in (400, 298) for item in answer.json())
    assert SECRET not in answer.text

    router_answer = post(http, f"{base_url}/routerTransform", {"input": events, "destType": "SEGMENTIFY"})
    errors = [item["error"] for item in router_answer.json()["output"]]
    assert len(errors) == len(events)
    assert SECRET not in json.dumps(errors)
    assert SECRET not in caplog.text


# --- /routerTransform ---------------------------------------------------------------------------


def router_post(http: requests.Session, base_url: str, jobs: list[Any], dest_type: str) -> list[dict[str, Any]]:
    answer = post(http, f"{base_url}/routerTransform", {"input": jobs, "destType": dest_type})
    assert answer.status_code == 200
    assert answer.headers["apiVersion"] == "2"
    body = answer.json()
    assert set(body) == {"output"}
    out = body["output"]
    job_ids = [m["jobId"] for item in out for m in item["metadata"]]
    assert sorted(job_ids) == sorted(job["metadata"]["jobId"] for job in jobs if isinstance(job, dict))
    return out


def batch_of(item: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads(item["batchedRequest"]["body"]["JSON_ARRAY"]["batch"])


def test_router_merges_batchable_events_in_order(base_url: str, http: requests.Session) -> None:
    jobs = [router_job("segmentify", {**rudder_message(user=f"u{i % 2}"), "messageId": f"m{i}"}, i + 1)
            for i in range(5)]  # fmt: skip
    for i, job in enumerate(jobs):
        job["message"]["properties"]["order_id"] = f"ord-{i}"
    jobs.insert(2, router_job("segmentify", {**rudder_message(), "type": "alias", "previousId": "x"}, 100))
    broken = rudder_message()
    broken["properties"]["products"] = []
    jobs.insert(4, router_job("segmentify", broken, 101))

    out = router_post(http, base_url, jobs, "SEGMENTIFY")

    batch, filtered, invalid = out
    assert batch["statusCode"] == 200
    assert batch["batched"] is True
    assert batch["destination"] == jobs[0]["destination"]
    assert [m["jobId"] for m in batch["metadata"]] == [1, 2, 3, 4, 5]
    assert batch["metadata"][0] == jobs[0]["metadata"]
    assert [e["orderNo"] for e in batch_of(batch)] == [f"ord-{i}" for i in range(5)]
    request_ = batch["batchedRequest"]
    assert request_["endpoint"] == "https://dce1.segmentify.com/add/events/v1.json"
    assert request_["params"] == {"apiKey": SECRET}
    assert request_["body"]["JSON"] == {}
    assert {request_["version"], request_["type"], request_["method"]} == {"1", "REST", "POST"}

    assert filtered["statusCode"] == 298
    assert filtered["metadata"] == [jobs[2]["metadata"]]
    assert filtered["batched"] is False
    assert filtered["destination"] == jobs[2]["destination"]
    assert filtered["statTags"] == stat_tags("transformation", "filtered", "router")
    assert invalid["statusCode"] == 400
    assert invalid["metadata"] == [jobs[4]["metadata"]]
    assert invalid["statTags"] == stat_tags("dataValidation", "instrumentation", "router")


def test_router_batches_hold_at_most_100_events(base_url: str, http: requests.Session) -> None:
    jobs = [router_job("dengage", rudder_message(user=f"u{i}"), i + 1) for i in range(150)]
    out = router_post(http, base_url, jobs, "DENGAGE")
    assert [len(item["metadata"]) for item in out] == [100, 50]
    assert [len(batch_of(item)) for item in out] == [100, 50]
    assert [m["jobId"] for item in out for m in item["metadata"]] == list(range(1, 151))


def test_router_never_reorders_a_users_events(base_url: str, http: requests.Session) -> None:
    """Origins differ, so do the requests' headers: u1's third event may not join the first batch."""
    a, b = "https://shop.example.com/checkout", "https://m.shop.example.com/checkout"
    jobs = [
        router_job("segmentify", rudder_message(user="u1", page=a), 1),
        router_job("segmentify", rudder_message(user="u1", page=b), 2),
        router_job("segmentify", rudder_message(user="u2", page=a), 3),  # no event of u2's in between
        router_job("segmentify", rudder_message(user="u1", page=a), 4),
        router_job("segmentify", rudder_message(user="u2", page=a), 5),
    ]
    out = router_post(http, base_url, jobs, "SEGMENTIFY")
    assert [[m["jobId"] for m in item["metadata"]] for item in out] == [[1, 3], [2], [4, 5]]
    assert [item["batchedRequest"]["headers"]["Origin"] for item in out] == [
        "https://shop.example.com",
        "https://m.shop.example.com",
        "https://shop.example.com",
    ]


def test_router_keeps_destinations_and_dont_batch_apart(base_url: str, http: requests.Session) -> None:
    other = {**SETTINGS["segmentify"], "apiKey": "another-account-key"}
    jobs = [
        router_job("segmentify", rudder_message(user="u1"), 1),
        router_job("segmentify", rudder_message(user="u2"), 2, dest_id="2bXJyOTHERdestination0000001", config=other),
        router_job("segmentify", rudder_message(user="u3"), 3, dont_batch=True),
        router_job("segmentify", rudder_message(user="u4"), 4),
    ]
    out = router_post(http, base_url, jobs, "SEGMENTIFY")
    assert [[m["jobId"] for m in item["metadata"]] for item in out] == [[1, 4], [2], [3]]
    assert out[1]["batchedRequest"]["params"] == {"apiKey": "another-account-key"}
    assert out[1]["destination"]["ID"] == "2bXJyOTHERdestination0000001"
    assert out[2]["batched"] is False
    assert out[2]["batchedRequest"]["userId"] == "u3"


def test_router_sends_non_batchable_requests_one_by_one(base_url: str, http: requests.Session) -> None:
    jobs = [router_job("esputnik", rudder_message(), 1), router_job("esputnik", rudder_message(None), 2)]
    out = router_post(http, base_url, jobs, "esputnik")
    handler = get_destination("esputnik", SETTINGS["esputnik"])
    assert [item["batched"] for item in out] == [False, False]
    for item, job in zip(out, jobs, strict=True):
        assert item["metadata"] == [job["metadata"]]
        assert item["destination"] == job["destination"]
        [request_] = handler.handle(job["message"])
        assert item["batchedRequest"] == wire_form(request_, "user-1001")


def test_router_takes_the_type_from_the_events_without_dest_type(base_url: str, http: requests.Session) -> None:
    answer = post(http, f"{base_url}/routerTransform", {"input": [router_job("wigzo", rudder_message(), 1)]})
    assert answer.status_code == 200
    assert answer.json()["output"][0]["batchedRequest"]["endpoint"].endswith("/rest/v1/learn/event")
    assert post(http, f"{base_url}/routerTransform", {"input": []}).json() == {"output": []}


def test_the_example_workspace_config_works_as_rudder_server_reads_it(base_url: str, http: requests.Session) -> None:
    """Each destination of examples/rudder-workspace.json, marshalled as rudder-server's DestinationT."""
    workspace = json.loads((Path(__file__).parent.parent / "examples" / "rudder-workspace.json").read_text())
    features = http.get(f"{base_url}/features", timeout=10).json()
    [source] = workspace["sources"]
    assert len(source["destinations"]) == 4
    for dest in source["destinations"]:
        definition = dest["destinationDefinition"]
        assert definition["config"]["transformAt"] == "router"
        assert features["routerTransform"][definition["name"]] is True
        destination = {
            "ID": dest["id"],
            "Name": dest["name"],
            "DestinationDefinition": {
                "ID": definition["id"],
                "Name": definition["name"],
                "DisplayName": definition["displayName"],
                "Config": definition["config"],
                "ResponseRules": None,
            },
            "Config": dest["config"],
            "Enabled": dest["enabled"],
            "WorkspaceID": dest["workspaceId"],
            "Transformations": [],
            "IsProcessorEnabled": True,
            "RevisionID": "",
        }
        job = router_job("segmentify", rudder_message(), 1)
        job["destination"] = destination
        [item] = router_post(http, base_url, [job], definition["name"])
        assert item["statusCode"] == 200, item
        assert item["destination"] == destination


# --- any registered destination type ------------------------------------------------------------


class _TwoCallsSettings(SettingsModel):
    apiKey: SecretStr


class TwoCallsDestination(Destination):
    """A plugin type whose identify means two vendor calls, one of them batchable."""

    name = "twocalls"
    display_name = "TwoCalls"
    Settings = _TwoCallsSettings
    calls: ClassVar = {"identify": lambda call: call.user_id}

    def build(self, call: Any, mapped: Any) -> list[HttpRequest]:
        key = {"key": self.settings.apiKey.get_secret_value()}
        return [
            HttpRequest(
                "PUT", "https://api.two.example/users", key, {"Content-Type": "application/json"}, {"id": mapped}
            ),
            HttpRequest("POST", "https://api.two.example/events", key, {}, [{"user": mapped}], batchable=True),
        ]


def test_a_plugin_type_and_events_meaning_several_requests(
    base_url: str, http: requests.Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    from destinations import registry

    monkeypatch.setattr(
        rudder, "destination_types", lambda: {**registry.destination_types(), "twocalls": TwoCallsDestination}
    )
    rudder._resolve.cache_clear()
    try:
        config = {"apiKey": "two-key", "extra": True}
        event = processor_event("twocalls", rudder_message(None), 1, config=config)
        items = post(http, f"{base_url}/v0/destinations/twocalls", [event]).json()
        assert [item["metadata"] for item in items] == [event["metadata"]] * 2
        assert [item["output"]["method"] for item in items] == ["PUT", "POST"]
        assert items[0]["output"]["body"]["JSON"] == {"id": "user-1001"}
        assert json.loads(items[1]["output"]["body"]["JSON_ARRAY"]["batch"]) == [{"user": "user-1001"}]

        jobs = [router_job("twocalls", rudder_message(None), 1, config=config)]
        [item] = router_post(http, base_url, jobs, "TWOCALLS")
        assert item["batched"] is False
        assert [r["endpoint"] for r in item["batchedRequest"]] == [
            "https://api.two.example/users",
            "https://api.two.example/events",
        ]

        features = http.get(f"{base_url}/features", timeout=10).json()
        assert features["routerTransform"]["TWOCALLS"] is True
    finally:
        rudder._resolve.cache_clear()


# --- /features ----------------------------------------------------------------------------------


def test_features(base_url: str, http: requests.Session) -> None:
    answer = http.get(f"{base_url}/features", timeout=10)
    assert answer.status_code == 200
    assert answer.headers["apiVersion"] == "2"
    features = answer.json()
    assert features["supportSourceTransformV1"] is True
    assert features["upgradedToSourceTransformV2"] is True
    assert features["supportTransformerProxyV1"] is True  # the proxy v1 route serves our types
    assert features["regulations"] == []
    for name in ("SEGMENTIFY", "DENGAGE", "WIGZO", "ESPUTNIK"):
        assert features["routerTransform"][name] is True
