"""Delivery throughput: events per second from enqueue to vendor acknowledgement, beside a baseline.

For a batched destination (Segmentify) and an unbatched one (Wigzo), against a local sink running in
its own process: the outbox path (route -> SQLite outbox -> workers -> sender) and a baseline measured
in the same run, a plain loop of `requests` posts of the same payloads with the same concurrency and no
outbox. Then the enqueue rate (route + commit) and the peak memory of enqueueing 10k, 50k and 100k messages, each
in a fresh process: the memory must stay flat as the count grows, and the rate is printed beside a baseline run the
same way in a fresh process of its own: the same chunks of 500 mapped by a hand-written dict (no validation),
serialised with orjson and written in one SQLite transaction a chunk, a row per request with a unique key for
dedupe (benchmarks/mapping.py's baseline table).

Run: python benchmarks/delivery.py [--events N]
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import requests

from destinations.config import parse_config
from destinations.delivery import Delivery, Outbox, route
from destinations.delivery.intake import stored_forms
from destinations.delivery.outbox import MessageRequests
from destinations.delivery.sender import merge
from destinations.delivery.worker import tune_collector
from destinations.spec import json_text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mapping import BASELINE_TABLE  # the baseline's table: a request a row, a unique key for dedupe


def messages(n: int, users: int = 5000) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "event": "Product Viewed",
            "messageId": f"bench-{i}",
            "userId": f"user-{i % users}",
            "timestamp": "2026-11-20T10:00:00Z",
            "context": {"sessionId": f"s-{i % users}", "page": {"url": "https://www.exampleshop.com/p"}},
            "properties": {
                "product_id": f"P{i}",
                "name": "Trail Runner",
                "price": 349.99,
                "category": "Shoes",
                "url": "https://www.exampleshop.com/p",
                "image_url": "https://cdn.exampleshop.com/p.png",
            },
        }
        for i in range(n)
    ]


def sink_stats(url: str) -> dict[str, int]:
    return requests.get(f"{url}/_sink/stats", timeout=5).json()


def config_for(kind: str, url: str, path: Path, concurrency: int, batch_size: int) -> Any:
    settings = (
        {"type": "segmentify", "apiKey": "bench", "dataCenterUrl": url}
        if kind == "segmentify"
        else {"type": "wigzo", "orgToken": "bench", "baseUrl": url}
    )
    outbox = {"path": str(path), "concurrency": concurrency, "batch_size": batch_size}
    return parse_config({"outbox": outbox, "destinations": {kind: settings}}, environ={})


def through_outbox(kind: str, url: str, msgs: list[dict[str, Any]], concurrency: int, batch_size: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        config = config_for(kind, url, Path(tmp) / "outbox.sqlite3", concurrency, batch_size)
        dest = config.destinations[kind]
        # The same payloads as the baseline: mapped before the clock starts, with their JSON text as the mapping
        # stage hands them on (the baseline serialises before its clock too); enqueue is timed.
        items = []
        for m in msgs:
            reqs = dest.handle(m)
            items.append(
                MessageRequests([(kind, m["messageId"], m["userId"], reqs)], texts=[[json_text(r.json) for r in reqs]])
            )
        forms = stored_forms(config.destinations)
        start_events = sink_stats(url)["events"]
        outbox = Outbox(config.outbox.path)
        delivery = Delivery(str(config.outbox.path), config.destinations, config.outbox)
        delivery.start()  # as in a running server: workers deliver while the intake commits
        started = time.perf_counter()
        for i in range(0, len(items), 500):
            outbox.enqueue(items[i : i + 500], forms=forms)
            delivery.notify()
        while outbox.pending_count():
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        delivery.stop()
        got = sink_stats(url)["events"] - start_events
        assert got >= len(msgs), (got, len(msgs))
        return len(msgs) / elapsed


def baseline(kind: str, url: str, msgs: list[dict[str, Any]], concurrency: int, batch_size: int) -> float:
    """The same payloads posted by a plain thread pool: no outbox, no retries, no bookkeeping."""
    config = config_for(kind, url, Path(tempfile.gettempdir()) / "unused.sqlite3", concurrency, batch_size)
    dest = config.destinations[kind]
    reqs = [r for m in msgs for r in dest.handle(m)]
    if kind == "segmentify":
        reqs = [merge(reqs[i : i + batch_size]) for i in range(0, len(reqs), batch_size)]
    bodies = [(r.url, r.params, r.headers, json.dumps(r.json, separators=(",", ":")).encode()) for r in reqs]
    sessions: dict[int, requests.Session] = {}

    def post(item: tuple[str, dict[str, Any], dict[str, str], bytes]) -> None:
        import threading

        session = sessions.setdefault(threading.get_ident(), requests.Session())
        session.post(item[0], params=item[1], headers=item[2], data=item[3], timeout=(5, 30)).raise_for_status()

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(post, bodies))
    return len(msgs) / (time.perf_counter() - started)


def hand_written(m: dict[str, Any]) -> dict[str, Any]:
    """The Segmentify body of one of `messages`, written by hand for the enqueue baseline (no validation)."""
    p, c = m["properties"], m["context"]
    return {
        "name": "PRODUCT_VIEW", "userId": m["userId"], "sessionId": c["sessionId"], "device": "PC",
        "pageUrl": c["page"]["url"], "productId": p["product_id"], "title": p["name"], "url": p["url"],
        "image": p["image_url"], "category": p["category"], "price": p["price"],
    }  # fmt: skip


def enqueue_child(n: int, which: str) -> None:
    """In a fresh process: enqueue n messages for Segmentify, ours (`route`) or the baseline; print the rate and the
    peak RSS."""
    msgs_per_chunk = 500
    with tempfile.TemporaryDirectory() as tmp:
        config = config_for("segmentify", "http://127.0.0.1:9", Path(tmp) / "o.sqlite3", 4, 100)
        if which == "ours":
            outbox = Outbox(config.outbox.path)
        else:
            db = sqlite3.connect(config.outbox.path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(BASELINE_TABLE)
        insert = (
            "INSERT OR IGNORE INTO baseline_requests (destination, message_id, idx, user_key, url, body, size,"
            " created_at) VALUES ('segmentify', ?, 0, ?, ?, ?, ?, ?)"
        )
        url = f"{config.destinations['segmentify'].base_url}/add/events/v1.json"
        started = time.perf_counter()
        for i in range(0, n, msgs_per_chunk):
            # Built per chunk, as an intake would receive them: memory must not grow with n.
            chunk = messages(min(msgs_per_chunk, n - i))
            for j, m in enumerate(chunk):
                m["messageId"] = f"e-{i + j}"
            if which == "ours":
                route(chunk, config.destinations, outbox)
                continue
            now = time.time()
            rows = []
            for m in chunk:
                body = orjson.dumps([hand_written(m)]).decode()
                rows.append((m["messageId"], m["userId"], url, body, len(body), now))
            db.execute("BEGIN IMMEDIATE")
            db.executemany(insert, rows)
            db.execute("COMMIT")
        rate = n / (time.perf_counter() - started)
        if which == "ours":
            assert outbox.pending_count() == n
        else:
            assert db.execute("SELECT COUNT(*) FROM baseline_requests").fetchone()[0] == n
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "rate": rate, "peak_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="events per delivery measurement")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--enqueue-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--enqueue-which", choices=("ours", "baseline"), default="ours", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.enqueue_child:
        enqueue_child(args.enqueue_child, args.enqueue_which)
        return

    # As a delivery process does at start (`serve`, `worker`); the baseline, in this process too, runs under it.
    tune_collector()
    sink = subprocess.Popen([sys.executable, "-m", "destinations.sink"], stdout=subprocess.PIPE, text=True)
    try:
        url = sink.stdout.readline().strip()  # type: ignore[union-attr]
        print(f"sink {url} (own process); concurrency {args.concurrency}, batch size {args.batch_size}\n")
        print(f"{'destination':<12} {'events':>7} {'outbox ev/s':>12} {'baseline ev/s':>14} {'ratio':>6}")
        for kind, n in (("segmentify", args.events), ("wigzo", max(args.events // 5, 200))):
            msgs = messages(n)
            base = baseline(kind, url, msgs, args.concurrency, args.batch_size)
            ours = through_outbox(kind, url, msgs, args.concurrency, args.batch_size)
            print(f"{kind:<12} {n:>7} {ours:>12,.0f} {base:>14,.0f} {ours / base:>6.2f}   (target 0.50)")
    finally:
        sink.terminate()
        sink.wait()

    print("\nenqueue (route + commit, 500 messages a transaction), each size and each side in a fresh process:")
    print(f"  {'messages':>8} {'ours msg/s':>11} {'peak RSS':>9} {'baseline msg/s':>15} {'peak RSS':>9} {'ratio':>6}")
    for n in (10_000, 50_000, 100_000):
        result = {}
        for which in ("ours", "baseline"):
            out = subprocess.run(
                [sys.executable, __file__, "--enqueue-child", str(n), "--enqueue-which", which],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            result[which] = json.loads(out)
        ours, base = result["ours"], result["baseline"]
        print(f"  {n:>8} {ours['rate']:>11,.0f} {ours['peak_mb']:>6.0f} MB {base['rate']:>15,.0f}"
              f" {base['peak_mb']:>6.0f} MB {ours['rate'] / base['rate']:>6.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
