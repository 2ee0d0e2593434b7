"""Events per second accepted and committed through `POST /v1/batch`, beside the same server's cheapest route.

The server (uvicorn, one process, the app of `destinations serve --no-deliver`: all four destinations
configured, their vendor URLs pointing at an unused loopback port, delivery off) runs pinned to CPU 0;
this client runs on CPU 1 with several requests in flight over keep-alive connections. Each request is
a batch of 100 realistic events (product views, cart, checkout, orders, pages, identifies) with fresh
messageIds, so nothing is deduplicated. The baseline posts the same bodies, with the same write key,
to a no-op route of the same app that only reads the body: what uvicorn and FastAPI cost alone. A third
route does everything `/v1/batch` does before committing (gunzip, JSON, limits, Segment checks), so
the figures show where the time goes. `/v1/batch` commits the events to the outbox's inbox; mapping
them into vendor requests is the delivery process's work, measured last, in this process, over the
events the server stored: the rate one worker core sustains for four destinations.

Run: python benchmarks/intake.py [--seconds 8] [--inflight 4] [--gzip]. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fastapi import Request

WRITE_KEY = "bench-write-key"
BATCH = 100
UNUSED = "http://127.0.0.1:9"  # the discard port: nothing listens, and nothing is sent (delivery is off)

CONFIG = f"""
[server]
write_keys = ["{WRITE_KEY}"]

[outbox]
path = "{{outbox}}"

[destinations.shop-segmentify]
type = "segmentify"
apiKey = "bench-segmentify-key"
dataCenterUrl = "{UNUSED}"

[destinations.shop-dengage]
type = "dengage"
apiKey = "bench-dengage-key"
dataCenterUrl = "{UNUSED}"

[destinations.shop-esputnik]
type = "esputnik"
apiKey = "bench-esputnik-key"
baseUrl = "{UNUSED}"

[destinations.shop-wigzo]
type = "wigzo"
orgToken = "bench-org-token"
token = "bench-token"
baseUrl = "{UNUSED}"
"""

SHOP = "https://www.exampleshop.com"
PRODUCTS = [
    {"product_id": "P1", "sku": "S1", "name": "Trail Runner", "price": 349.99, "quantity": 2, "category": "Shoes",
     "brand": "Acme", "url": f"{SHOP}/p1", "image_url": f"{SHOP}/p1.png"},
    {"product_id": "P2", "sku": "S2", "name": "Sport Socks", "price": 19.99, "quantity": 1, "category": "Socks",
     "brand": "Acme", "url": f"{SHOP}/p2", "image_url": f"{SHOP}/p2.png"},
]  # fmt: skip


def event(n: int) -> dict[str, Any]:
    """The n-th event of a batch: a shop's mix (40% product views, cart, checkout, orders, pages, identifies)."""
    user = f"user-{n % 37}"
    email = f"{user}@example.com"
    base: dict[str, Any] = {
        "messageId": f"__BATCH__-{n}",
        "userId": user,
        "anonymousId": f"anon-{n % 37}",
        "timestamp": "2026-11-20T10:00:00.000Z",
        "context": {
            "page": {"url": f"{SHOP}/p1", "referrer": "https://www.google.com/", "path": "/p1"},
            "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) Mobile/15E148",
            "locale": "en-US",
            "sessionId": f"sess-{n % 37}",
            "traits": {"email": email},
            "library": {"name": "analytics-python", "version": "1.4.post1"},
        },
        "integrations": {},
    }
    kind = n % 10
    if kind < 4:
        return {**base, "type": "track", "event": "Product Viewed", "properties": {**PRODUCTS[0], "currency": "EUR"}}
    if kind == 4:
        props = {**PRODUCTS[1], "cart_id": f"cart-{user}", "currency": "EUR", "products": PRODUCTS}
        return {**base, "type": "track", "event": "Product Added", "properties": props}
    if kind == 5:
        props = {"cart_id": f"cart-{user}", "checkout_id": f"chk-{n}", "value": 719.97, "currency": "EUR",
                 "products": PRODUCTS}  # fmt: skip
        return {**base, "type": "track", "event": "Checkout Started", "properties": props}
    if kind == 6:
        props = {"order_id": f"ord-{n}", "checkout_id": f"chk-{n}", "total": 719.97, "currency": "EUR",
                 "shipping": 0, "products": PRODUCTS}  # fmt: skip
        return {**base, "type": "track", "event": "Order Completed", "properties": props}
    if kind == 7:
        return {**base, "type": "page", "name": "Home", "properties": {"title": "Example Shop", "url": SHOP}}
    if kind == 8:
        traits = {"email": email, "firstName": "Jane", "lastName": "Doe", "phone": "+905551112233"}
        return {**base, "type": "identify", "traits": traits}
    return {**base, "type": "track", "event": "Coupon Applied", "properties": {"coupon_id": "WELCOME10"}}


def template() -> bytes:
    body = {"batch": [event(n) for n in range(BATCH)], "sentAt": "2026-11-20T10:00:01.000Z"}
    return json.dumps(body).encode()


# --- the server ---------------------------------------------------------------------------------


def run_server(config_path: str, port: int) -> None:
    """The app of `destinations serve --no-deliver`, plus a no-op route, on one pinned core."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})
    import uvicorn
    from fastapi.responses import JSONResponse

    from destinations.config import load_config
    from destinations.server import create_app, intake

    app = create_app(load_config(config_path), deliver=False)

    @app.post("/bench/noop", include_in_schema=False)
    async def noop(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"success": True})

    @app.post("/bench/checked", include_in_schema=False)
    async def checked(request: Request) -> JSONResponse:
        """/v1/batch up to the outbox: read, gunzip, parse, limits, Segment checks; no routing, no commit."""
        body = await intake.read_body(request, raw_limit=512_000, limit=intake.BATCH_LIMIT)
        data = intake.parse_json(body)
        intake.prepare(data["batch"], kind=None, received_at=intake.now_iso(), batch=data, measure=True)
        return JSONResponse({"success": True})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# --- the client ---------------------------------------------------------------------------------


class Load:
    """`inflight` threads, each with one keep-alive connection, posting batches until `until`."""

    def __init__(self, port: int, path: str, body: bytes, *, inflight: int, compress: bool) -> None:
        self.port, self.path, self.body, self.inflight, self.compress = port, path, body, inflight, compress
        self.latencies: list[float] = []
        self.failures: dict[int, int] = {}
        self.lock = threading.Lock()
        self.counter = 0
        auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Basic {auth}"}
        if compress:
            self.headers["Content-Encoding"] = "gzip"

    def next_body(self) -> bytes:
        with self.lock:
            self.counter += 1
            n = self.counter
        body = self.body.replace(b"__BATCH__", f"{self.path.strip('/').replace('/', '-')}-{os.getpid()}-{n}".encode())
        return gzip.compress(body, 1) if self.compress else body

    def worker(self, until: float, record_after: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        latencies: list[float] = []
        while time.perf_counter() < until:
            body = self.next_body()
            started = time.perf_counter()
            conn.request("POST", self.path, body=body, headers=self.headers)
            response = conn.getresponse()
            response.read()
            done = time.perf_counter()
            if response.status != 200:
                with self.lock:
                    self.failures[response.status] = self.failures.get(response.status, 0) + 1
            elif started >= record_after:
                latencies.append(done - started)
        conn.close()
        with self.lock:
            self.latencies.extend(latencies)

    def run(self, seconds: float, warmup: float) -> tuple[float, list[float]]:
        start = time.perf_counter()
        record_after, until = start + warmup, start + warmup + seconds
        threads = [threading.Thread(target=self.worker, args=(until, record_after)) for _ in range(self.inflight)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return seconds, sorted(self.latencies)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not start")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured time per route (default 8)")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured time first (default 1.5)")
    parser.add_argument("--inflight", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--gzip", action="store_true", help="gzip the bodies, as analytics-python's gzip=True")
    parser.add_argument("--debugger", choices=["on", "off"], default="on", help="the live debugger (default on)")
    parser.add_argument("--serve", nargs=2, metavar=("CONFIG", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        run_server(args.serve[0], int(args.serve[1]))
        return

    pinned = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1
    with tempfile.TemporaryDirectory(prefix="destinations-bench-") as tmp:
        config = Path(tmp) / "destinations.toml"
        outbox = Path(tmp) / "outbox.sqlite3"
        text = CONFIG.replace("{outbox}", str(outbox))
        if args.debugger == "off":
            text += "\n[debugger]\nenabled = false\n"
        config.write_text(text, encoding="utf-8")
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(config), str(port)])
        try:
            if pinned:
                os.sched_setaffinity(0, {1})
            wait_up(port)
            body = template()
            print(
                f"{BATCH} events a batch, {len(body) / 1024:.0f} KB{' (gzip)' if args.gzip else ''};"
                f" {args.inflight} requests in flight; server on CPU 0, client on CPU 1; debugger {args.debugger}"
                + ("" if pinned else " (not pinned: one CPU or no affinity support)")
            )
            print(f"{'route':<28} {'events/s':>10} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
            results = {}
            routes = (
                ("POST /bench/noop (baseline)", "/bench/noop"),
                ("  … + checks, no outbox", "/bench/checked"),
                ("POST /v1/batch", "/v1/batch"),
            )
            for label, path in routes:
                load = Load(port, path, body, inflight=args.inflight, compress=args.gzip)
                seconds, latencies = load.run(args.seconds, args.warmup)
                rate = len(latencies) / seconds
                results[path] = rate * BATCH
                errors = sum(load.failures.values())
                print(
                    f"{label:<28} {rate * BATCH:>10,.0f} {rate:>11,.1f} {percentile(latencies, 0.5) * 1000:>8.1f}"
                    f" {percentile(latencies, 0.99) * 1000:>8.1f} {errors:>7}"
                    + (f"  {load.failures}" if errors else "")
                )
        finally:
            server.terminate()
            server.wait(30)
        with sqlite3.connect(outbox) as db:
            (accepted,) = db.execute("SELECT COUNT(*) FROM inbox").fetchone()
        print(f"outbox: {accepted:,} events committed to the inbox")
        print(
            f"/v1/batch: {results['/v1/batch']:,.0f} events/s committed"
            f" ({results['/v1/batch'] / results['/bench/noop']:.2f} of the no-op route; target 10,000 events/s)"
        )
        mapped, seconds, requests = map_everything(config, min(accepted, 20_000))
        print(
            f"mapping (delivery process, one core): {mapped / seconds:,.0f} events/s mapped for 4 destinations"
            f" and committed as {requests:,} vendor requests"
        )


def map_everything(config_path: Path, limit: int) -> tuple[int, float, int]:
    """Map up to `limit` inbox events as a delivery process does; (events, seconds, requests)."""
    from destinations.config import load_config
    from destinations.delivery import Outbox
    from destinations.delivery.intake import map_inbox
    from destinations.delivery.outbox import Holder

    config = load_config(config_path, environ={})
    outbox = Outbox(config.outbox.path, debug_keep=config.debugger.keep_count)
    holder = Holder.new()
    done = requests = 0
    started = time.perf_counter()
    while done < limit:
        report = map_inbox(outbox, config.destinations, holder, limit=min(500, limit - done))
        if not report.messages:
            break
        done += report.messages
        requests += sum(report.accepted.values())
    return done, time.perf_counter() - started, requests


if __name__ == "__main__":
    main()
