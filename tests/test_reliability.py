"""The outbox under faults: a bad event, a dead mapper, a user stuck in retries, several mappers, a lost
lease and a fixed URL. Real SQLite files, real mapper threads and a real local vendor."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import SecretStr

from destinations.base import Credential, Destination, HttpRequest, Mapped, SettingsModel
from destinations.cli import main
from destinations.config import Config, parse_config
from destinations.delivery import Delivery, Outbox, route
from destinations.delivery.intake import map_inbox
from destinations.delivery.outbox import MAX_MAPPING_ATTEMPTS, Holder, MessageRequests, this_host
from destinations.delivery.worker import Mapper
from destinations.errors import Filtered
from destinations.sink import Answer, RecordingServer

SECRET = "sk-reliability-5d1c0e"


class PluginSettings(SettingsModel):
    baseUrl: str
    token: SecretStr | None = None


def config_for(tmp_path: Path, url: str, **outbox: Any) -> Config:
    table = {"path": str(tmp_path / "outbox.sqlite3"), "backoff_base": 0.01, "backoff_cap": 0.05,
             "retry_window": 0, "min_attempts": 2, "connect_timeout": 1, "read_timeout": 1, **outbox}  # fmt: skip
    shop = {"type": "segmentify", "apiKey": SECRET, "dataCenterUrl": url}
    return parse_config({"outbox": table, "destinations": {"shop": shop}}, environ={})


def event(n: int, user: str, **more: Any) -> dict[str, Any]:
    properties = {"product_id": f"P{n:05d}", "name": f"Product {n}", "price": 1, **more}
    return {"type": "track", "event": "Product Added", "messageId": f"{user}-{n:05d}", "userId": user,
            "context": {"sessionId": "s1"}, "properties": properties}  # fmt: skip


def gone_pid() -> int:
    """The pid of a process of this host that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def drain(config: Config, instances: dict[str, Destination] | None = None, timeout: float = 30.0) -> None:
    outbox = Outbox(config.outbox.path)
    delivery = Delivery(str(config.outbox.path), instances or config.destinations, config.outbox)
    delivery.start()
    try:
        deadline = time.time() + timeout
        while outbox.pending_count() and time.time() < deadline:
            delivery.notify()
            time.sleep(0.02)
        assert outbox.pending_count() == 0, "the outbox did not drain"
    finally:
        delivery.stop()


def vendor_order(sink: RecordingServer) -> dict[str, list[str]]:
    """productIds per user in the order the vendor received them (Segmentify: `userId` in each event)."""
    out: dict[str, list[str]] = {}
    for received in sink.delivered():
        for item in received.json if received.path.startswith("/add/") else []:
            out.setdefault(item["userId"], []).append(item["productId"])
    return out


class PathPlugin(Destination):
    """A plugin that puts a property in its URL path: a lone surrogate there cannot be written to SQLite."""

    name = "path-plugin"
    display_name = "Path Plugin"
    Settings = PluginSettings
    events: ClassVar = {"Product Added": lambda call: Mapped("/items/" + call.properties.get("slug", "-"), {})}


def test_an_event_that_cannot_be_stored_is_set_aside_and_the_round_goes_on(tmp_path: Path, capsys: Any) -> None:
    """Fault 1: one event the mapper could not write (a lone surrogate in a user id did it before ids were
    checked at the door; here a plugin's URL) failed the whole round, again and again, with every event
    claimed beside it, and `outbox drain` never ended."""
    with RecordingServer() as sink:
        config = config_for(tmp_path, sink.url)
        instances = {"shop": config.destinations["shop"], "plug": PathPlugin({"baseUrl": sink.url})}
        outbox = Outbox(config.outbox.path)
        outbox.accept_events([event(1, "a", slug="ok"), event(0, "c", slug="x\ud800"), event(2, "b")])
        report = map_inbox(outbox, instances, Holder.new())
        assert report.dead_events == 1
        assert outbox.inbox_count() == 0
        (dead,) = outbox.dead_events()
        assert dead["message_id"] == "c-00000"
        assert dead["reason"].startswith("plug request 0: its url holds text no UTF-8 can carry"), dead["reason"]
        drain(config, instances)
        assert sorted(m for ids in vendor_order(sink).values() for m in ids) == ["P00001", "P00002"]
        assert sorted(r.path for r in sink.delivered() if r.path.startswith("/items")) == ["/items/-", "/items/ok"]

        config_file = tmp_path / "destinations.toml"
        config_file.write_text(
            f'[outbox]\npath = "{config.outbox.path}"\n[destinations.shop]\ntype = "segmentify"\n'
            f'apiKey = "{SECRET}"\ndataCenterUrl = "{sink.url}"\n'
        )
        capsys.readouterr()
        assert main(["outbox", "dead", "--config", str(config_file)]) == 0
        listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert listed == [{"inboxEvent": dead["id"], "messageId": "c-00000", "reason": dead["reason"],
                           "received": listed[0]["received"], "died": listed[0]["died"]}]  # fmt: skip
        assert main(["outbox", "stats", "--config", str(config_file)]) == 0
        assert "1 accepted event(s) set aside" in capsys.readouterr().out


def test_an_event_whose_process_dies_mapping_it_is_retried_alone_then_set_aside(tmp_path: Path) -> None:
    """Fault 1, the hard way: a process that dies in the middle of a round takes every event of that round
    with it; those events are then mapped one at a time, and one that dies every time is set aside."""
    config = config_for(tmp_path, "http://127.0.0.1:9")
    outbox = Outbox(config.outbox.path)
    outbox.accept_events([event(n, "a") for n in range(3)])
    dead_holder = Holder("crashed", this_host(), gone_pid())
    assert len(outbox.claim_inbox(10, dead_holder, lease=60)) == 3  # ... and that process is gone
    for _ in range(MAX_MAPPING_ATTEMPTS - 1):
        again = Holder("crashed-again", this_host(), gone_pid())
        assert [rid for rid, *_ in outbox.claim_inbox(10, again, lease=60)] == [1]  # alone
    survivor = Holder.new()
    claimed = outbox.claim_inbox(10, survivor, lease=60)
    assert [rid for rid, *_ in claimed] == [2]  # the first was set aside; the next is still mapped alone
    (dead,) = outbox.dead_events()
    assert dead["id"] == 1
    assert f"stopped each of {MAX_MAPPING_ATTEMPTS} times" in dead["reason"]
    # What `outbox replay --event` names for an id it leaves: dead, waiting to be mapped, or gone from the inbox.
    assert outbox.inbox_states([1, 2, 3, 9]) == {1: True, 2: False, 3: False}
    assert outbox.replay_events() == 1
    assert outbox.inbox_count() == 3


def test_a_dead_mappers_lease_is_taken_at_once_and_order_kept(tmp_path: Path) -> None:
    """Fault 2: events a killed mapper had claimed were leased for a minute while that user's later events were
    mapped and delivered first. Now the lease of a process gone from this host is taken at once, and the
    oldest events are always mapped first."""
    with RecordingServer() as sink:
        config = config_for(tmp_path, sink.url)
        outbox = Outbox(config.outbox.path)
        outbox.accept_events([event(1, "a"), event(2, "a")])
        killed = Holder("killed", this_host(), gone_pid())
        assert len(outbox.claim_inbox(500, killed, lease=600)) == 2
        outbox.accept_events([event(3, "a")])
        started = time.monotonic()
        drain(config)
        assert time.monotonic() - started < 10  # not the 600 s lease
        assert vendor_order(sink) == {"a": ["P00001", "P00002", "P00003"]}


def test_one_users_retries_do_not_hold_back_another_user(tmp_path: Path) -> None:
    """Fault 3: claims looked only at the oldest few hundred rows, all of one user waiting behind a retry."""
    config = config_for(tmp_path, "http://127.0.0.1:9")
    outbox = Outbox(config.outbox.path)
    route([event(n, "busy") for n in range(1000)] + [event(0, "other")], config.destinations, outbox)
    now = time.time()
    (first,) = outbox.claim("shop", max_batches=1, batch_size=1, batch_bytes=10**6, lease=60, now=now)
    outbox.retry(first, "503", "", delay=3600, retry_window=86400, min_attempts=3, backoff_base=1,
                 backoff_cap=1, now=now)  # fmt: skip
    batches = outbox.claim("shop", max_batches=4, batch_size=10, batch_bytes=10**6, lease=60, now=now + 1)
    assert [[row.message_id for row in batch] for batch in batches] == [["other-00000"]]


class Stall(Destination):
    """Takes nothing; the first time it meets `stall_on`, its mapper stalls past the mapper lease."""

    name = "stall"
    display_name = "Stall"
    Settings = PluginSettings
    stall_on = "user0-00700"
    stalled = threading.Event()

    def handle_with_warnings(self, message: Any) -> Any:
        if getattr(message, "messageId", None) == self.stall_on and not self.stalled.is_set():
            self.stalled.set()
            time.sleep(1.0)
        raise Filtered("takes nothing")


def test_several_mappers_keep_each_users_order(tmp_path: Path, caplog: Any) -> None:
    """Fault 4: with two mapping processes, request ids followed commit order, not arrival order. Here two
    mappers with holders of their own (as two processes have) map one inbox; one stalls past its lease in
    the middle of a round, the other takes over, and the stalled one's round is not committed."""
    caplog.set_level(logging.INFO, logger="destinations.delivery")
    config = config_for(tmp_path, "http://127.0.0.1:9")
    outbox = Outbox(config.outbox.path)
    users = [f"user{u}" for u in range(10)]
    outbox.accept_events([event(n, users[n % 10]) for n in range(1500)])
    instances = {"shop": config.destinations["shop"], "stall": Stall({"baseUrl": "http://127.0.0.1:9"})}
    mappers = [Mapper(Outbox(config.outbox.path), instances, lambda names: None, lease=0.3) for _ in range(2)]
    for mapper in mappers:
        mapper.start()
    deadline = time.time() + 30
    while outbox.inbox_count() and time.time() < deadline:
        time.sleep(0.05)
    for mapper in mappers:
        mapper.stopping.set()
        mapper.join(5)
    assert Stall.stalled.is_set()
    assert "another process took the mapper lease" in caplog.text  # the stalled round was not committed
    rows = [(r["user_key"], r["message_id"]) for r in outbox.waiting()]
    assert len(rows) == 1500
    for user in users:
        ids = [mid for key, mid in rows if key == user]
        assert ids == sorted(ids), f"{user}'s requests are stored out of arrival order"


def test_a_round_that_fails_in_a_live_process_is_not_counted_as_a_death(tmp_path: Path) -> None:
    """Only a process that dies mapping an event counts against it: a round that fails here (the database
    refused the commit, say) gives its events back as they were, so they are not mapped one by one."""
    config = config_for(tmp_path, "http://127.0.0.1:9")
    outbox = Outbox(config.outbox.path)
    outbox.accept_events([event(n, "a") for n in range(3)])
    holder = Holder.new()

    def refuse(*_: Any, **__: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    real = outbox.enqueue
    outbox.enqueue = refuse  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        map_inbox(outbox, config.destinations, holder)
    outbox.enqueue = real  # type: ignore[method-assign]
    assert [row[0] for row in outbox._db().execute("SELECT attempts FROM inbox")] == [0, 0, 0]
    assert len(outbox.claim_inbox(10, holder, lease=60)) == 3  # still one round


def test_a_committed_round_leaves_no_claim_to_count(tmp_path: Path) -> None:
    """A round records its claim as one range, not on each event; committing it (or giving it back) removes the
    range, so the next claim counts nothing, while a range left by a process that died counts once."""
    config = config_for(tmp_path, "http://127.0.0.1:9")
    outbox = Outbox(config.outbox.path)
    outbox.accept_events([event(n, "a") for n in range(3)])
    holder = Holder.new()
    claimed = outbox.claim_inbox(2, holder, lease=60)
    assert outbox._db().execute("SELECT first, last FROM inbox_claims").fetchall() == [(1, 2)]
    assert [row[0] for row in outbox._db().execute("SELECT attempts FROM inbox")] == [0, 0, 0]
    outbox.enqueue([MessageRequests([], rid) for rid, *_ in claimed], holder=holder)
    assert outbox._db().execute("SELECT COUNT(*) FROM inbox_claims").fetchone() == (0,)
    crashed = Holder("crashed", this_host(), gone_pid())
    assert len(outbox.claim_inbox(10, crashed, lease=60, now=time.time() + 120)) == 1  # after the lease
    outbox.accept_events([event(9, "b")])
    assert [rid for rid, *_ in outbox.claim_inbox(10, holder, lease=60)] == [3]  # counted once: mapped alone
    assert [row[0] for row in outbox._db().execute("SELECT attempts FROM inbox ORDER BY id")] == [1, 0]


def test_rows_that_are_not_messages_are_set_aside_with_a_reason(tmp_path: Path) -> None:
    config = config_for(tmp_path, "http://127.0.0.1:9")
    outbox = Outbox(config.outbox.path)
    with contextlib.closing(sqlite3.connect(config.outbox.path)) as db, db:
        db.executemany("INSERT INTO inbox (body, received_at) VALUES (?, 0)", [("[1, 2]",), ("{not json",)])
    outbox.accept_events([event(1, "a")])
    report = map_inbox(outbox, config.destinations, Holder.new())
    assert report.dead_events == 2
    assert sorted(e["reason"] for e in outbox.dead_events()) == [
        "it is not a JSON object",
        "it is not readable JSON (JSONDecodeError: Expecting property name enclosed in double quotes: line 1 column 2"
        " (char 1))",
    ]  # fmt: skip
    assert report.accepted["shop"] == 1
    assert outbox.replay_events([1]) == 1
    assert outbox.inbox_count() == 1


def test_an_outcome_is_recorded_only_under_its_own_lease(tmp_path: Path) -> None:
    """A worker whose lease ran out must not overwrite what the worker that claimed the row since records."""
    config = config_for(tmp_path, "http://127.0.0.1:9")
    outbox = Outbox(config.outbox.path)
    route([event(1, "a")], config.destinations, outbox)
    now = time.time()
    (late,) = outbox.claim("shop", max_batches=1, batch_size=1, batch_bytes=10**6, lease=1, now=now)
    (current,) = outbox.claim("shop", max_batches=1, batch_size=1, batch_bytes=10**6, lease=60, now=now + 2)
    assert outbox.dead(late, "400", "late answer") == 0
    assert outbox.delivered(current, "200") == 1
    assert list(outbox._db().execute("SELECT state, delivered, last_status FROM packs")) == [("done", 1, "200")]
    assert list(outbox._db().execute("SELECT * FROM requests")) == []  # the late "dead" made no row


def test_requests_keep_their_path_so_a_fixed_url_applies_on_replay(tmp_path: Path) -> None:
    """`outbox replay` after fixing a destination's URL sent to the old URL: the URL was stored whole."""
    wrong = config_for(tmp_path, "http://127.0.0.1:9")  # nothing listens there
    outbox = Outbox(wrong.outbox.path)
    route([event(1, "a")], wrong.destinations, outbox)
    assert [r["url"] for r in outbox.waiting()] == ["/add/events/v1.json"]
    drain(wrong)  # connection refused until the retry window (0 s here) closes: dead
    assert [row["last_status"] for row in outbox.dead_rows()] == ["connection error"]
    with RecordingServer(lambda _: Answer()) as sink:
        fixed = config_for(tmp_path, sink.url)
        assert outbox.replay("shop") == 1
        drain(fixed)
        assert [r.path for r in sink.delivered()] == ["/add/events/v1.json"]
        assert sink.delivered()[0].params["apiKey"] == SECRET


def test_credentials_go_only_under_the_instances_base_url(tmp_path: Path) -> None:
    """A plugin's request to another host, or one an earlier version stored whole for a base URL changed since,
    goes without the instance's credentials."""

    class Elsewhere(Destination):
        name = "elsewhere"
        display_name = "Elsewhere"
        Settings = PluginSettings
        credentials_declared = (Credential("token", header="X-Token"),)
        events: ClassVar = {"Product Added": lambda call: [
            Mapped("/own", {"n": 1}), HttpRequest("POST", f"{call.properties['other']}/collect", json={"n": 2})
        ]}  # fmt: skip

    with RecordingServer() as own, RecordingServer() as other:
        plugin = Elsewhere({"baseUrl": own.url, "token": "plug-secret-7c1e"})
        config = config_for(tmp_path, own.url)
        outbox = Outbox(config.outbox.path)
        route([event(1, "a", other=other.url)], {"plug": plugin}, outbox)
        assert sorted(r["url"] for r in outbox.waiting()) == [
            "/own", f"{other.url}/collect"
        ]  # fmt: skip
        drain(config, {"plug": plugin})
        assert [r.headers.get("X-Token") for r in own.received] == ["plug-secret-7c1e"]
        assert [r.headers.get("X-Token") for r in other.received] == [None]
