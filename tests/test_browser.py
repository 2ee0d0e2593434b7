"""analytics.js in a real headless Chromium delivers a shop session to all four vendors through the server.

The page loads analytics-next's own UMD build from the `@segment/analytics-next` npm package (installed at
test time into `.npm/`, never committed) from another loopback origin, and points the Segment.io plugin's
`apiHost` at the server, as a shop would (segmentio/analytics-next packages/browser/src/plugins/segmentio/
index.ts reads `apiHost` and `protocol` from the Segment.io integration settings). Debian's Chromium is driven
by Selenium with Debian's chromedriver. Outside CI the test skips with a reason when either is missing; in
CI (CI=true) it fails instead.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from chromium import driver, require
from chromium import missing as chromium_missing
from test_server import KEYS, WRITE_KEY, live, make_config, to, wait_for

from destinations.sink import RecordingServer

ROOT = Path(__file__).resolve().parent.parent
UMD = Path(os.environ.get("ANALYTICS_NEXT_DIR", ROOT / ".npm/node_modules/@segment/analytics-next")) / "dist/umd"


def _missing() -> str | None:
    if (reason := chromium_missing()) is not None:
        return reason
    if not (UMD / "index.js").exists():
        return f"@segment/analytics-next is not installed in {UMD.parent.parent} (.ci/run installs it)"
    return None


require(_missing())

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Shop</title></head><body>
<script src="/umd/index.js"></script>
<script>
window.session = (async () => {
  const [analytics] = await window.AnalyticsNext.AnalyticsBrowser.load({
    writeKey: "%(write_key)s",
    // No CDN: the settings analytics.js would fetch, with the Segment.io plugin pointed at the server.
    cdnSettings: {integrations: {"Segment.io": {apiKey: "%(write_key)s", apiHost: "%(api_host)s", protocol: "http"}}},
  });
  await analytics.identify("%(user)s", {email: "%(user)s@example.com", firstName: "Ada", lastName: "Lovelace"});
  await analytics.page("Shop", "Home");
  const product = {product_id: "P-1", name: "Trail Runner", price: 349.99, currency: "EUR", category: "Shoes",
                   image_url: "https://cdn.shop.example/p-1.png", url: "https://shop.example/p-1"};
  await analytics.track("Product Viewed", product);
  await analytics.track("Product Added", {...product, quantity: 1, cart_id: "cart-%(user)s",
                                          products: [{...product, quantity: 1}]});
  await analytics.track("Order Completed", {order_id: "O-%(user)s", total: 349.99, currency: "EUR",
                                            products: [{...product, quantity: 1}]});
  return "done";
})().catch((e) => "error: " + e);
</script></body></html>
"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _page_server(folder: Path, port: int) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", port), partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Any]:
    with driver(tmp_path / "profile") as chrome:
        yield chrome


def _open(driver: Any, url: str) -> str:
    driver.get(url)
    return str(driver.execute_async_script("const done = arguments[arguments.length - 1]; window.session.then(done);"))


def _shop(folder: Path, api_host: str, user: str) -> Path:
    folder.mkdir()
    (folder / "umd").symlink_to(UMD, target_is_directory=True)
    (folder / "index.html").write_text(PAGE % {"write_key": WRITE_KEY, "api_host": api_host, "user": user})
    return folder


def test_analytics_js_in_chromium_reaches_all_four_vendors(tmp_path: Path, chromium: Any) -> None:
    page_port, other_port = _free_port(), _free_port()
    page_origin = f"http://127.0.0.1:{page_port}"
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url, secret=None, server_extra={"cors_origins": [page_origin]})
        with live(config) as url:
            api_host = url.removeprefix("http://") + "/v1"
            shop = _page_server(_shop(tmp_path / "shop", api_host, "user-1"), page_port)
            other = _page_server(_shop(tmp_path / "other", api_host, "user-2"), other_port)
            try:
                assert _open(chromium, f"{page_origin}/index.html") == "done"

                def arrived() -> bool:
                    return all(len(to(sink, kind)) >= n for kind, n in (("segmentify", 5), ("dengage", 5),
                                                                        ("wigzo", 5), ("esputnik", 5)))  # fmt: skip

                assert wait_for(arrived, timeout=30), {k: len(to(sink, k)) for k in KEYS}
                check_segmentify(sink, "segmentify", page_origin)
                check_segmentify(sink, "dengage", page_origin)
                check_wigzo(sink, page_origin)
                check_esputnik(sink)

                # A page from an origin not in cors_origins is refused: its events never arrive.
                before = {k: len(to(sink, k)) for k in KEYS}
                _open(chromium, f"http://127.0.0.1:{other_port}/index.html")
                time.sleep(2)
                assert {k: len(to(sink, k)) for k in KEYS} == before
                # analytics.js sends Authorization, so the browser asks first; that preflight is refused
                # and nothing is posted.
                lines = httpx.get(f"{url}/metrics").text.splitlines()
                refused = [
                    line
                    for line in lines
                    if line.startswith("destinations_http_request_duration_seconds_count")
                    and 'method="OPTIONS"' in line
                    and 'status="400"' in line
                ]
                assert refused, "the other origin's preflight was refused"
            finally:
                for server in (shop, other):
                    server.shutdown()
                    server.server_close()


def _events(sink: RecordingServer, kind: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in to(sink, kind):
        out.extend(r.json if isinstance(r.json, list) else [r.json])
    return out


def check_segmentify(sink: RecordingServer, kind: str, page_origin: str) -> None:
    events = {(e["name"], e.get("step")): e for e in _events(sink, kind)}
    assert set(events) >= {("USER_OPERATIONS", "update"), ("PAGE_VIEW", None), ("PRODUCT_VIEW", None),
                           ("BASKET_OPERATIONS", "add"), ("CHECKOUT", "purchase")}  # fmt: skip
    assert events[("USER_OPERATIONS", "update")]["email"] == "user-1@example.com"
    assert events[("USER_OPERATIONS", "update")]["fullName"] == "Ada Lovelace"
    assert events[("PAGE_VIEW", None)]["category"] == "Shop"
    view = events[("PRODUCT_VIEW", None)]
    assert (view["productId"], view["price"], view["userId"]) == ("P-1", 349.99, "user-1")
    assert view["pageUrl"].startswith(page_origin)  # analytics.js's own context.page
    assert events[("CHECKOUT", "purchase")]["orderNo"] == "O-user-1"
    origins = {next((v for k, v in r.headers.items() if k.lower() == "origin"), None) for r in to(sink, kind)}
    assert origins == {page_origin}  # Segmentify's Origin header: the page's own origin


def check_wigzo(sink: RecordingServer, page_origin: str) -> None:
    calls = _events(sink, "wigzo")
    identify = next(c for c in calls if "eventName" not in c)
    assert (identify["email"], identify["firstName"], identify["customer_id"]) == (
        "user-1@example.com",
        "Ada",
        "user-1",
    )
    by_name = {c["eventName"]: c["eventval"] for c in calls if "eventName" in c}
    assert set(by_name) >= {"view", "product_view", "add_to_cart", "order_completed"}
    assert by_name["view"]["canonicalUrl"].startswith(page_origin)
    assert by_name["product_view"]["productId"] == "P-1"
    assert by_name["add_to_cart"]["productId"] == "P-1"
    assert by_name["order_completed"]["orderId"] == "O-user-1"
    assert {c["userId"] for c in calls} == {identify["userId"]}  # one Wigzo user throughout


def check_esputnik(sink: RecordingServer) -> None:
    calls = _events(sink, "esputnik")
    contact = next(c for c in calls if "eventTypeKey" not in c)
    assert contact["channels"] == [{"type": "email", "value": "user-1@example.com"}]
    keys = [c["eventTypeKey"] for c in calls if "eventTypeKey" in c]
    assert set(keys) >= {"pageViewed", "productViewed", "cartUpdated", "orderCompleted"}
    cart = next(c for c in calls if c.get("eventTypeKey") == "cartUpdated")
    params = {p["name"]: p["value"] for p in cart["params"]}
    assert params["recycleStateId"] == "cart-user-1"
    # analytics.js sends no traits with track calls, so the locator there is the userId.
    assert cart["keyValue"] == "user-1"
