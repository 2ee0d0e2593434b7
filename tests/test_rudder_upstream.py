"""rudder-server with this package as its transformer while rudder-transformer keeps the rest.

A recording stand-in for rudder-transformer answers on loopback; request bodies are built as rudder-server
serialises them (tests/test_rudder.py builds processor `TransformerEvent`s and router `RouterJobT`s from
processor/types and router/types). The proxy v1 request is rudder-server's `ProxyRequestPayload`
(router/transformer/transformer.go: processor/integrations PostParametersT, a `metadata` list of
`ProxyRequestMetadata`, `destinationConfig`), and its answer rudder-transformer's DeliveryV1Response
(src/controllers/delivery.ts: `{"output": {"status", "message", "response": [{"statusCode", "metadata",
"error"}]}}`), read by rudder-server as ProxyResponseV1.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_rudder import RUDDER_HEADERS, SECRET, processor_event, router_job, rudder_message
from test_server import live, wait_for

from destinations.config import parse_config
from destinations.sink import Answer, Received, RecordingServer

FEATURES = {
    "routerTransform": {"AM": True, "HS": True},
    "regulations": ["BRAZE", "AM"],
    "supportSourceTransformV1": True,
    "supportTransformerProxyV1": True,
    "upgradedToSourceTransformV2": True,
    "supportDestTransformCompactedPayloadV1": True,
}


def transformer(received: Received) -> Answer:
    """rudder-transformer, as far as these tests need it: its /features, and a recognisable answer elsewhere."""
    if received.path == "/features":
        return Answer(200, FEATURES, headers={"apiVersion": "2"})
    return Answer(207, {"from": "rudder-transformer", "path": received.path}, headers={"X-Upstream": "yes"})


@pytest.fixture
def upstream() -> Iterator[RecordingServer]:
    with RecordingServer(transformer) as s:
        yield s


def config(tmp_path: Path, upstream_url: str | None, **outbox: Any) -> Any:
    raw: dict[str, Any] = {"outbox": {"path": str(tmp_path / "outbox.sqlite3"), **outbox}}
    if upstream_url is not None:
        raw["rudder"] = {"upstream": upstream_url, "upstream_read_timeout": "5s"}
    return parse_config(raw, environ={})


def post(url: str, body: Any, **headers: str) -> httpx.Response:
    return httpx.post(url, content=json.dumps(body), headers={**RUDDER_HEADERS, **headers}, timeout=20)


def test_what_is_not_ours_goes_to_rudder_transformer_unchanged(tmp_path: Path, upstream: RecordingServer) -> None:
    with live(config(tmp_path, upstream.url), deliver=False) as url:
        am = [processor_event("am", rudder_message("Product Viewed"), 1, config={"apiKey": "am-key"})]
        cases = [
            ("POST", "/v0/destinations/am?x=1", am),
            (
                "POST",
                "/routerTransform",
                {"input": [router_job("am", rudder_message("Product Viewed"), 1)], "destType": "am"},
            ),
            ("POST", "/batch", {"input": [router_job("am", rudder_message("Product Viewed"), 2)], "destType": "am"}),
            ("POST", "/customTransform", [{"message": {}, "metadata": {}}]),
            ("POST", "/v2/sources/webhook", [{"request": {"body": "{}"}, "source": {}}]),
            ("POST", "/v1/destinations/am/proxy", {"endpoint": "https://api.amplitude.example", "metadata": []}),
            ("GET", "/transformerBuildVersion", None),
        ]
        for method, path, body in cases:
            content = None if body is None else json.dumps(body).encode()
            res = httpx.request(method, f"{url}{path}", content=content, headers={**RUDDER_HEADERS, "X-Trace": "t-1"})
            assert res.status_code == 207, (path, res.text)
            assert res.json() == {"from": "rudder-transformer", "path": path.split("?")[0]}
            assert res.headers["X-Upstream"] == "yes"
            # The stand-in records a request once it has answered it.
            count = cases.index((method, path, body)) + 1
            assert wait_for(lambda count=count: len(upstream.received) >= count)
            got = upstream.received[count - 1]
            assert (got.method, got.path, got.body) == (method, path.split("?")[0], content or b"")
            assert {k.lower(): v for k, v in got.headers.items()}["x-trace"] == "t-1"  # header names: any case
        assert upstream.received[0].params == {"x": "1"}
        metrics = httpx.get(f"{url}/metrics").text
        assert 'destinations_upstream_requests_total{route="/v0/destinations",status="207"} 1.0' in metrics


def test_features_is_rudder_transformers_document_with_our_types(tmp_path: Path, upstream: RecordingServer) -> None:
    with live(config(tmp_path, upstream.url), deliver=False) as url:
        features = httpx.get(f"{url}/features").json()
    assert features["routerTransform"] == {
        "AM": True, "HS": True, "SEGMENTIFY": True, "DENGAGE": True, "WIGZO": True, "ESPUTNIK": True
    }  # fmt: skip
    assert features["regulations"] == ["BRAZE", "AM"]
    # rudder-server would compact payloads for every type; these routes read full events.
    assert features["supportDestTransformCompactedPayloadV1"] is False
    assert features["supportTransformerProxyV1"] is True


def test_ours_are_never_forwarded(tmp_path: Path, upstream: RecordingServer) -> None:
    with live(config(tmp_path, upstream.url), deliver=False) as url:
        event = processor_event("segmentify", rudder_message(), 1)
        res = post(f"{url}/v0/destinations/segmentify", [event])
        assert res.status_code == 200
        assert res.json()[0]["statusCode"] == 200
        jobs = [router_job("segmentify", rudder_message(), n) for n in (1, 2)]
        res = post(f"{url}/batch", {"input": jobs, "destType": "segmentify"})
        assert res.status_code == 200
        items = res.json()
        assert isinstance(items, list)  # /batch answers the bare list (rudder-transformer's batchProcess)
        assert [m["jobId"] for m in items[0]["metadata"]] == [1, 2]
    assert upstream.received == []


def test_upstream_down_is_a_status_rudder_server_retries(tmp_path: Path) -> None:
    with live(config(tmp_path, "http://127.0.0.1:9"), deliver=False) as url:
        res = post(f"{url}/v0/destinations/am", [processor_event("am", rudder_message("Product Viewed"), 1)])
        assert res.status_code == 503
        assert res.headers["X-Rudder-Should-Retry"] == "true"
        # /features too: a document without rudder-transformer's types would be taken for the truth.
        assert httpx.get(f"{url}/features").status_code == 503


def test_without_upstream_other_types_are_404(tmp_path: Path) -> None:
    with live(config(tmp_path, None), deliver=False) as url:
        assert post(f"{url}/v0/destinations/am", []).status_code == 404
        assert post(f"{url}/customTransform", []).status_code == 404


def test_router_batches_respect_the_byte_cap(tmp_path: Path) -> None:
    with live(config(tmp_path, None, batch_bytes=20_000), deliver=False) as url:
        jobs = []
        for n in range(40):
            message = rudder_message("Something Custom")
            message["properties"] = {"note": "x" * 2_000, "n": n}
            jobs.append(router_job("segmentify", message, n + 1))
        items = post(f"{url}/routerTransform", {"input": jobs, "destType": "segmentify"}).json()["output"]
    sizes = [len(i["batchedRequest"]["body"]["JSON_ARRAY"]["batch"].encode()) for i in items]
    assert len(items) > 1
    assert max(sizes) <= 20_000
    assert sorted(m["jobId"] for i in items for m in i["metadata"]) == list(range(1, 41))


def test_dengage_by_its_display_name(tmp_path: Path) -> None:
    # rudder-server filters integrations by the definition's DisplayName ("D·engage" in the workspace).
    message = rudder_message()
    message["integrations"] = {"All": False, "D·engage": True}
    with live(config(tmp_path, None), deliver=False) as url:
        [item] = post(f"{url}/v0/destinations/dengage", [processor_event("dengage", message, 1)]).json()
    assert item["statusCode"] == 200, item
    assert item["output"]["body"]["JSON_ARRAY"]["batch"]


@pytest.mark.parametrize(
    ("answer", "status", "error"),
    [
        (Answer(200, {"statusCode": "SUCCESS"}), 200, ""),
        (Answer(200, {"statusCode": "BAD_INPUT"}), 400, "200 BAD_INPUT"),  # in-body error: aborted
        (Answer(503, {"error": "down"}), 503, "503"),  # retried
        (Answer(429, {"error": "slow"}), 429, "429"),  # retried
    ],
)
def test_proxy_v1_delivers_and_reports_each_job(tmp_path: Path, answer: Answer, status: int, error: str) -> None:
    with RecordingServer(lambda _: answer) as vendor, live(config(tmp_path, None), deliver=False) as url:
        settings = {"apiKey": SECRET, "dataCenterUrl": vendor.url}
        jobs = [router_job("segmentify", rudder_message(), n, config=settings) for n in (7, 8)]
        [item] = post(f"{url}/routerTransform", {"input": jobs, "destType": "segmentify"}).json()["output"]
        request_ = item["batchedRequest"]
        proxy = {
            "type": request_["type"],
            "endpoint": request_["endpoint"],
            "method": request_["method"],
            "userId": "",
            "headers": request_["headers"],
            "params": request_["params"],
            "body": request_["body"],
            "files": request_["files"],
            "metadata": [
                {
                    "jobId": m["jobId"],
                    "attemptNum": 0,
                    "userId": "",
                    "sourceId": m["sourceId"],
                    "destinationId": m["destinationId"],
                    "workspaceId": m["workspaceId"],
                    "secret": None,
                    "dontBatch": False,
                }
                for m in item["metadata"]
            ],
            "destinationConfig": item["destination"]["Config"],
        }
        res = post(f"{url}/v1/destinations/segmentify/proxy", proxy, **{"RdProxy-Timeout": "10000"})
        assert res.status_code == 200, res.text
        output = res.json()["output"]
        assert [(r["statusCode"], r["metadata"]["jobId"]) for r in output["response"]] == [(status, 7), (status, 8)]
        assert all(r["error"].startswith(error) for r in output["response"])
        assert wait_for(lambda: len(vendor.received) == 1)
        (sent,) = vendor.received
        assert [(e["name"], e["step"]) for e in json.loads(sent.body)] == [("CHECKOUT", "purchase")] * 2
        assert SECRET not in res.text


def test_what_is_relayed_is_relayed_as_bytes(tmp_path: Path, upstream: RecordingServer) -> None:
    with live(config(tmp_path, upstream.url), deliver=False) as url:
        # A header value that is not ASCII, an escaped path: passed on as they came, never our 500.
        res = httpx.post(f"{url}/v0/sources/web%3Fhook", content=b"{}", headers={"X-Utf": "caf\u00e9".encode()})
        assert res.status_code == 207, res.text
        assert wait_for(lambda: len(upstream.received) == 1)
        got = upstream.received[0]
        assert got.path == "/v0/sources/web%3Fhook"
        sent = {k.lower() for k in res.request.headers}
        assert "x-utf" in {k.lower() for k in got.headers}
        assert {k.lower() for k in got.headers} <= sent | {"host", "content-length"}  # no headers of our own
        # A body these routes cannot read (gzip) goes on when another type may own it.
        res = httpx.post(f"{url}/routerTransform", content=b"\x1f\x8b...", headers={"Content-Encoding": "gzip"})
        assert res.status_code == 207
        assert len(res.headers.get_list("date")) == 1


def test_the_proxy_aborts_what_it_cannot_send_and_sends_nowhere_else(tmp_path: Path) -> None:
    with RecordingServer() as vendor, live(config(tmp_path, None), deliver=False) as url:
        settings = {"apiKey": SECRET, "dataCenterUrl": vendor.url}
        job = {"jobId": 1, "attemptNum": 0, "userId": "", "sourceId": "s", "destinationId": "d", "workspaceId": "w",
               "secret": None, "dontBatch": False}  # fmt: skip
        base = {"type": "REST", "method": "POST", "endpoint": f"{vendor.url}/add/events/v1.json", "userId": "",
                "headers": {"Content-Type": "application/json"}, "params": {"apiKey": SECRET},
                "body": {"JSON": {}, "JSON_ARRAY": {"batch": "[]"}, "XML": {}, "FORM": {}}, "files": {},
                "metadata": [job], "destinationConfig": settings}  # fmt: skip
        cases = [
            {"endpoint": "http://127.0.0.1:9/steal"},  # not this destination's data center: never called
            {"method": "FOO BAR"},
            {"body": {"FORM": {"a": "1"}}},
            {"headers": {"X": "a\r\nInjected: 1"}},
        ]
        for change in cases:
            res = post(f"{url}/v1/destinations/segmentify/proxy", {**base, **change})
            [item] = res.json()["output"]["response"]
            assert item["statusCode"] == 400, (change, item)  # aborted: the same would fail every retry
            assert SECRET not in res.text
        res = post(f"{url}/v1/destinations/segmentify/proxy", {**base, "metadata": []})
        assert res.json()["output"]["response"] == []
        time.sleep(0.2)
        assert vendor.received == []
