"""The browser, mobile and Webhooks ways in over real sockets, each request built as its client sends it.

Sources read for the wire forms (cited per test): segmentio/analytics-next packages/browser/src/plugins/
segmentio (fetch-dispatcher.ts, batched-dispatcher.ts, shared-dispatcher.ts), segmentio/analytics-kotlin
core/src/main/java/com/segment/analytics/kotlin/core/HTTPClient.kt and utilities/StorageImpl.kt,
segmentio/analytics-swift Sources/Segment/Utilities/Networking/HTTPClient.swift and Storage/Types/
DirectoryStore.swift, segmentio/action-destinations packages/destination-actions/src/destinations/webhook,
and segment-docs catalog/webhooks (the delete call) and catalog/actions-webhook (batch size 1,000).
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server import (
    CONTEXT,
    PRODUCT,
    WRITE_KEY,
    events_of,
    live,
    settings_for,
    sign,
    track,
    wait_for,
)

from destinations import ConfigurationError
from destinations.config import parse_config
from destinations.sink import RecordingServer

PAGE_ORIGIN = "http://127.0.0.1:5555"


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


@pytest.fixture
def sink() -> Any:
    with RecordingServer() as s:
        yield s


def config_with(tmp_path: Path, url: str, **server: Any) -> Any:
    """One Segmentify instance delivering to `url`, with these `[server]` keys."""
    raw = {
        "server": {"write_keys": [WRITE_KEY], **server},
        "outbox": {"path": str(tmp_path / "outbox.sqlite3"), "backoff_base": 0.01, "backoff_cap": 0.05},
        "destinations": {"shop-segmentify": settings_for("segmentify", url)},
    }
    return parse_config(raw, environ={})


# --- analytics.js routes --------------------------------------------------------------------------


def test_browser_calls_as_analytics_next_sends_them(tmp_path: Path, sink: RecordingServer) -> None:
    """fetch-dispatcher.ts: POST {apiHost}/{type's first letter}, Content-Type text/plain, the JSON event with
    writeKey, Authorization Basic from the write key; batched-dispatcher.ts: /b with {writeKey, batch, sentAt}."""
    with live(config_with(tmp_path, sink.url, cors_origins=[PAGE_ORIGIN])) as url:
        headers = {"Content-Type": "text/plain", "Origin": PAGE_ORIGIN, "Authorization": basic(WRITE_KEY)}
        page = {"type": "page", "anonymousId": "a-1", "name": "Home", "writeKey": WRITE_KEY, "context": CONTEXT}
        res = httpx.post(f"{url}/v1/p", content=json.dumps(page), headers=headers)
        assert res.status_code == 200, res.text
        assert res.headers["access-control-allow-origin"] == PAGE_ORIGIN
        # The type comes from the path only when the body has none.
        no_type = {"anonymousId": "a-1", "event": "Product Viewed", "properties": PRODUCT, "context": CONTEXT}
        res = httpx.post(f"{url}/v1/t", content=json.dumps({**no_type, "writeKey": WRITE_KEY}), headers=headers)
        assert res.status_code == 200, res.text
        batch = {"writeKey": WRITE_KEY, "batch": [track(3, user="u-9")], "sentAt": "2026-11-20T10:00:01.000Z"}
        res = httpx.post(f"{url}/v1/b", content=json.dumps(batch), headers=headers)
        assert res.status_code == 200, res.text
        # analytics-next's own usage metrics: answered, ignored.
        assert httpx.post(f"{url}/v1/m", content=b'{"series":[]}', headers=headers).status_code == 200
        assert wait_for(lambda: len(events_of(sink, "segmentify")) == 3)
        names = sorted(e["name"] for e in events_of(sink, "segmentify"))
        assert names == ["PAGE_VIEW", "PRODUCT_VIEW", "PRODUCT_VIEW"]
        # Without a key anywhere: 401, as /v1/batch.
        res = httpx.post(f"{url}/v1/t", content=json.dumps(no_type), headers={"Origin": PAGE_ORIGIN})
        assert res.status_code == 401


def test_cors_answers_only_allowed_origins_and_only_on_tracking_routes(tmp_path: Path, sink: RecordingServer) -> None:
    with live(config_with(tmp_path, sink.url, cors_origins=[PAGE_ORIGIN])) as url:
        preflight = {
            "Origin": PAGE_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization,x-retry-count",
        }
        res = httpx.options(f"{url}/v1/t", headers=preflight)
        assert res.status_code == 200
        assert res.headers["access-control-allow-origin"] == PAGE_ORIGIN
        assert "POST" in res.headers["access-control-allow-methods"]
        allowed = {h.strip().lower() for h in res.headers["access-control-allow-headers"].split(",")}
        assert {"content-type", "authorization", "x-retry-count"} <= allowed
        assert int(res.headers["access-control-max-age"]) > 0
        # Another origin: no CORS headers, and a post from it is refused before it is read.
        other = {**preflight, "Origin": "http://127.0.0.1:6666"}
        res = httpx.options(f"{url}/v1/t", headers=other)
        assert "access-control-allow-origin" not in res.headers
        res = httpx.post(f"{url}/v1/t", content=json.dumps(track(1)), headers={"Origin": other["Origin"]},
                         auth=(WRITE_KEY, ""))  # fmt: skip
        assert res.status_code == 403
        assert res.json()["code"] == "origin_not_allowed"
        # The webhook, the transformer protocol and the operations routes never answer CORS.
        for path in ("/webhook", "/v0/destinations/segmentify", "/metrics", "/health"):
            res = httpx.options(f"{url}{path}", headers=preflight)
            assert "access-control-allow-origin" not in res.headers, path
        # Segment's servers send no Origin; a browser page posting to the webhook is refused.
        res = httpx.post(f"{url}/webhook", json=track(2), headers={"Origin": PAGE_ORIGIN})
        assert res.status_code == 403
        assert "access-control-allow-origin" not in res.headers
        assert httpx.post(f"{url}/webhook", json=track(2)).status_code == 200
        # Server libraries send no Origin: unaffected.
        assert httpx.post(f"{url}/v1/track", json=track(3), auth=(WRITE_KEY, "")).status_code == 200


def test_no_browser_may_post_by_default(tmp_path: Path, sink: RecordingServer) -> None:
    with live(config_with(tmp_path, sink.url)) as url:
        res = httpx.post(f"{url}/v1/t", content=json.dumps({**track(1), "writeKey": WRITE_KEY}),
                         headers={"Origin": PAGE_ORIGIN, "Content-Type": "text/plain"})  # fmt: skip
        assert res.status_code == 403
        assert httpx.post(f"{url}/v1/t", content=json.dumps(track(2)), auth=(WRITE_KEY, "")).status_code == 200


def test_any_origin_only_when_written(tmp_path: Path, sink: RecordingServer) -> None:
    with live(config_with(tmp_path, sink.url, cors_origins="*")) as url:
        res = httpx.post(f"{url}/v1/t", content=json.dumps({**track(1), "writeKey": WRITE_KEY}),
                         headers={"Origin": "https://anywhere.example"})  # fmt: skip
        assert res.status_code == 200
        assert res.headers["access-control-allow-origin"] == "*"


# --- mobile ---------------------------------------------------------------------------------------


def test_an_analytics_kotlin_batch(tmp_path: Path, sink: RecordingServer) -> None:
    """HTTPClient.kt: POST https://{apiHost}/b, Content-Type text/plain, Content-Encoding gzip, no Authorization;
    StorageImpl.kt frames the file as {"batch":[e1,e2],"sentAt":"…","writeKey":"…"}."""
    events = [json.dumps(track(n, user="kotlin-1"), separators=(",", ":")) for n in (1, 2)]
    body = '{"batch":[' + ",".join(events) + '],"sentAt":"2026-11-20T10:00:02.000Z","writeKey":"' + WRITE_KEY + '"}'
    headers = {"Content-Type": "text/plain", "Content-Encoding": "gzip", "User-Agent": "analytics-kotlin/1.19.1"}
    with live(config_with(tmp_path, sink.url)) as url:
        res = httpx.post(f"{url}/v1/b", content=gzip.compress(body.encode()), headers=headers)
        assert res.status_code == 200, res.text
        # analytics-swift (HTTPClient.swift, DirectoryStore.swift): JSON content type, no gzip, lines framed
        # "{ \"batch\": [" … "],\"sentAt\":…,\"writeKey\":…}"; and the same with Basic auth, as the issue asks.
        swift = (
            '{ "batch": ['
            + "\n"
            + json.dumps(track(3, user="swift-1"))
            + "\n"
            + ","
            + json.dumps(track(4, user="swift-1"))
        )
        swift += '],"sentAt":"2026-11-20T10:00:03.000Z","writeKey":"' + WRITE_KEY + '"}'
        res = httpx.post(f"{url}/v1/b", content=swift, headers={"Content-Type": "application/json; charset=utf-8"})
        assert res.status_code == 200, res.text
        plain = {"batch": [track(5, user="basic-1")], "sentAt": "2026-11-20T10:00:04.000Z"}
        res = httpx.post(f"{url}/v1/b", json=plain, headers={"Authorization": basic(WRITE_KEY)})
        assert res.status_code == 200, res.text
        assert wait_for(lambda: len(events_of(sink, "segmentify")) == 5)
        assert sorted(e["productId"] for e in events_of(sink, "segmentify")) == ["P-1", "P-2", "P-3", "P-4", "P-5"]
        res = httpx.post(
            f"{url}/v1/b", content=gzip.compress(body.replace(WRITE_KEY, "nope").encode()), headers=headers
        )
        assert res.status_code == 401


# --- Segment's Webhooks ---------------------------------------------------------------------------


def test_webhook_delete_put_patch_big_batches_and_two_secrets(tmp_path: Path, sink: RecordingServer) -> None:
    old, new = "whsec-old-1a2b3c", "whsec-new-4d5e6f"
    with live(config_with(tmp_path, sink.url, webhook_secret=[new, old])) as url:
        # segment-docs catalog/webhooks: a user deletion arrives as {"type": "delete", …}; Segment never
        # retries a 4xx, so it is answered, counted and set aside.
        delete = json.dumps({"type": "delete", "userId": "019mr8mf4r", "timestamp": "2012-12-02T00:30:08.276Z"})
        res = httpx.post(f"{url}/webhook", content=delete, headers={"X-Signature": sign(delete.encode(), old)})
        assert res.status_code == 200, res.text
        assert res.json() == {"success": True, "unsupported": [{"index": 0, "type": "delete"}]}
        metric = 'destinations_events_unsupported_total{source="webhook",type="delete"} 1.0'
        assert metric in httpx.get(f"{url}/metrics").text
        # Webhooks (Actions) send with POST, PUT or PATCH (webhook/send/index.ts: RequestMethod).
        for n, method in ((1, "PUT"), (2, "PATCH")):
            one = json.dumps(track(n, user="hook-1")).encode()
            res = httpx.request(method, f"{url}/webhook", content=one, headers={"X-Signature": sign(one, new)})
            assert res.status_code == 200, res.text
        # A batch is a JSON array (performBatch: payload.map(({ data }) => data)) signed over its first
        # element; 1,000 events of ~5 KB is past the tracking API's 512 KB but within the webhook's limit.
        pad = {**PRODUCT, "description": "x" * 5000}
        batch = [track(n, user=f"b-{n % 50}", properties={**pad, "product_id": f"B-{n}"}) for n in range(1000)]
        first = json.dumps(batch[0]).encode()
        body = b"[" + b",".join(json.dumps(e).encode() for e in batch) + b"]"
        assert len(body) > 5_000_000
        res = httpx.post(f"{url}/webhook", content=body, headers={"X-Signature": sign(first, new)}, timeout=60)
        assert res.status_code == 200, res.text
        assert res.json() == {"success": True}
        assert wait_for(lambda: len(events_of(sink, "segmentify")) == 1002, timeout=60)
        # A secret that is neither: 401.
        res = httpx.post(f"{url}/webhook", content=delete, headers={"X-Signature": sign(delete.encode(), "other")})
        assert res.status_code == 401


def test_cors_origins_must_be_origins() -> None:
    config = parse_config({"server": {"cors_origins": ["https://Shop.example/", "http://127.0.0.1:5555"]}}, environ={})
    assert config.server.cors_origins == ["https://shop.example", "http://127.0.0.1:5555"]
    with pytest.raises(ConfigurationError, match=r"cors_origins .*is not an origin"):
        parse_config({"server": {"cors_origins": ["https://shop.example/checkout"]}}, environ={})
    # As a browser sends `Origin`: an international name IDNA-encoded, the default port left out.
    idn = parse_config({"server": {"cors_origins": ["https://Магазин.example:443"]}}, environ={})
    assert idn.server.cors_origins == ["https://xn--80aairftm.example"]
    for bad in ("http://:9090", "https://shop.example:99999", "https://sh op.example", "https://u:pw@shop.example"):
        with pytest.raises(ConfigurationError, match=r"cors_origins .*is not an origin"):
            parse_config({"server": {"cors_origins": [bad]}}, environ={})


def test_the_rudder_upstream_is_a_url_a_request_can_go_to() -> None:
    config = parse_config({"rudder": {"upstream": "http://rudder-transformer:9090/"}}, environ={})
    assert config.rudder.upstream == "http://rudder-transformer:9090"
    cases = (("http://:9090", "must have a valid host name"),
             ("http://rudder-transformer:99999", r"must be an http\(s\) URL with a valid host and port"))  # fmt: skip
    for bad, rule in cases:
        with pytest.raises(ConfigurationError, match=rf"\[rudder\] upstream {rule}"):
            parse_config({"rudder": {"upstream": bad}}, environ={})


def test_webhook_secret_takes_one_text_or_a_list() -> None:
    one = parse_config({"server": {"webhook_secret": "s1"}}, environ={})
    several = parse_config({"server": {"webhook_secret": ["s1", "s2"]}}, environ={})
    assert [s.get_secret_value() for s in one.server.webhook_secret] == ["s1"]
    assert [s.get_secret_value() for s in several.server.webhook_secret] == ["s1", "s2"]
    assert "s1" not in repr(several.server)
    # A blank secret (an unset ${VAR:-}) must not quietly turn the check off.
    with pytest.raises(ConfigurationError, match=r"webhook_secret must not be blank"):
        parse_config({"server": {"webhook_secret": "${HOOK:-}"}}, environ={})


def test_direct_mode_sets_deletes_aside_too(tmp_path: Path, sink: RecordingServer) -> None:
    with live(config_with(tmp_path, sink.url, delivery="direct")) as url:
        calls = [{"type": "delete", "userId": "d1"}, {"type": "track", "userId": "d2"}, track(1), {"type": "purge"}]
        res = httpx.post(f"{url}/webhook", json=calls)
        assert res.status_code == 200, res.text
        body = res.json()
        assert body["unsupported"] == [{"index": 0, "type": "delete"}, {"index": 3, "type": "purge"}]
        assert [r["index"] for r in body["rejected"]] == [1]
        assert body["delivered"] is True
        metrics = httpx.get(f"{url}/metrics").text
        assert 'destinations_events_unsupported_total{source="webhook",type="delete"} 1.0' in metrics
        assert 'destinations_events_unsupported_total{source="webhook",type="other"} 1.0' in metrics  # bounded
        only = httpx.post(f"{url}/webhook", json=[{"type": "delete", "userId": "d1"}, {"type": "track"}])
        assert only.status_code == 200, only.text


def test_analytics_metrics_route_reads_within_the_limit(tmp_path: Path, sink: RecordingServer) -> None:
    with live(config_with(tmp_path, sink.url, max_body_bytes=100_000)) as url:
        assert httpx.post(f"{url}/v1/m", content=b'{"series":[]}').status_code == 200
        assert httpx.post(f"{url}/v1/m", content=b"x" * 200_000).status_code == 413
