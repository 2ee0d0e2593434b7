"""The intake server end to end over real sockets: uvicorn on loopback, a real SQLite outbox, the
recording vendor server, and the real client libraries (analytics-python, rudder-sdk-python)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import hmac
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import analytics
import httpx
import pytest
import rudder_analytics.client
import uvicorn
from analytics.request import APIError

from destinations.config import Config, parse_config
from destinations.delivery import Outbox
from destinations.delivery.intake import map_inbox
from destinations.delivery.outbox import Holder
from destinations.server import create_app
from destinations.sink import Answer, Received, RecordingServer, sequence

WRITE_KEY = "wk-test-3b9e1f7c5a2d"
WEBHOOK_SECRET = "whsec-test-8d2c4e6a1f"
KEYS = {
    "segmentify": "sk-seg-11aa22bb33cc",
    "dengage": "sk-dng-44dd55ee66ff",
    "esputnik": "sk-esp-77gg88hh99ii",
    "wigzo": "org-wz-00jj11kk22ll",
}
SCRIPT = shutil.which("destinations", path=str(Path(sys.executable).parent)) or "destinations"

PRODUCT = {
    "product_id": "P-1",
    "sku": "SKU-1",
    "name": "Trail Runner",
    "price": 349.99,
    "currency": "EUR",
    "category": "Men > Shoes",
    "brand": "Acme",
    "url": "https://shop.example/p-1",
    "image_url": "https://cdn.shop.example/p-1.png",
}
CONTEXT = {
    "page": {"url": "https://shop.example/p-1", "referrer": "https://www.google.com/"},
    "userAgent": "Mozilla/5.0 (X11; Linux x86_64)",
    "locale": "en-US",
    "sessionId": "sess-1",
    "traits": {"email": "jane@example.com"},
}


# --- fixtures -----------------------------------------------------------------------------------


def settings_for(kind: str, url: str) -> dict[str, Any]:
    if kind in ("segmentify", "dengage"):
        return {"type": kind, "apiKey": KEYS[kind], "dataCenterUrl": url}
    if kind == "wigzo":
        return {"type": kind, "orgToken": KEYS[kind], "baseUrl": url}
    return {"type": kind, "apiKey": KEYS[kind], "baseUrl": url}


def make_config(
    tmp_path: Path,
    url: str,
    *,
    kinds: tuple[str, ...] = ("segmentify", "dengage", "esputnik", "wigzo"),
    write_keys: list[str] | None = None,
    secret: str | None = WEBHOOK_SECRET,
    delivery: str = "outbox",
    server_extra: dict[str, Any] | None = None,
    debugger: dict[str, Any] | None = None,
    **outbox: Any,
) -> Config:
    server: dict[str, Any] = {"write_keys": [WRITE_KEY] if write_keys is None else write_keys, "delivery": delivery}
    server.update(server_extra or {})
    if secret is not None:
        server["webhook_secret"] = secret
    table = {
        "path": str(tmp_path / "outbox.sqlite3"),
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "connect_timeout": 2,
        "read_timeout": 5,
        **outbox,
    }
    destinations = {f"shop-{kind}": settings_for(kind, url) for kind in kinds}
    tables = {"server": server, "outbox": table, "destinations": destinations, "debugger": debugger or {}}
    return parse_config(tables, environ={})


@contextmanager
def live(config: Config, *, deliver: bool = True) -> Iterator[str]:
    """The app on uvicorn in a thread, on a free loopback port; stopped (gracefully) on exit."""
    app = create_app(config, deliver=deliver)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        assert time.monotonic() < deadline, "the server did not start in time"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def sink() -> Iterator[RecordingServer]:
    with RecordingServer() as s:
        yield s


@pytest.fixture
def server(tmp_path: Path, sink: RecordingServer) -> Iterator[str]:
    with live(make_config(tmp_path, sink.url)) as url:
        yield url


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One server for the many cases that never reach a vendor (no webhook secret, no delivery)."""
    tmp = tmp_path_factory.mktemp("shared")
    with live(make_config(tmp, "http://127.0.0.1:9", secret=None), deliver=False) as url:
        yield url, tmp / "outbox.sqlite3"


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, auth=(WRITE_KEY, ""), timeout=20) as c:
        yield c


def wait_for(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def to(sink: RecordingServer, kind: str) -> list[Received]:
    """What one vendor received (Segmentify and D·engage share a path; their keys tell them apart)."""
    if kind in ("segmentify", "dengage"):
        return [r for r in sink.delivered() if r.params.get("apiKey") == KEYS[kind]]
    prefix = {"wigzo": "/rest/v1/learn/", "esputnik": "/api/"}[kind]
    return [r for r in sink.delivered() if r.path.startswith(prefix)]


def events_of(sink: RecordingServer, kind: str) -> list[dict[str, Any]]:
    """Vendor events in arrival order (Segmentify/D·engage bodies are arrays, merged in batches)."""
    out: list[dict[str, Any]] = []
    for r in to(sink, kind):
        body = r.json
        out.extend(body if isinstance(body, list) else [body])
    return out


def track(n: int = 1, user: str = "u-1", **extra: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Product Viewed",
        "messageId": f"m-{user}-{n}",
        "userId": user,
        "timestamp": "2026-11-20T10:00:00.000Z",
        "context": CONTEXT,
        "properties": {**PRODUCT, "product_id": f"P-{n}"},
        **extra,
    }


def assert_error(res: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert res.status_code == status, res.text
    body = res.json()
    assert isinstance(body.get("code"), str), body
    assert isinstance(body.get("message"), str), body
    if code is not None:
        assert body["code"] == code, body
    for secret in (WRITE_KEY, WEBHOOK_SECRET, *KEYS.values()):
        assert secret not in res.text
    return body


def sign(body: bytes, secret: str = WEBHOOK_SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()


# --- real clients -------------------------------------------------------------------------------


def test_analytics_python_sync_mode_reaches_every_vendor(server: str, sink: RecordingServer) -> None:
    errors: list[Exception] = []
    client = analytics.Client(WRITE_KEY, host=server, sync_mode=True, on_error=lambda e, _: errors.append(e))
    client.identify("u-1", {"email": "jane@example.com", "firstName": "Jane", "lastName": "Doe"}, context=CONTEXT)
    client.track("u-1", "Product Viewed", PRODUCT, context=CONTEXT, message_id="pv-1")
    assert not errors

    # Events, not requests: Segmentify and D·engage may merge the two into one request.
    assert wait_for(lambda: all(len(events_of(sink, k)) >= 2 for k in ("segmentify", "dengage", "esputnik", "wigzo")))
    views = [e for e in events_of(sink, "segmentify") if e["name"] == "PRODUCT_VIEW"]
    assert len(views) == 1
    view = views[0]
    assert view["userId"] == "u-1"
    assert view["sessionId"] == "sess-1"
    assert view["productId"] == "P-1"
    assert view["title"] == "Trail Runner"
    assert view["price"] == 349.99
    assert view["currency"] == "EUR"
    assert view["category"] == "Men > Shoes"
    assert view["image"] == "https://cdn.shop.example/p-1.png"
    assert view["url"] == "https://shop.example/p-1"
    assert view["pageUrl"] == "https://shop.example/p-1"
    assert view["lang"] == "EN"
    seg = next(r for r in to(sink, "segmentify") if any(e["name"] == "PRODUCT_VIEW" for e in r.json))
    assert seg.path == "/add/events/v1.json"

    viewed = [r.json for r in to(sink, "esputnik") if r.path == "/api/v2/event"]
    assert len(viewed) == 1
    assert viewed[0]["eventTypeKey"] == "productViewed"
    assert viewed[0]["keyValue"] == "jane@example.com"
    params = {p["name"]: p["value"] for p in viewed[0]["params"]}
    assert params["externalCustomerId"] == "u-1"
    assert params["currencyCode"] == "EUR"
    assert json.loads(params["product"])["productId"] == "P-1"
    esp = next(r for r in to(sink, "esputnik") if r.path == "/api/v2/event")
    assert (
        esp.headers["Authorization"]
        == "Basic " + base64.b64encode(f"destinations:{KEYS['esputnik']}".encode()).decode()
    )
    assert any(r.path == "/api/v1/contact" for r in to(sink, "esputnik"))
    assert {r.path for r in to(sink, "wigzo")} == {"/rest/v1/learn/identify", "/rest/v1/learn/event"}
    # The identify and the view, in one merged request or two (both may be in one pack).
    assert len(events_of(sink, "dengage")) == 2


def test_analytics_python_batch_mode_with_gzip(server: str, sink: RecordingServer) -> None:
    errors: list[Exception] = []
    client = analytics.Client(
        WRITE_KEY, host=server, gzip=True, upload_interval=0.05, upload_size=50, on_error=lambda e, _: errors.append(e)
    )
    for n in range(120):
        client.track(f"u-{n % 7}", "Product Viewed", {**PRODUCT, "product_id": f"P-{n}"}, context=CONTEXT)
    client.flush()
    client.join()
    assert not errors

    def viewed() -> set[str]:
        return {e["productId"] for e in events_of(sink, "segmentify") if e["name"] == "PRODUCT_VIEW"}

    assert wait_for(lambda: len(viewed()) == 120)
    assert viewed() == {f"P-{n}" for n in range(120)}
    assert wait_for(lambda: len([r for r in to(sink, "esputnik") if r.path == "/api/v2/event"]) == 120)
    assert len(events_of(sink, "segmentify")) == 120  # nothing twice


def test_rudder_sdk_python_posts_to_the_server(server: str, sink: RecordingServer) -> None:
    errors: list[Exception] = []
    client = rudder_analytics.client.Client(
        WRITE_KEY, host=server, sync_mode=True, on_error=lambda e, _: errors.append(e)
    )
    client.track("u-9", "Product Viewed", PRODUCT, context=CONTEXT)
    client.page("u-9", name="Home", properties={"url": "https://shop.example/"}, context=CONTEXT)
    assert not errors
    assert wait_for(lambda: len(events_of(sink, "segmentify")) >= 2)
    by_name = {e["name"]: e for e in events_of(sink, "segmentify")}
    assert by_name["PRODUCT_VIEW"]["userId"] == "u-9"
    assert by_name["PRODUCT_VIEW"]["productId"] == "P-1"
    assert by_name["PAGE_VIEW"]["userId"] == "u-9"
    assert wait_for(lambda: any(r.path == "/rest/v1/learn/event" for r in to(sink, "wigzo")))


def test_a_wrong_write_key_is_refused_to_the_client(server: str) -> None:
    client = analytics.Client("not-the-key", host=server, sync_mode=True)
    with pytest.raises(APIError) as info:
        client.track("u-1", "Product Viewed", PRODUCT)
    assert info.value.status == 401
    assert info.value.code == "unauthorized"
    assert "not-the-key" not in info.value.message


# --- the tracking API ---------------------------------------------------------------------------


def test_write_key_in_the_body_is_accepted(server: str, sink: RecordingServer) -> None:
    body = {"writeKey": WRITE_KEY, "batch": [track(1)]}
    res = httpx.post(f"{server}/v1/batch", json=body)
    assert res.status_code == 200, res.text
    assert res.json() == {"success": True}
    assert wait_for(lambda: len(events_of(sink, "segmentify")) == 1)


@pytest.mark.parametrize(
    ("auth", "body_key", "message"),
    [(None, None, "write key is required"), (("wrong", ""), None, "not one of"), (None, "wrong", "not one of")],
)
def test_missing_or_wrong_write_key_is_401(server: str, auth: Any, body_key: str | None, message: str) -> None:
    body: dict[str, Any] = {"batch": [track(1)]}
    if body_key:
        body["writeKey"] = body_key
    res = httpx.post(f"{server}/v1/batch", json=body, auth=auth)
    assert message in assert_error(res, 401, "unauthorized")["message"]


def test_unauthenticated_bad_json_learns_nothing(server: str) -> None:
    assert_error(httpx.post(f"{server}/v1/batch", content=b"{not json"), 401, "unauthorized")


@pytest.mark.parametrize(
    ("path", "content", "headers", "status", "code"),
    [
        ("/v1/batch", b"{not json", {}, 400, "invalid_json"),
        ("/v1/batch", b"[1, 2]", {}, 400, "invalid_body"),
        ("/v1/batch", b'"text"', {}, 400, "invalid_body"),
        ("/v1/batch", b'{"batch": {"type": "track"}}', {}, 400, "invalid_batch"),
        ("/v1/batch", b'{"batch": [1, NaN]}', {}, 400, "invalid_json"),
        ("/v1/batch", b"\xff\xfe{}", {}, 400, "invalid_json"),
        ("/v1/batch", b"[" * 100_000 + b"]" * 100_000, {}, 400, None),
        ("/v1/batch", b"not gzip at all", {"Content-Encoding": "gzip"}, 400, "invalid_gzip"),
        ("/v1/batch", gzip.compress(b'{"batch": []}')[:-6], {"Content-Encoding": "gzip"}, 400, "invalid_gzip"),
        ("/v1/batch", b"{}", {"Content-Encoding": "br"}, 415, "unsupported_encoding"),
        ("/v1/track", b"[]", {}, 400, "invalid_body"),
        ("/v1/track", b"null", {}, 400, "invalid_body"),
        ("/v1/track", b'{"event": "X"}', {}, 400, "invalid_message"),
        ("/v1/identify", b'{"traits": {}}', {}, 400, "invalid_message"),
        # A lone surrogate (a valid JSON escape) cannot be stored or sent: refused at the door.
        ("/v1/track", b'{"event": "X", "userId": "u-\\ud800"}', {}, 400, "invalid_message"),
        ("/webhook", b"{not json", {}, 400, "invalid_json"),
        ("/webhook", b"42", {}, 400, "invalid_body"),
    ],
)
def test_bad_input_is_4xx_with_code_and_message(
    shared: tuple[str, Path], path: str, content: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    url, outbox = shared
    res = httpx.post(url + path, content=content, headers=headers, auth=(WRITE_KEY, ""))
    assert_error(res, status, code)
    assert Outbox(outbox).pending_count() == 0


def test_limits(client: httpx.Client, tmp_path: Path) -> None:
    # 2,500 events a batch
    many = {"batch": [{"type": "track", "event": "E", "userId": "u"}] * 2501}
    assert "2,500" in assert_error(client.post("/v1/batch", json=many), 400, "too_many_events")["message"]
    # 500 KB a batch, checked after decompression: a gzip bomb of ~1 KB is refused
    bomb = gzip.compress(b'{"batch": [' + b" " * 50_000_000 + b"]}", 9)
    assert len(bomb) < 100_000
    res = client.post("/v1/batch", content=bomb, headers={"Content-Encoding": "gzip"})
    assert "500" in assert_error(res, 400, "too_large")["message"]
    # the raw body: 413 before anything is read into memory beyond the limit
    huge = b'{"batch": [' + b" " * 600_000 + b"]}"
    assert_error(client.post("/v1/batch", content=huge), 413, "payload_too_large")
    # 32 KB an event: alone on /v1/track it is the whole body
    big = track(1, properties={**PRODUCT, "description": "x" * 33_000})
    assert_error(client.post("/v1/track", json=big), 400, "too_large")
    # in a batch it is rejected by itself; the others are taken
    res = client.post("/v1/batch", json={"batch": [track(1), big, track(3)]})
    assert res.status_code == 200, res.text
    assert [(r["index"], r["messageId"]) for r in res.json()["rejected"]] == [(1, "m-u-1-1")]
    assert "32 KB" in res.json()["rejected"][0]["reason"]
    # a batch made only of an oversized event is refused as a whole
    assert_error(client.post("/v1/batch", json={"batch": [big]}), 400, "invalid_events")


# Every route that reads a body itself, with a body it answers 200: the tracking API, /webhook, the
# transformer routes, and the relay to rudder-transformer (which reads the body to pass it on).
_BODY_ROUTES = [
    ("/v1/batch", {"batch": [track(1)]}),
    ("/v1/track", track(2)),
    ("/v1/m", {"series": []}),
    ("/webhook", track(3)),
    ("/v0/destinations/segmentify", []),
    ("/routerTransform", {"input": [], "destType": "SEGMENTIFY"}),
    ("/batch", {"input": [], "destType": "SEGMENTIFY"}),
    ("/customTransform", []),
]


def test_a_client_gone_in_the_middle_of_its_body_is_one_line_and_nothing_taken(
    tmp_path: Path, sink: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    raw = {
        "server": {"write_keys": [WRITE_KEY]},
        "outbox": {"path": str(tmp_path / "outbox.sqlite3")},
        "rudder": {"upstream": sink.url},
        "destinations": {"shop-segmentify": settings_for("segmentify", sink.url)},
    }
    config = parse_config(raw, environ={})
    auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    with caplog.at_level(logging.INFO), live(config, deliver=False) as url:
        port = int(url.rsplit(":", 1)[1])
        for path, _ in _BODY_ROUTES:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
                head += "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                s.sendall(head.encode() + b'{"batch": [' + b" " * 50_000)
                time.sleep(0.1)  # the server is reading the body now
            assert wait_for(lambda path=path: f"POST {path}" in caplog.text), path
        assert Outbox(config.outbox.path).inbox_count() == 0
        assert sink.received == []  # nothing half-read was passed on to rudder-transformer
        with httpx.Client(base_url=url, auth=(WRITE_KEY, ""), timeout=20) as c:
            for path, body in _BODY_ROUTES:
                assert c.post(path, json=body).status_code == 200, path
    assert "Exception in ASGI application" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    for path, _ in _BODY_ROUTES:
        assert f"POST {path}: the client closed the connection" in caplog.text
    assert Outbox(config.outbox.path).inbox_count() == 3


def test_invalid_events_are_rejected_one_by_one(client: httpx.Client, sink: RecordingServer) -> None:
    batch = [
        track(1),
        {"type": "track", "event": "Product Viewed", "messageId": "no-user", "properties": PRODUCT},
        "not an object",
        {"type": "launch", "userId": "u-1", "messageId": "bad-type"},
        track(5, userId="u-\ud800"),
        track(6, timestamp="last tuesday"),  # a time no request uses is never checked (MAPPINGS "Real traffic")
    ]
    # Sent as analytics-python writes JSON (ASCII, surrogates as escapes).
    res = client.post("/v1/batch", content=json.dumps({"batch": batch}), headers={"Content-Type": "application/json"})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["success"] is True
    rejected = {r["index"]: r for r in body["rejected"]}
    assert sorted(rejected) == [1, 2, 3, 4]
    assert rejected[1]["messageId"] == "no-user"
    assert "userId" in rejected[1]["reason"]
    assert rejected[2]["messageId"] is None
    assert "type" in rejected[3]["reason"]
    assert "userId" in rejected[4]["reason"]
    assert "surrogate" in rejected[4]["reason"]
    assert wait_for(lambda: len(events_of(sink, "segmentify")) == 2)
    assert sorted(e["productId"] for e in events_of(sink, "segmentify")) == ["P-1", "P-6"]
    assert_error(client.post("/v1/batch", json={"batch": batch[1:3]}), 400, "invalid_events")


def test_per_destination_invalid_is_not_rejected_to_the_client(
    client: httpx.Client, sink: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    # Without an image Segmentify/D·engage cannot take a PRODUCT_VIEW; eSputnik and Wigzo still get it.
    event = track(1)
    event["properties"] = {k: v for k, v in PRODUCT.items() if k != "image_url"}
    with caplog.at_level(logging.INFO, logger="destinations.delivery"):
        res = client.post("/v1/batch", json={"batch": [event]})
        assert res.json() == {"success": True}
        assert wait_for(lambda: to(sink, "esputnik") and to(sink, "wigzo"))
    assert not to(sink, "segmentify")
    assert any("shop-segmentify will not get m-u-1-1" in r.getMessage() for r in caplog.records)
    metrics = client.get("/metrics").text
    assert 'destinations_events_invalid_total{destination="shop-segmentify"} 1.0' in metrics


def test_batch_context_and_integrations_are_merged(client: httpx.Client, sink: RecordingServer) -> None:
    event = track(1)
    del event["context"]
    event["context"] = {"sessionId": "own-session"}
    event["integrations"] = {"Dengage": True}
    body = {
        "batch": [event],
        "context": {**CONTEXT, "sessionId": "batch-session"},
        "integrations": {"All": False, "Segmentify": True, "Dengage": False},
    }
    assert client.post("/v1/batch", json=body).json() == {"success": True}
    assert wait_for(lambda: len(events_of(sink, "segmentify")) == 1 and len(events_of(sink, "dengage")) == 1)
    seg = events_of(sink, "segmentify")[0]
    assert seg["sessionId"] == "own-session"  # the event's own context wins
    assert seg["pageUrl"] == "https://shop.example/p-1"  # the batch's fills the rest
    time.sleep(0.2)
    assert not to(sink, "esputnik")
    assert not to(sink, "wigzo")


def test_single_event_endpoints_set_type_and_fill_ids(tmp_path: Path, sink: RecordingServer) -> None:
    config = make_config(tmp_path, sink.url, kinds=("segmentify",))
    with live(config, deliver=False) as url, httpx.Client(base_url=url, auth=(WRITE_KEY, "")) as c:
        event = {k: v for k, v in track(1).items() if k not in ("type", "messageId", "timestamp")}
        event["type"] = "identify"  # the endpoint decides
        for _ in range(2):  # sent twice without a messageId: the same content dedupes
            res = c.post("/v1/track", json=event)
            assert res.json() == {"success": True}, res.text
        page = {"userId": "u-2", "name": "Home", "properties": {"url": "https://shop.example/"}, "context": CONTEXT}
        assert c.post("/v1/page", json={**page, "writeKey": WRITE_KEY}, auth=None).json() == {"success": True}
    # An intake-only server commits the events to the inbox; a delivery process maps them later.
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    accepted = [json.loads(body) for (body,) in outbox._db().execute("SELECT body FROM inbox ORDER BY id")]
    assert [e["type"] for e in accepted] == ["track", "track", "page"]
    assert accepted[0]["messageId"] == accepted[1]["messageId"]
    assert accepted[0]["messageId"].startswith("sha256:")
    assert all("receivedAt" in e for e in accepted)
    assert WRITE_KEY not in json.dumps(accepted)
    report = map_inbox(outbox, config.destinations, Holder.new())
    assert (report.messages, report.duplicates) == (3, 1)
    assert outbox.inbox_count() == 0
    rows = [(r["message_id"], r["body"]) for r in outbox.waiting()]
    assert len(rows) == 2
    assert json.loads(rows[0][1])[0]["name"] == "PRODUCT_VIEW"
    assert json.loads(rows[1][1])[0]["name"] == "PAGE_VIEW"


def test_messages_sent_twice_are_delivered_once(client: httpx.Client, sink: RecordingServer) -> None:
    body = {"batch": [track(n) for n in range(5)]}
    assert client.post("/v1/batch", json=body).status_code == 200
    assert client.post("/v1/batch", json=body).status_code == 200
    assert wait_for(lambda: len(events_of(sink, "segmentify")) >= 5)
    time.sleep(0.3)
    assert len(events_of(sink, "segmentify")) == 5
    assert "destinations_requests_duplicate_total 20.0" in client.get("/metrics").text


def test_an_event_with_a_lone_surrogate_is_stored_and_delivered(client: httpx.Client, sink: RecordingServer) -> None:
    nested: Any = "leaf"
    for _ in range(400):
        nested = {"a": nested}
    # A lone surrogate is valid JSON text but cannot be written as UTF-8; padding makes the body big
    # enough for every event to be measured against the 32 KB limit too.
    weird = track(2, event="Something Custom", properties={"note": "\ud800", "deep": nested})
    pad = {"description": "x" * 20_000}
    batch = [
        track(1, properties={**PRODUCT, **pad}),
        weird,
        track(3, properties={**PRODUCT, **pad, "product_id": "P-3"}),
    ]
    res = client.post("/v1/batch", content=json.dumps({"batch": batch}), headers={"Content-Type": "application/json"})
    # Stored all the same (the surrogate escaped): an accepted event is never dropped for its text.
    assert res.status_code == 200, res.text
    assert res.json() == {"success": True}
    assert wait_for(lambda: {e.get("productId") for e in events_of(sink, "segmentify")} >= {"P-1", "P-3"})
    assert wait_for(lambda: any(e.get("type") == "Something Custom" for e in events_of(sink, "segmentify")))


def test_integers_past_64_bits_arrive_exact(client: httpx.Client, sink: RecordingServer) -> None:
    # orjson reads an integer past 64 bits as a float without a word (order 123456789012345678901234567890
    # would arrive as "1.2345678901234568e+29"); the stdlib reads it exactly, at intake and in the mapper.
    order = 123456789012345678901234567890
    properties = {"order_id": order, "total": -9223372036854775809, "products": [{"product_id": "P-1", "price": 10}]}
    purchase = track(1, event="Order Completed", properties=properties)
    res = client.post(
        "/v1/batch", content=json.dumps({"batch": [purchase]}), headers={"Content-Type": "application/json"}
    )
    assert res.status_code == 200, res.text
    assert wait_for(lambda: [e for e in events_of(sink, "segmentify") if e.get("orderNo")])
    (sent,) = [e for e in events_of(sink, "segmentify") if e.get("orderNo")]
    assert sent["orderNo"] == str(order)


# --- the webhook --------------------------------------------------------------------------------


def test_webhook_signatures(client: httpx.Client, sink: RecordingServer) -> None:
    one = json.dumps(track(1)).encode()
    res = client.post("/webhook", content=one, headers={"X-Signature": sign(one)}, auth=None)
    assert res.json() == {"success": True}, res.text

    # An array is signed over its first element's raw text, found verbatim in the body.
    first = (
        b'{ "type":"track", "event":"Product Viewed","userId":"u-2","messageId":"w-2",\n "context": '
        + json.dumps(CONTEXT).encode()
        + b', "properties": '
        + json.dumps({**PRODUCT, "product_id": "P-2"}).encode()
        + b"}"
    )
    array = b"  [\n " + first + b" ,  " + json.dumps(track(3)).encode() + b"]"
    res = client.post("/webhook", content=array, headers={"X-Signature": sign(first)}, auth=None)
    assert res.json() == {"success": True}, res.text
    assert wait_for(lambda: {e["productId"] for e in events_of(sink, "segmentify")} == {"P-1", "P-2", "P-3"})

    assert (
        "does not match"
        in assert_error(
            client.post("/webhook", content=one, headers={"X-Signature": sign(one, "other")}), 401, "unauthorized"
        )["message"]
    )
    assert (
        "does not match"
        in assert_error(client.post("/webhook", content=array, headers={"X-Signature": sign(array[:-1])}), 401)[
            "message"
        ]
    )
    assert "required" in assert_error(client.post("/webhook", content=one), 401, "unauthorized")["message"]
    assert_error(client.post("/webhook", content=one, headers={"X-Signature": "zz\u00e9".encode("latin-1")}), 401)


def test_webhook_without_a_secret_takes_unsigned_calls(tmp_path: Path, sink: RecordingServer) -> None:
    with live(make_config(tmp_path, sink.url, kinds=("segmentify",), secret=None)) as url:
        res = httpx.post(f"{url}/webhook", json=[track(1), {"type": "track"}])
        assert res.status_code == 200
        assert [r["index"] for r in res.json()["rejected"]] == [1]
        assert wait_for(lambda: len(events_of(sink, "segmentify")) == 1)


def test_webhook_takes_engage_audiences_that_all_false_would_filter(tmp_path: Path, sink: RecordingServer) -> None:
    # Segment Engage sends audience and trait events to the Webhooks destination with
    # {"All": false, "Webhooks": true}: Segment already chose to send them (MAPPINGS "Real traffic").
    engage = {"All": False, "Webhooks": True}
    off = {"All": False, "Webhooks": True, "Segmentify": False}
    with live(make_config(tmp_path, sink.url, kinds=("segmentify", "dengage"), secret=None)) as url:
        res = httpx.post(f"{url}/webhook", json=[track(1, integrations=engage), track(2, integrations=off)])
        assert res.json() == {"success": True}, res.text
        assert wait_for(lambda: len(events_of(sink, "dengage")) == 2)
        assert wait_for(lambda: [e["productId"] for e in events_of(sink, "segmentify")] == ["P-1"])
        # The tracking API keeps Segment's rule: All false turns every destination off.
        res = httpx.post(f"{url}/v1/track", json=track(3, integrations=engage), auth=(WRITE_KEY, ""))
        assert res.status_code == 200, res.text
        line = 'destinations_events_filtered_total{destination="shop-dengage"} 1.0'
        assert wait_for(lambda: line in httpx.get(f"{url}/metrics").text)
        assert [e["productId"] for e in events_of(sink, "dengage")] == ["P-1", "P-2"]


def test_values_left_out_are_logged_and_counted_per_destination_and_field(
    tmp_path: Path, sink: RecordingServer, caplog: pytest.LogCaptureFixture
) -> None:
    event = track(1, properties={**PRODUCT, "old_price": "was cheaper"})
    with live(make_config(tmp_path, sink.url, kinds=("segmentify",), secret=None)) as url:
        res = httpx.post(f"{url}/v1/track", json=event, auth=(WRITE_KEY, ""))
        assert res.status_code == 200, res.text
        assert wait_for(lambda: len(events_of(sink, "segmentify")) == 1)
        (sent,) = events_of(sink, "segmentify")
        assert sent["productId"] == "P-1"
        assert "oldPrice" not in sent
        line = 'destinations_mapping_warnings_total{destination="shop-segmentify",field="PRODUCT_VIEW.oldPrice"} 1.0'
        assert wait_for(lambda: line in httpx.get(f"{url}/metrics").text)
    logged = [r.getMessage() for r in caplog.records if r.name == "destinations.mapping"]
    assert any("m-u-1-1" in text and "properties.old_price must be a number" in text for text in logged), logged


def test_webhook_direct_mode(tmp_path: Path) -> None:
    answers = sequence(
        Answer(500, {"error": "down"}),
        Answer(429, {"error": "slow down"}, headers={"Retry-After": "7"}),
        Answer(200),
        Answer(400, {"statusCode": "BAD_INPUT"}),
    )
    with RecordingServer(answers) as vendor:
        config = make_config(tmp_path, vendor.url, kinds=("segmentify",), delivery="direct", secret=None)
        with live(config) as url, httpx.Client(base_url=url, timeout=20) as c:
            res = c.post("/webhook", json=track(1))
            body = assert_error(res, 503, "unavailable")
            assert body["destinations"]["shop-segmentify"]["status"] == "retry"
            assert body["destinations"]["shop-segmentify"]["vendorStatuses"] == {"500": 1}

            res = c.post("/webhook", json=track(1))
            assert_error(res, 429, "throttled")
            assert res.headers["Retry-After"] == "7"

            res = c.post("/webhook", json=track(1))
            assert res.status_code == 200
            assert res.json()["delivered"] is True
            assert res.json()["destinations"]["shop-segmentify"] == {
                "status": "delivered",
                "delivered": 1,
                "failed": 0,
                "vendorStatuses": {"200": 1},
            }

            res = c.post("/webhook", json=[track(2), {**track(3), "integrations": {"Segmentify": False}}])
            assert res.status_code == 200
            assert res.json()["delivered"] is False
            assert res.json()["destinations"]["shop-segmentify"]["status"] == "failed"
            assert res.json()["destinations"]["shop-segmentify"]["filtered"] == 1

            metrics = c.get("/metrics").text
            assert 'destinations_requests_delivered_total{destination="shop-segmentify"} 1.0' in metrics
            assert 'destinations_requests_retried_total{destination="shop-segmentify"} 2.0' in metrics
            assert 'destinations_requests_dead_total{destination="shop-segmentify"} 1.0' in metrics
        assert len(vendor.received) == 4
        assert vendor.received[0].params["apiKey"] == KEYS["segmentify"]
    assert Outbox(tmp_path / "outbox.sqlite3").pending_count() == 0  # direct mode keeps nothing


# --- operations ---------------------------------------------------------------------------------


def test_health_and_metrics(client: httpx.Client, sink: RecordingServer) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert health.json()["workers"] == 4
    client.post("/v1/batch", json={"batch": [track(1), {"type": "track"}]})
    assert wait_for(lambda: len(events_of(sink, "segmentify")) == 1)
    assert wait_for(lambda: 'destinations_requests_delivered_total{destination="shop-segmentify"} 1.0'
                    in client.get("/metrics").text)  # fmt: skip
    text = client.get("/metrics").text
    for line in (
        'destinations_events_received_total{source="tracking"} 2.0',
        'destinations_events_accepted_total{source="tracking"} 1.0',
        'destinations_events_rejected_total{source="tracking"} 1.0',
        'destinations_requests_accepted_total{destination="shop-segmentify"} 1.0',
        'destinations_outbox_depth{destination="shop-segmentify"}',
        'destinations_outbox_oldest_pending_age_seconds{destination="shop-wigzo"}',
        'destinations_http_request_duration_seconds_count{method="POST",route="/v1/batch",status="200"} 1.0',
        'destinations_vendor_request_duration_seconds_count{destination="shop-segmentify",outcome="delivered"}',
    ):
        assert line in text, line
    assert "destinations_events_filtered_total" in text
    for secret in (WRITE_KEY, WEBHOOK_SECRET, *KEYS.values()):
        assert secret not in text


def test_secrets_never_reach_the_logs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with RecordingServer(lambda _: Answer(403, {"error": f"bad key {KEYS['segmentify']}"})) as vendor:
        config = make_config(tmp_path, vendor.url, min_attempts=1, retry_window=0)
        with caplog.at_level(logging.DEBUG), live(config) as url, httpx.Client(base_url=url) as c:
            c.post("/v1/batch", json={"batch": [track(1)]}, auth=(WRITE_KEY, ""))
            c.post("/v1/batch", json={"batch": [track(1)]}, auth=("wrong-" + WRITE_KEY, ""))
            c.post("/webhook", json=track(1), headers={"X-Signature": sign(b"x")})
            assert wait_for(lambda: len(vendor.received) >= 4)
    from destinations.server.app import JsonFormatter, config_secrets

    formatter = JsonFormatter(config_secrets(config))
    text = "\n".join(formatter.format(r) for r in caplog.records)
    assert "refused a request: 401" in text
    for secret in (WRITE_KEY, WEBHOOK_SECRET, *KEYS.values()):
        assert secret not in text


def test_json_logs_mask_configured_secrets(tmp_path: Path) -> None:
    from destinations.server.app import JsonFormatter, config_secrets

    config = make_config(tmp_path, "http://127.0.0.1:9")
    formatter = JsonFormatter(config_secrets(config))
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "key %s and %s", (WRITE_KEY, KEYS["esputnik"]), None)
    record.destination = "shop-esputnik"
    record.note = f"token={KEYS['wigzo']}"
    line = json.loads(formatter.format(record))
    assert line["level"] == "warning"
    assert line["message"] == "key *** and ***"
    assert line["destination"] == "shop-esputnik"
    assert line["note"] == "token=***"
    # uvicorn adds the message again with ANSI colours: not in a JSON line.
    record.color_message = "\x1b[31mkey %s\x1b[0m"
    assert "color_message" not in json.loads(formatter.format(record))


def test_graceful_stop_finishes_in_flight_and_keeps_the_rest(tmp_path: Path) -> None:
    started = threading.Event()

    def slow(_: Received) -> Answer:
        started.set()
        return Answer(200, delay=0.5)

    with RecordingServer(slow) as vendor:
        config = make_config(tmp_path, vendor.url, kinds=("esputnik",), concurrency=1, batch_size=1)
        with live(config) as url:
            res = httpx.post(f"{url}/v1/batch", json={"batch": [track(n) for n in range(6)]}, auth=(WRITE_KEY, ""))
            assert res.status_code == 200
            assert started.wait(10)
        # stopped: the call in flight was answered and recorded, the rest waits in the outbox
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        stats = outbox.stats()["shop-esputnik"]
        assert stats["delivered"] == len(vendor.received) >= 1
        assert stats["pending"] == 6 - stats["delivered"] > 0
        leased = (
            outbox._db()
            .execute(
                "SELECT (SELECT COUNT(*) FROM requests WHERE lease_until > 0)"
                " + (SELECT COUNT(*) FROM packs WHERE state = 'pending' AND lease_until > 0)"
            )
            .fetchone()[0]
        )
        assert leased == 0  # nothing was claimed beyond what was in flight, or it was given back


# --- the commands -------------------------------------------------------------------------------


def write_config(tmp_path: Path, url: str, *, keys: bool = True, extra: str = "") -> Path:
    path = tmp_path / "destinations.toml"
    write_keys = '["${TEST_WRITE_KEY}"]' if keys else "[]"
    path.write_text(
        f"""
[server]
write_keys = {write_keys}
{extra}

[outbox]
path = "{tmp_path / "outbox.sqlite3"}"
backoff_base = 0.01

[destinations.shop]
type = "segmentify"
apiKey = "${{TEST_SEGMENTIFY_KEY}}"
dataCenterUrl = "{url}"
""",
        encoding="utf-8",
    )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TEST_WRITE_KEY": WRITE_KEY, "TEST_SEGMENTIFY_KEY": KEYS["segmentify"]}
    return subprocess.Popen([SCRIPT, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    return process.returncode, err


@pytest.mark.parametrize(
    ("keys", "extra", "named"),
    # Without write keys the tracking API is open; with them, /webhook still is while it has no secret; with
    # both, the debugger, which shows every message, still is while it has no token.
    [
        (False, "", "write_keys"),
        (True, "", "webhook_secret is not set"),
        (True, 'webhook_secret = "whsec-0123456789abcdef"', "[debugger] token is not set"),
    ],
)
def test_serve_refuses_a_public_address_while_a_way_in_is_open(
    tmp_path: Path, keys: bool, extra: str, named: str
) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:9", keys=keys, extra=extra)
    process = command("serve", "--config", str(config), "--host", "0.0.0.0")  # noqa: S104 - the refused case
    _, err = process.communicate(timeout=30)
    assert process.returncode == 2
    assert named in err
    assert "refusing to listen on 0.0.0.0" in err


def test_serve_no_deliver_then_worker_delivers(tmp_path: Path, sink: RecordingServer) -> None:
    config = write_config(tmp_path, sink.url)
    port = free_port()
    serve = command("serve", "--config", str(config), "--port", str(port), "--no-deliver")
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{base}/health").status_code == 200
            except httpx.TransportError:
                return False

        assert wait_for(up), serve.stderr.read() if serve.poll() is not None else "not up"
        assert httpx.get(f"{base}/health").json()["delivery"] == "off"
        res = httpx.post(f"{base}/v1/batch", json={"batch": [track(n) for n in range(3)]}, auth=(WRITE_KEY, ""))
        assert res.json() == {"success": True}
        time.sleep(0.2)
        assert not sink.received  # intake only
    finally:
        code, err = stop(serve)
    assert code in (0, -signal.SIGTERM), err  # uvicorn stops gracefully, then lets the signal end the process
    assert "stopped; requests not yet delivered stay in the outbox" in err
    assert f"the live debugger: http://127.0.0.1:{port}/debugger" in err
    assert KEYS["segmentify"] not in err
    assert WRITE_KEY not in err
    assert all(json.loads(line)["level"] for line in err.splitlines() if line.startswith("{"))

    worker = command("worker", "--config", str(config))
    try:
        assert wait_for(lambda: len(events_of(sink, "segmentify")) == 3)
    finally:
        code, err = stop(worker)
    assert code == 0, err
    assert Outbox(tmp_path / "outbox.sqlite3").pending_count() == 0
