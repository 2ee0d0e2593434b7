"""A chaos run: events through the tracking API while the vendors fail and the processes are SIGKILLed.

Used by tests/test_chaos.py (bounded, in the suite) and benchmarks/chaos.py (larger, with figures).

- Two vendor stand-ins (Segmentify and D·engage instances) on loopback fail a share of calls: 500, 503,
  429 (with and without Retry-After), an answer slower than the read timeout, a dropped connection. Each
  records every arrival with the answer it chose, so a late 200 counts as received.
- `destinations serve` (and optionally `destinations worker` processes: more mappers and deliverers on the
  same outbox) run as real processes. The client posts `/v1/batch` as analytics-python does (Basic auth with
  the write key, 100 events a batch, resent until answered 200); `serve` is SIGKILLed and restarted at
  evenly spaced points of the stream.
- The verdict: every event answered 200 must reach each vendor (lost = 0); each user's events reach each
  vendor in the order sent (order violations = 0); every duplicate is explained by an earlier copy whose 200
  came after the read timeout, or that was in flight when a process was killed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from destinations.delivery import Outbox
from destinations.sink import Answer, Received, RecordingServer

WRITE_KEY = "chaos-write-key-41d7"
VENDOR_KEYS = {"segmentify": "chaos-segmentify-9c2e", "dengage": "chaos-dengage-3b8a"}
CONNECT_TIMEOUT, READ_TIMEOUT = 0.5, 0.5
LATE = 1.0  # a slow answer: after the read timeout


@dataclass
class Plan:
    events: int = 2000
    users: int = 20
    kills: int = 2
    workers: int = 0  # `destinations worker` processes beside serve
    fail_rate: float = 0.3
    poison: bool = False  # an inbox row that is not JSON, as a damaged or older file might hold
    batch: int = 100
    clients: int = 4  # senders at once, each with its own users
    drain_timeout: float = 40.0
    send_timeout: float = 60.0
    seed: int = 7


@dataclass
class Arrival:
    at: float
    ids: list[str]  # productIds in the request, in order
    delivered: bool  # the vendor took it (2xx, answered or late)
    late: bool


@dataclass
class Result:
    accepted: int = 0
    delivered: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    unexplained: dict[str, int] = field(default_factory=dict)
    order_violations: dict[str, int] = field(default_factory=dict)
    dead_requests: int = 0
    dead_events: int = 0
    kills: list[float] = field(default_factory=list)
    seconds: float = 0.0
    vendor_calls: dict[str, Counter[str]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        out = [f"accepted {self.accepted} events in {self.seconds:.1f} s, {len(self.kills)} kills"]
        out.extend(
            f"{name:<11} delivered {self.delivered[name]:>6}  lost {self.lost[name]}  duplicates"
            f" {self.duplicates[name]} ({self.unexplained[name]} unexplained)  order violations"
            f" {self.order_violations[name]}  vendor answers {dict(self.vendor_calls[name])}"
            for name in sorted(self.delivered)
        )
        out.append(f"dead requests {self.dead_requests}  dead inbox events {self.dead_events}")
        return out


class Vendor:
    """A stand-in that fails `fail_rate` of calls in the ways vendors do, and records every arrival."""

    def __init__(self, fail_rate: float, seed: int) -> None:
        self.rng = random.Random(seed)
        self.fail_rate = fail_rate
        self.arrivals: list[Arrival] = []
        self.answers: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.server = RecordingServer(self.script)

    def script(self, received: Received) -> Answer:
        ids = [item.get("productId") for item in received.json] if received.body.startswith(b"[") else []
        with self.lock:
            roll = self.rng.random()
            if roll >= self.fail_rate:
                kind, answer = "200", Answer()
            else:
                kind = self.rng.choice(["500", "503", "429", "429 Retry-After", "late 200", "drop"])
                answer = {
                    "500": Answer(500),
                    "503": Answer(503),
                    "429": Answer(429),
                    "429 Retry-After": Answer(429, headers={"Retry-After": "0.2"}),
                    "late 200": Answer(delay=LATE),
                    "drop": Answer(drop=True),
                }[kind]
            self.answers[kind] += 1
            self.arrivals.append(Arrival(received.at, [str(i) for i in ids], kind in ("200", "late 200"),
                                         kind == "late 200"))  # fmt: skip
        return answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(workdir: Path, vendors: dict[str, Vendor], port: int) -> Path:
    lines = [
        "[server]", 'host = "127.0.0.1"', f"port = {port}", f'write_keys = ["{WRITE_KEY}"]',
        "[outbox]", f'path = "{workdir / "outbox.sqlite3"}"', "batch_size = 50", "concurrency = 4",
        f"connect_timeout = {CONNECT_TIMEOUT}", f"read_timeout = {READ_TIMEOUT}", "lease = 2",
        "backoff_base = 0.05", "backoff_cap = 0.5", "max_retry_after = 1", 'retry_window = "1h"',
    ]  # fmt: skip
    for name, vendor in vendors.items():
        lines += [f"[destinations.{name}]", f'type = "{name}"', f'apiKey = "{VENDOR_KEYS[name]}"',
                  f'dataCenterUrl = "{vendor.server.url}"']  # fmt: skip
    path = workdir / "destinations.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def start(args: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with (workdir / "processes.log").open("ab") as log:  # the child keeps its own handle
        return subprocess.Popen([sys.executable, "-m", "destinations", *args], stdout=log, stderr=log, env=env)


def wait_up(base: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"serve exited with {process.returncode}; see processes.log")
        try:
            if requests.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError("serve did not come up")


def events(plan: Plan) -> list[dict[str, Any]]:
    out = []
    seq: Counter[str] = Counter()
    for n in range(plan.events):
        user = f"user{n % plan.users:03d}"
        seq[user] += 1
        product = f"{user}:{seq[user]:06d}"
        out.append({"type": "track", "event": "Product Added", "messageId": f"chaos-{n:06d}", "userId": user,
                    "context": {"sessionId": f"s-{user}"},
                    "properties": {"product_id": product, "name": "Chaos", "price": 1}})  # fmt: skip
    return out


def post_until_taken(base: str, batch: list[dict[str, Any]], deadline: float) -> bool:
    """As analytics-python does: resend the same batch until it is answered 200 (False: not by `deadline`)."""
    while time.time() < deadline:
        try:
            res = requests.post(f"{base}/v1/batch", json={"batch": batch}, auth=(WRITE_KEY, ""), timeout=10)
            if res.status_code == 200:
                return True
            if res.status_code < 500 and res.status_code != 429:
                raise RuntimeError(f"the server refused a batch: {res.status_code} {res.text[:200]}")
        except requests.RequestException:
            pass
        time.sleep(0.05)
    return False


def run(plan: Plan, workdir: Path) -> Result:
    result = Result()
    started = time.time()
    vendors = {name: Vendor(plan.fail_rate, plan.seed + i) for i, name in enumerate(VENDOR_KEYS)}
    for vendor in vendors.values():
        vendor.server.start()
    port = free_port()
    config = write_config(workdir, vendors, port)
    base = f"http://127.0.0.1:{port}"
    serve = start(["serve", "--config", str(config)], workdir)
    workers = [start(["worker", "--config", str(config)], workdir) for _ in range(plan.workers)]
    try:
        wait_up(base, serve)
        if plan.poison:
            Outbox(workdir / "outbox.sqlite3")  # the schema, before the raw insert
            with contextlib.closing(sqlite3.connect(workdir / "outbox.sqlite3")) as db, db:
                db.execute('INSERT INTO inbox (body, received_at) VALUES (\'{"type": "track", \', ?)', (time.time(),))
        stream = events(plan)
        # Several clients at once, each with its own users (so each user's order is the order sent), as a fleet
        # of app servers would; the process is killed at evenly spaced counts of events taken.
        lanes = [[e for e in stream if int(e["userId"][4:]) % plan.clients == k] for k in range(plan.clients)]
        kill_at = [plan.events * (k + 1) // (plan.kills + 1) for k in range(plan.kills)]
        taken = Counter[str]()
        lock = threading.Lock()

        deadline = time.time() + plan.send_timeout

        def client(lane: list[dict[str, Any]]) -> None:
            for i in range(0, len(lane), plan.batch):
                if not post_until_taken(base, lane[i : i + plan.batch], deadline):
                    return  # the verdict then shows fewer accepted than sent
                with lock:
                    taken["events"] += len(lane[i : i + plan.batch])

        threads = [threading.Thread(target=client, args=(lane,), daemon=True) for lane in lanes]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            if kill_at and taken["events"] >= kill_at[0]:
                kill_at.pop(0)
                serve.send_signal(signal.SIGKILL)
                serve.wait()
                result.kills.append(time.time())
                # The clients keep sending meanwhile, as real ones would: their batches wait for the new process.
                serve = start(["serve", "--config", str(config)], workdir)
                wait_up(base, serve)
            time.sleep(0.005)
        result.accepted = taken["events"]
        outbox = Outbox(workdir / "outbox.sqlite3")
        deadline = time.time() + plan.drain_timeout
        while outbox.pending_count() and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(LATE + 0.2)  # late answers land
        result.dead_requests = sum(s["dead"] for s in outbox.stats().values())
        result.dead_events = outbox.dead_event_count()
        outbox.close()
        result.seconds = time.time() - started
    finally:
        for process in [serve, *workers]:
            process.send_signal(signal.SIGTERM)
        for process in [serve, *workers]:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for vendor in vendors.values():
            vendor.server.stop()
    sent = {str(e["properties"]["product_id"]) for e in stream}
    window = CONNECT_TIMEOUT + READ_TIMEOUT + 2.5  # a call in flight when its process was killed
    for name, vendor in vendors.items():
        first_copy: dict[str, Arrival] = {}
        order: list[str] = []
        duplicates = unexplained = 0
        for arrival in sorted(vendor.arrivals, key=lambda a: a.at):
            if not arrival.delivered:
                continue
            for pid in arrival.ids:
                earlier = first_copy.get(pid)
                if earlier is None:
                    first_copy[pid] = arrival
                    order.append(pid)
                    continue
                duplicates += 1
                copies = [a for a in vendor.arrivals if a.delivered and pid in a.ids and a.at < arrival.at]
                if not any(a.late or any(0 <= k - a.at <= window for k in result.kills) for a in copies):
                    unexplained += 1
        last: dict[str, str] = {}
        violations = 0
        for pid in order:
            user = pid.split(":")[0]
            if pid < last.get(user, ""):
                violations += 1
            last[user] = max(pid, last.get(user, ""))
        result.delivered[name] = len(first_copy)
        result.lost[name] = len(sent - set(first_copy))
        result.duplicates[name] = duplicates
        result.unexplained[name] = unexplained
        result.order_violations[name] = violations
        result.vendor_calls[name] = vendor.answers
    return result
