"""Events per second through `POST /v0/destinations/segmentify`, beside a hand-written baseline.

Each request carries 100 "Order Completed" events (two products each) shaped as rudder-server's
processor sends them: full metadata, the destination with its Config. Our server is the one
`destinations serve --no-deliver` runs (the whole app, its middleware and its collector setting), in a
subprocess pinned to one core; the client runs here, pinned to another, with several requests in
flight. The baseline, measured in the same run and on the same core, is a bare Starlette route that
parses the body with orjson, maps each event with a hand-written dict (no validation) and writes
the same output form with orjson: the ceiling of this route in Python. `--tuned-baseline` gives the
baseline the collector setting `serve` gives itself, for the figure without that difference.

Run: python benchmarks/transformer.py [--seconds S] [--clients N] [--rounds R] [--tuned-baseline] [--profile]
(--profile skips the servers and prints where our route spends its time, in process.)
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import json
import os
import pstats
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

EVENTS_PER_REQUEST = 100
PATH = "/v0/destinations/segmentify"
CONFIG = {
    "apiKey": "bench-api-key",
    "dataCenterUrl": "https://dce1.segmentify.com",
    "eventFilteringOption": "disable",
    "whitelistedEvents": [{"eventName": ""}],
    "blacklistedEvents": [{"eventName": ""}],
    "oneTrustCookieCategories": [],
    "connectionMode": {"web": "cloud"},
}
DESTINATION = {
    "ID": "2bXJy0pJp9vCjl8qkQ7zrWYeG1H",
    "Name": "Segmentify production",
    "DestinationDefinition": {
        "ID": "1oMqK0s6dXhd3zQ1Rxo9vZ0aN0g",
        "Name": "SEGMENTIFY",
        "DisplayName": "Segmentify",
        "Config": {"transformAt": "processor", "transformAtV1": "processor"},
        "ResponseRules": None,
    },
    "Config": CONFIG,
    "Enabled": True,
    "WorkspaceID": "2bXJxqA9lA0Q1wLXhYd5pQPWgqH",
    "Transformations": [],
    "IsProcessorEnabled": True,
    "RevisionID": "2bXJy3kX7QkqB3y0a1Lk2qWm3zR",
}


def event(i: int) -> dict[str, Any]:
    """One processor TransformerEvent: a JavaScript SDK "Order Completed" after the gateway."""
    message_id = f"9f1c2a4e-0000-4000-8000-{i:012d}"
    message = {
        "anonymousId": f"anon-{i % 37}",
        "channel": "web",
        "context": {
            "app": {"name": "RudderLabs JavaScript SDK", "namespace": "com.rudderlabs.javascript", "version": "3.0.0"},
            "library": {"name": "RudderLabs JavaScript SDK", "version": "3.0.0"},
            "locale": "en-US",
            "page": {
                "path": "/checkout",
                "referrer": "https://www.google.com/",
                "title": "Checkout",
                "url": "https://www.exampleshop.com/checkout",
            },
            "traits": {"email": f"user{i % 37}@example.com"},
            "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36",
            "sessionId": "sess-1714989600000",
        },
        "event": "Order Completed",
        "integrations": {"All": True},
        "messageId": message_id,
        "originalTimestamp": "2024-05-06T10:00:00.000Z",
        "properties": {
            "order_id": f"ord-{i}",
            "total": 949.97,
            "currency": "EUR",
            "products": [
                {"product_id": "P1", "sku": "S1", "name": "Shoe", "price": 349.99, "quantity": 2, "category": "Shoes"},
                {"product_id": "P2", "sku": "S2", "name": "Sock", "price": 249.99, "quantity": 1, "category": "Socks"},
            ],
        },
        "receivedAt": "2024-05-06T10:00:00.120Z",
        "request_ip": "203.0.113.7",
        "rudderId": "bf412108-0357-4330-b119-7305e767823c",
        "sentAt": "2024-05-06T10:00:00.050Z",
        "timestamp": "2024-05-06T10:00:00.070Z",
        "type": "track",
        "userId": f"user-{i % 37}",
    }
    metadata = {
        "sourceId": "2bXJxr3mWg5dV0rDz8kQmS3yzA1",
        "workspaceId": "2bXJxqA9lA0Q1wLXhYd5pQPWgqH",
        "namespace": "",
        "instanceId": "rudder-server-0",
        "sourceType": "Javascript",
        "sourceCategory": "",
        "trackingPlanId": "",
        "trackingPlanVersion": 0,
        "destinationId": DESTINATION["ID"],
        "jobRunId": "",
        "jobId": i + 1,
        "sourceBatchId": "",
        "sourceJobId": "",
        "sourceJobRunId": "",
        "sourceTaskId": "",
        "sourceTaskRunId": "",
        "destinationType": "SEGMENTIFY",
        "messageId": message_id,
        "rudderId": f"<<>>anon-{i % 37}<<>>user-{i % 37}",
        "receivedAt": "2024-05-06T10:00:00.120Z",
        "eventName": "Order Completed",
        "eventType": "track",
        "sourceDefinitionId": "1TW48i2bIzEl1HPf825cEznfIM8",
        "destinationDefinitionId": DESTINATION["DestinationDefinition"]["ID"],
    }
    return {"message": message, "metadata": metadata, "destination": DESTINATION, "connection": {}, "libraries": None}


BODY = json.dumps([event(i) for i in range(EVENTS_PER_REQUEST)]).encode()


# --- the two servers ----------------------------------------------------------------------------


def baseline_app() -> Any:
    """The same work without the package: orjson, one hand-written dict per event, orjson."""
    import orjson
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def transform(request: Request) -> Response:
        out = []
        for item in orjson.loads(await request.body()):
            m, config = item["message"], item["destination"]["Config"]
            c, p = m["context"], m["properties"]
            vendor_event = {
                "name": "CHECKOUT",
                "userId": m["userId"],
                "sessionId": c["sessionId"],
                "device": "PC",
                "pageUrl": c["page"]["url"],
                "referrer": c["page"]["referrer"],
                "userAgent": c["userAgent"],
                "lang": c["locale"].split("-")[0].upper(),
                "currency": p["currency"],
                "step": "purchase",
                "totalPrice": p["total"],
                "orderNo": p["order_id"],
                "productList": [
                    {
                        "productId": x["product_id"],
                        "price": x["price"],
                        "currency": p["currency"],
                        "quantity": x["quantity"],
                    }
                    for x in p["products"]
                ],
            }
            output = {
                "version": "1",
                "type": "REST",
                "method": "POST",
                "endpoint": f"{config['dataCenterUrl']}/add/events/v1.json",
                "headers": {
                    "Content-Type": "application/json",
                    "Accept": "application/json",
                    "Origin": "https://www.exampleshop.com",
                },
                "params": {"apiKey": config["apiKey"]},
                "body": {
                    "JSON": {},
                    "JSON_ARRAY": {"batch": orjson.dumps([vendor_event]).decode()},
                    "XML": {},
                    "FORM": {},
                },
                "files": {},
                "userId": m["userId"],
            }
            out.append({"output": output, "metadata": item["metadata"], "statusCode": 200})
        return Response(orjson.dumps(out), media_type="application/json", headers={"apiVersion": "2"})

    return Starlette(routes=[Route(PATH, transform, methods=["POST"])])


def serve(which: str, port: int, cpu: int, *, tuned_baseline: bool = False) -> None:
    """Ours: what `destinations serve --no-deliver` runs (app.serve: the whole app, its middleware, the
    cycle collector tuned for a delivery process), on a configuration with an outbox and no destination
    (rudder-server sends each event's destination with it: processor/types.TransformerEvent's `destination`).
    The baseline: a bare Starlette app on uvicorn, the collector as Python sets it, or, with `tuned_baseline`,
    tuned as ours is."""
    import tempfile

    import uvicorn

    os.sched_setaffinity(0, {cpu})
    if which == "ours":
        from destinations.server.app import serve as serve_destinations

        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "destinations.toml"
            config.write_text(f'[outbox]\npath = "{Path(tmp) / "outbox.sqlite3"}"\n', encoding="utf-8")
            serve_destinations(str(config), host="127.0.0.1", port=port, deliver=False, log_level="warning")
        return
    if tuned_baseline:
        from destinations.delivery.worker import tune_collector

        tune_collector()
    uvicorn.run(baseline_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off")


# --- the client ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(conn: http.client.HTTPConnection) -> bytes:
    conn.request("POST", PATH, BODY, {"Content-Type": "application/json; charset=utf-8"})
    answer = conn.getresponse()
    data = answer.read()
    if answer.status != 200 or answer.getheader("apiVersion") != "2":
        raise RuntimeError(f"answer {answer.status}: {data[:200]!r}")
    return data


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process: a figure a busy neighbour on the core does not skew."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    which: str, seconds: float, clients: int, server_cpu: int, *, tuned_baseline: bool = False
) -> tuple[float, float]:
    """(events per second, events per CPU-second of the server) over `seconds` after a warm-up."""
    port = free_port()
    cmd = [sys.executable, __file__, "--serve", which, "--port", str(port), "--cpu", str(server_cpu)]
    cmd += ["--tuned-baseline"] if tuned_baseline else []
    server = subprocess.Popen(cmd)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                check = json.loads(post(conn))
                conn.close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        if len(check) != EVENTS_PER_REQUEST or {item["statusCode"] for item in check} != {200}:
            raise RuntimeError(f"{which}: unexpected answer {check[:1]}")

        done = 0
        lock = threading.Lock()
        start_at = time.monotonic() + 1.0  # a second of warm-up
        stop_at = start_at + seconds

        def client() -> None:
            nonlocal done
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            count = 0
            while time.monotonic() < stop_at:
                post(conn)
                if start_at <= time.monotonic() <= stop_at:
                    count += 1
            conn.close()
            with lock:
                done += count

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(max(0.0, start_at - time.monotonic()))
        cpu_start = cpu_seconds(server.pid)
        time.sleep(max(0.0, stop_at - time.monotonic()))
        cpu_used = cpu_seconds(server.pid) - cpu_start
        for t in threads:
            t.join()
        events = done * EVENTS_PER_REQUEST
        return events / seconds, events / cpu_used if cpu_used else 0.0
    finally:
        server.terminate()
        server.wait(10)


def profile() -> None:
    """Our route's work for one body, in process, under cProfile (no HTTP)."""
    import asyncio

    from starlette.requests import Request

    from destinations.server.rudder import destination_transform

    async def call() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            sent = True
            return {"type": "http.request", "body": BODY, "more_body": False}

        scope = {"type": "http", "method": "POST", "path": PATH, "headers": [], "query_string": b""}
        response = await destination_transform("segmentify", Request(scope, receive))
        assert response.status_code == 200

    loop = asyncio.new_event_loop()
    loop.run_until_complete(call())  # warm the destination cache
    n = 50
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for _ in range(n):
        loop.run_until_complete(call())
    profiler.disable()
    print(f"in process, under the profiler: {n * EVENTS_PER_REQUEST / (time.perf_counter() - started):,.0f} events/s")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement time per server")
    parser.add_argument("--clients", type=int, default=4, help="requests in flight")
    parser.add_argument("--rounds", type=int, default=1, help="alternate the two servers this many times")
    parser.add_argument("--profile", action="store_true", help="profile our route in process instead")
    parser.add_argument(
        "--tuned-baseline",
        action="store_true",
        help="run the baseline with the cycle collector tuned as `destinations serve` tunes its own",
    )
    parser.add_argument("--serve", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.cpu, tuned_baseline=args.tuned_baseline)
        return
    if args.profile:
        profile()
        return

    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (cpus[0], cpus[0])
    os.sched_setaffinity(0, {client_cpu})
    print(f"{EVENTS_PER_REQUEST} events a request ({len(BODY) / 1024:.0f} KiB), {args.clients} in flight, "
          f"server on CPU {server_cpu}, client on CPU {client_cpu}, {args.seconds:g} s each")  # fmt: skip
    baselines, ours = [], []
    for _ in range(args.rounds):  # alternated, so a neighbour's load hits both sides alike
        baselines.append(
            measure("baseline", args.seconds, args.clients, server_cpu, tuned_baseline=args.tuned_baseline)
        )
        ours.append(measure("ours", args.seconds, args.clients, server_cpu))
    if args.rounds > 1:
        shown = ", ".join(f"{b[0]:,.0f}/{o[0]:,.0f}" for b, o in zip(baselines, ours, strict=True))
        print(f"rounds (baseline/ours events/s): {shown}; best of each below")
    base_wall, base_cpu = max(b[0] for b in baselines), max(b[1] for b in baselines)
    our_wall, our_cpu = max(o[0] for o in ours), max(o[1] for o in ours)
    print(f"{'':<72}events/s   events per server CPU-second")
    collector = "tuned collector" if args.tuned_baseline else "Python's collector"
    label = f"baseline (Starlette + orjson, hand-written dict, {collector}):"
    print(f"{label:<70}{base_wall:10,.0f}   {base_cpu:10,.0f}")
    label = f"POST {PATH} (destinations serve):"
    print(f"{label:<70}{our_wall:10,.0f}   {our_cpu:10,.0f}")
    print(f"ratio: {our_wall / base_wall:.2f} (per CPU-second: {our_cpu / base_cpu:.2f}); target: 0.60 or better")


if __name__ == "__main__":
    main()
