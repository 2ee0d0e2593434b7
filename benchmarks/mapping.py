"""Events per second from the inbox to the outbox with all four destinations, beside a baseline.

The stage this measures is the product's sustained throughput: the server commits raw events to the inbox
and a mapping process turns them into stored vendor requests. Ours: `map_inbox` in rounds of 500 over an
inbox of N events (an "Order Completed" with two products, a "Product Viewed" and an identify, in turn,
from many users), Segmentify, D·engage, eSputnik and Wigzo configured. The baseline, measured in the same
run on the same core: the same inbox rows read in rounds of 500, parsed with orjson, mapped by the
hand-written dicts of benchmarks/transform.py (no validation), serialised with orjson and written in one
SQLite transaction a round into a table of its own (a row per request, a unique key for dedupe), beside the
removal of those inbox rows.

Prints each run's events per second, p50/p99 milliseconds per round of 500, and the ratio; then the
range over the runs. Run: python benchmarks/mapping.py [--events N] [--runs R]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from transform import BASELINES, MESSAGES, SETTINGS  # the hand-written mappings

from destinations.config import parse_config
from destinations.delivery import Outbox
from destinations.delivery.intake import map_inbox
from destinations.delivery.outbox import Holder
from destinations.delivery.worker import tune_collector

ROUND = 500


def inbox_events(n: int, users: int = 2000) -> list[dict[str, Any]]:
    kinds = list(MESSAGES.values())
    out = []
    for i in range(n):
        m = json.loads(json.dumps(kinds[i % len(kinds)]))
        m["messageId"] = f"bench-{i}"
        m["userId"] = f"user-{i % users}"
        out.append(m)
    return out


def fill(path: Path, events: list[dict[str, Any]], debug_keep: int = 0) -> Outbox:
    outbox = Outbox(path, debug_keep=debug_keep)
    for i in range(0, len(events), 5000):
        outbox.accept_events(events[i : i + 5000], source="tracking")
    return outbox


def ours(path: Path, events: list[dict[str, Any]], debug_keep: int = 0) -> tuple[float, list[float]]:
    """`debug_keep`: the live debugger keeps that many messages (0: off), as `[debugger] keep` sets it."""
    destinations = {name: {"type": name, **settings} for name, settings in SETTINGS.items()}
    config = parse_config({"outbox": {"path": str(path)}, "destinations": destinations}, environ={})
    outbox = fill(path, events, debug_keep)
    holder = Holder.new()
    rounds: list[float] = []
    started = time.perf_counter()
    while True:
        t = time.perf_counter()
        report = map_inbox(outbox, config.destinations, holder, limit=ROUND)
        if not report.messages:
            break
        rounds.append(time.perf_counter() - t)
        assert not report.invalid, report
        assert not report.dead_events, report
    elapsed = time.perf_counter() - started
    stored = outbox.pending_count()
    assert stored == 4 * len(events), stored
    outbox.close()
    return len(events) / elapsed, rounds


# The baseline's own table: a request a row, deduped by its unique key, and nothing else (so that what the
# outbox's schema adds or drops never moves the baseline).
BASELINE_TABLE = """CREATE TABLE baseline_requests (
    id INTEGER PRIMARY KEY, destination TEXT NOT NULL, message_id TEXT NOT NULL, idx INTEGER NOT NULL,
    user_key TEXT NOT NULL, url TEXT NOT NULL, body TEXT NOT NULL, size INTEGER NOT NULL, created_at REAL NOT NULL,
    UNIQUE (destination, message_id, idx))"""


def baseline(path: Path, events: list[dict[str, Any]]) -> tuple[float, list[float]]:
    outbox = fill(path, events)  # the same inbox rows
    outbox.close()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(BASELINE_TABLE)
    insert = (
        "INSERT OR IGNORE INTO baseline_requests (destination, message_id, idx, user_key, url, body, size, created_at)"
        " VALUES (?, ?, 0, ?, ?, ?, ?, ?)"
    )
    rounds: list[float] = []
    started = time.perf_counter()
    while True:
        t = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute("SELECT id, body FROM inbox ORDER BY id LIMIT ?", (ROUND,)).fetchall()
        if not rows:
            db.execute("COMMIT")
            break
        now = time.time()
        out = []
        for _, body in rows:
            m = orjson.loads(body)
            for name, mapping in BASELINES.items():
                (request,) = mapping(m)
                data = orjson.dumps(request["json"]).decode()
                out.append((name, m["messageId"], m["userId"], request["url"], data, len(data), now))
        db.executemany(insert, out)
        db.execute("DELETE FROM inbox WHERE id BETWEEN ? AND ?", (rows[0][0], rows[-1][0]))
        db.execute("COMMIT")
        rounds.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - started
    db.close()
    return len(events) / elapsed, rounds


def percentile(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


def debugger_on_and_off(events: list[dict[str, Any]], runs: int) -> None:
    """Mapping with the debugger recording every message (keep 1000) and without, alternately, same run."""
    print(f"{len(events)} events, 4 destinations: the live debugger on (keep 1000) and off, alternately")
    ratios = []
    for run in range(1, runs + 1):
        with tempfile.TemporaryDirectory() as tmp:
            off, _ = ours(Path(tmp) / "off.sqlite3", events)
            on, _ = ours(Path(tmp) / "on.sqlite3", events, debug_keep=1000)
        ratios.append(on / off)
        print(f"run {run}: off {off:,.0f} ev/s, on {on:,.0f} ev/s, on/off {on / off:.2f}")
    print(f"on/off {min(ratios):.2f}-{max(ratios):.2f} (the goal: within 10%, 0.90 or more)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--debugger", action="store_true", help="compare the live debugger on (keep 1000) and off")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as a mapping process has
    events = inbox_events(args.events)
    tune_collector()  # as a delivery process does at start (Delivery.start); the baseline runs under it too
    if args.debugger:
        debugger_on_and_off(events, args.runs)
        return
    print(f"{args.events} events, 4 destinations, rounds of {ROUND}, one core")
    print(f"{'run':<4} {'ours ev/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'baseline ev/s':>14} {'p50 ms':>7} {'p99 ms':>7}"
          f" {'ratio':>6}")  # fmt: skip
    figures = []
    for run in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory() as tmp:
            rate, rounds = ours(Path(tmp) / "ours.sqlite3", events)
            base, base_rounds = baseline(Path(tmp) / "baseline.sqlite3", events)
        figures.append((rate, base, rate / base))
        print(f"{run:<4} {rate:>10,.0f} {percentile(rounds, 0.5):>7.1f} {percentile(rounds, 0.99):>7.1f}"
              f" {base:>14,.0f} {percentile(base_rounds, 0.5):>7.1f} {percentile(base_rounds, 0.99):>7.1f}"
              f" {rate / base:>6.2f}")  # fmt: skip
    rates, bases, ratios = zip(*figures, strict=True)
    print(
        f"ours {min(rates):,.0f}-{max(rates):,.0f} ev/s (median {statistics.median(rates):,.0f}); baseline"
        f" {min(bases):,.0f}-{max(bases):,.0f}; ratio {min(ratios):.2f}-{max(ratios):.2f}"
        "  (targets: ratio 0.50 or better, 10,000 ev/s or more)"
    )


if __name__ == "__main__":
    main()
