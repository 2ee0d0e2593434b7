"""Delivery end to end: outbox (a real SQLite file), workers, sender and a real local vendor server."""

from __future__ import annotations

import itertools
import json
import logging
import random
import sqlite3
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from disk import inflated, on_disk

from destinations.config import Config, parse_config
from destinations.delivery import Delivery, Outbox, route
from destinations.delivery.intake import stored_forms
from destinations.delivery.outbox import Holder, LeaseLost, MessageRequests, resolve_url
from destinations.delivery.worker import Counters, InstanceWorker
from destinations.sink import Answer, Received, RecordingServer, sequence

SECRET = "sk-delivery-7e3f9a1b2c4d"


def make_config(tmp_path: Path, url: str, kind: str = "segmentify", **outbox: Any) -> Config:
    settings: dict[str, Any] = {"type": kind}
    if kind in ("segmentify", "dengage"):
        settings |= {"apiKey": SECRET, "dataCenterUrl": url}
    elif kind == "wigzo":
        settings |= {"orgToken": SECRET, "baseUrl": url}
    else:
        settings |= {"apiKey": SECRET, "baseUrl": url}
    table = {
        "path": str(tmp_path / "outbox.sqlite3"),
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "retry_window": 0,
        "min_attempts": 3,
        "connect_timeout": 1,
        "read_timeout": 0.5,
        "concurrency": 2,
        **outbox,
    }
    return parse_config({"outbox": table, "destinations": {"shop": settings}}, environ={})


def message(n: int, user: str = "u1", **props: Any) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Product Added",
        "messageId": f"{user}-m{n}",
        "userId": user,
        "context": {"sessionId": f"s-{user}"},
        "properties": {"product_id": f"P{n}", "price": 10, **props},
    }


def deliver(config: Config, messages: list[dict[str, Any]], timeout: float = 30.0) -> Delivery:
    outbox = Outbox(config.outbox.path)
    route(messages, config.destinations, outbox)
    delivery = Delivery(str(config.outbox.path), config.destinations, config.outbox)
    delivery.start()
    deadline = time.time() + timeout
    try:
        while outbox.pending_count() and time.time() < deadline:
            time.sleep(0.02)
        assert outbox.pending_count() == 0, "the outbox did not drain"
    finally:
        delivery.stop()
    return delivery


def states(config: Config) -> list[tuple[str, int, str | None]]:
    """(state, attempts, last answer) of each stored request: the rows, and those delivered from a pack at once."""
    outbox = Outbox(config.outbox.path)
    db = outbox._db()
    packed = db.execute("SELECT delivered, last_status FROM packs WHERE state = 'done' ORDER BY id").fetchall()
    rows = list(db.execute("SELECT state, attempts, last_status FROM requests ORDER BY id"))
    return [("delivered", 1, status) for n, status in packed for _ in range(n)] + rows


def body_error(code: str) -> Answer:
    return Answer(200, {"timestamp": "", "responses": [], "statusCode": code})


@pytest.mark.parametrize(
    ("answers", "state", "attempts", "status"),
    [
        ([], "delivered", 1, "200"),
        ([Answer(500), Answer(502)], "delivered", 3, "200"),
        ([Answer(503)] * 5, "dead", 3, "503"),
        ([Answer(408), Answer(423)], "delivered", 3, "200"),
        ([Answer(501)], "dead", 1, "501"),
        ([Answer(400)], "dead", 1, "400"),
        ([Answer(404)], "dead", 1, "404"),
        ([Answer(401)], "dead", 1, "401"),
        ([body_error("BAD_INPUT")], "dead", 1, "200 BAD_INPUT"),
        ([body_error("NO_SESSIONID")], "dead", 1, "200 NO_SESSIONID"),
        ([body_error("NO_ACCOUNT")], "dead", 1, "200 NO_ACCOUNT"),
        ([body_error("NO_DOMAIN_APIKEY_MATCH")], "dead", 1, "200 NO_DOMAIN_APIKEY_MATCH"),
        ([Answer(delay=1.5)], "delivered", 2, "200"),  # past the 0.5 s read timeout, then answered
        ([Answer(drop=True)], "delivered", 2, "200"),
    ],
)
def test_each_response_class(
    tmp_path: Path, answers: list[Answer], state: str, attempts: int, status: str, caplog: pytest.LogCaptureFixture
) -> None:
    with RecordingServer(sequence(*answers)) as sink:
        config = make_config(tmp_path, sink.url)
        deliver(config, [message(1)])
        time.sleep(0.05)  # a slow answer may still be on its way out of the sink
        assert sink.arrivals == attempts
    assert states(config) == [(state, attempts, status)]
    if status in ("200 NO_ACCOUNT", "401"):
        assert "every event to it will fail until its settings change" in caplog.text


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    with RecordingServer(sequence(Answer(429, headers={"Retry-After": "1"}))) as sink:
        config = make_config(tmp_path, sink.url)
        deliver(config, [message(1)])
        first, second = sink.received
    assert second.at - first.at >= 0.95
    assert states(config) == [("delivered", 2, "200")]


def test_429s_without_retry_after_pause_the_whole_instance_longer_each_time(tmp_path: Path) -> None:
    # Three 429s without Retry-After, then success. Other users' requests wait too (base, 2 x base, 4 x base):
    # more users waiting must not mean more load on a throttling vendor.
    with RecordingServer(sequence(Answer(429), Answer(429), Answer(429))) as sink:
        config = make_config(
            tmp_path, sink.url, "wigzo", backoff_base=0.2, backoff_cap=5, concurrency=1, retry_window=60
        )
        deliver(config, [message(n, user=f"u{n}", url="https://shop.example/p") for n in range(1, 9)], timeout=30)
        times = [r.at for r in sink.received]
    gaps = [b - a for a, b in itertools.pairwise(times)][:3]
    assert gaps[0] >= 0.18
    assert gaps[1] >= 0.38
    assert gaps[2] >= 0.78
    assert len(times) == 8 + 3


def test_the_same_message_id_is_delivered_once(tmp_path: Path) -> None:
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url)
        outbox = Outbox(config.outbox.path)
        first = route([message(1)], config.destinations, outbox)
        again = route([message(1), message(1)], config.destinations, outbox)
        assert (first.accepted["shop"], first.duplicates) == (1, 0)
        assert (again.accepted["shop"], again.duplicates) == (0, 2)
        deliver(config, [message(1)])
        assert len(sink.delivered()) == 1


def test_the_never_stored_search_sees_inside_compressed_entries_whose_row_is_gone(tmp_path: Path) -> None:
    """The disk search the never-stored checks use: a deleted pack's compressed entries stay on a free page until
    SQLite reuses it, and the search still reads them, with no pack left to read back."""
    config = make_config(tmp_path, "http://127.0.0.1:9")
    route([message(7)], config.destinations, Outbox(config.outbox.path))
    with sqlite3.connect(config.outbox.path) as db:
        db.execute("DELETE FROM pack_entries")
    assert b"P7" in inflated(config.outbox.path)
    assert b"P7" not in b"".join(f.read_bytes() for f in tmp_path.glob("*.sqlite3*"))  # compressed: not as text


def test_credentials_are_added_at_send_time_and_never_stored(tmp_path: Path) -> None:
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url)
        route([message(2)], config.destinations, Outbox(config.outbox.path))
        stored = on_disk(config.outbox.path)  # a pack waiting: its entries are on disk now
        assert b"P2" in stored
        assert SECRET.encode() not in stored
        assert b"P2" in inflated(config.outbox.path)  # seen inside the compressed entries themselves
        deliver(config, [message(1)])
        (_, got) = sink.delivered()
    assert got.path == "/add/events/v1.json"
    assert got.params == {"apiKey": SECRET}
    assert got.headers["Content-Type"] == "application/json"
    assert got.json[0]["productId"] == "P1"
    assert SECRET.encode() not in on_disk(config.outbox.path)


@pytest.mark.parametrize("kind", ["segmentify", "esputnik"])
def test_per_user_order_and_nothing_lost_under_failures(tmp_path: Path, kind: str) -> None:
    rng = random.Random(7)
    lock_free_failures = [rng.random() < 0.25 for _ in range(2000)]
    count = iter(range(10**6))

    def flaky(_: Received) -> Answer:
        n = next(count)
        return (
            Answer(rng.choice([500, 503, 429])) if n < len(lock_free_failures) and lock_free_failures[n] else Answer()
        )

    users = [f"user{u}" for u in range(20)]
    messages = [
        message(
            n, user, email=f"{user}@example.com", cart_id=f"c-{user}", products=[{"product_id": f"P{n}", "price": 1}]
        )
        for n in range(20)
        for user in users
    ]
    with RecordingServer(flaky) as sink:
        config = make_config(tmp_path, sink.url, kind, min_attempts=50, batch_size=7)
        deliver(config, messages, timeout=60)
        seen: dict[str, list[int]] = defaultdict(list)
        for received in sink.delivered():
            events = received.json if isinstance(received.json, list) else [received.json]
            for event in events:
                user, n = _user_and_number(event)
                seen[user].append(n)
    assert sorted(seen) == sorted(users)
    for user in users:
        assert seen[user] == list(range(20)), f"{user} received out of order or lost: {seen[user]}"
    assert {s for s, _, _ in states(config)} == {"delivered"}


def _user_and_number(event: dict[str, Any]) -> tuple[str, int]:
    if "userId" in event:  # Segmentify
        return event["userId"], int(event["productId"][1:])
    params = {p["name"]: p["value"] for p in event["params"]}  # eSputnik cartUpdated
    return params["externalCustomerId"], int(json.loads(params["products"])[0]["productId"][1:])


def test_one_bad_event_does_not_sink_its_batch(tmp_path: Path) -> None:
    def picky(received: Received) -> Answer:
        if any(e.get("productId") == "P4" for e in received.json):
            return body_error("BAD_INPUT")
        return Answer()

    with RecordingServer(picky) as sink:
        config = make_config(tmp_path, sink.url, batch_size=50)
        deliver(config, [message(n, f"user{n}") for n in range(10)])
        accepted = [r for r, a in zip(sink.received, sink.answers, strict=True) if a.body == Answer().body]
        delivered = sorted(e["productId"] for r in accepted for e in r.json)
        assert any(len(r.json) == 10 for r in sink.received), "the ten were first sent as one batch"
    assert delivered == [f"P{n}" for n in range(10) if n != 4]
    rows = states(config)
    assert sorted(s for s, _, _ in rows) == ["dead"] + ["delivered"] * 9
    assert ("dead", 2, "200 BAD_INPUT") in rows  # the merged try and its own


def test_a_failing_destination_never_delays_another(tmp_path: Path) -> None:
    with RecordingServer(lambda _: Answer(delay=0.4)) as slow, RecordingServer() as fast:
        config = parse_config(
            {
                "outbox": {"path": str(tmp_path / "o.sqlite3"), "concurrency": 1, "batch_size": 1, "read_timeout": 5},
                "destinations": {
                    "slow": {"type": "segmentify", "apiKey": "a", "dataCenterUrl": slow.url},
                    "fast": {"type": "segmentify", "apiKey": "b", "dataCenterUrl": fast.url},
                },
            },
            environ={},
        )
        outbox = Outbox(config.outbox.path)
        route([message(n, f"user{n}") for n in range(20)], config.destinations, outbox)
        delivery = Delivery(str(config.outbox.path), config.destinations, config.outbox)
        started = time.time()
        delivery.start()
        try:
            while outbox.pending_count("fast") and time.time() - started < 10:
                time.sleep(0.01)
            fast_done = time.time() - started
            slow_left = outbox.pending_count("slow")
        finally:
            delivery.stop(timeout=5)
    assert len(fast.delivered()) == 20
    assert fast_done < 2.0
    assert slow_left >= 10  # the slow one had sent only a few when the fast one was done


def test_a_crashed_workers_claims_come_back_after_the_lease(tmp_path: Path) -> None:
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url, lease=0.3, connect_timeout=0.1, read_timeout=0.1)
        outbox = Outbox(config.outbox.path)
        route([message(1)], config.destinations, outbox)
        (claimed,) = outbox.claim("shop", max_batches=1, batch_size=10, batch_bytes=10**6, lease=0.3)
        assert [row.message_id for row in claimed] == ["u1-m1"]
        assert outbox.claim("shop", max_batches=1, batch_size=10, batch_bytes=10**6, lease=0.3) == []
        time.sleep(0.35)  # the claiming worker "died"; its lease runs out
        deliver(config, [])
        assert len(sink.delivered()) == 1


def test_dead_requests_can_be_listed_and_replayed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [Answer(400, {"error": f"bad apiKey={SECRET}"})]
    with RecordingServer(sequence(*answers)) as sink:
        config = make_config(tmp_path, sink.url)
        deliver(config, [message(1)])
        outbox = Outbox(config.outbox.path)
        (dead,) = outbox.dead_rows()
        assert dead["last_status"] == "400"
        assert "bad apiKey=***" in dead["last_error"]
        assert outbox.replay("shop") == 1
        deliver(config, [])
        assert len(sink.delivered()) == 1
    assert SECRET not in caplog.text
    assert SECRET.encode() not in on_disk(config.outbox.path)


def test_accepted_events_are_mapped_from_the_inbox_and_delivered(tmp_path: Path) -> None:
    """The server's path: raw events committed to the inbox, mapped and delivered by the Delivery."""
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url)
        outbox = Outbox(config.outbox.path)
        outbox.accept_events([message(n, f"user{n}") for n in range(5)] + [message(0, "user0")])
        assert outbox.pending_count() == 6  # events in the inbox count as pending
        deliver(config, [])
        assert outbox.inbox_count() == 0
        assert sorted(e["productId"] for r in sink.delivered() for e in r.json) == [f"P{n}" for n in range(5)]


def test_a_stalled_mappers_events_come_back_after_the_lease(tmp_path: Path) -> None:
    """A mapper of a live process that stops answering keeps the lease until it ends, then loses it."""
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url)
        outbox = Outbox(config.outbox.path)
        outbox.accept_events([message(1)])
        stalled, other = Holder.new(), Holder.new()  # both of this (live) process
        ((inbox_id, *_),) = outbox.claim_inbox(10, stalled, lease=0.3)
        assert outbox.claim_inbox(10, other, lease=0.3) == []
        time.sleep(0.35)
        deliver(config, [])  # another mapper takes the ended lease and maps the event
        assert len(sink.delivered()) == 1
        with pytest.raises(LeaseLost):  # the stalled mapper wakes up: its round is not committed
            outbox.enqueue([MessageRequests([], inbox_id)], holder=stalled)


def test_an_idle_mapper_keeps_its_lease_without_a_write_a_poll(tmp_path: Path) -> None:
    """Polling an empty inbox renews the mapper lease once a third of it has gone by, not at every poll: the lease
    never ends under a live mapper, and another mapper waits."""
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    mapper, other = Holder.new(), Holder.new()
    until = "SELECT until FROM leases WHERE name = 'mapper'"
    assert outbox.claim_inbox(10, mapper, lease=60, now=1000.0) == []
    assert outbox._db().execute(until).fetchone() == (1060.0,)
    assert outbox.claim_inbox(10, mapper, lease=60, now=1010.0) == []
    assert outbox._db().execute(until).fetchone() == (1060.0,)  # not renewed yet: nothing written
    assert outbox.claim_inbox(10, mapper, lease=60, now=1021.0) == []
    assert outbox._db().execute(until).fetchone() == (1081.0,)
    assert outbox.claim_inbox(10, other, lease=60, now=1070.0) == []  # past the first lease: still the mapper's
    outbox.accept_events([message(1)], now=1071.0)
    assert len(outbox.claim_inbox(10, mapper, lease=60, now=1072.0)) == 1  # an event: taken at once, renewed
    assert outbox._db().execute(until).fetchone() == (1132.0,)


def test_values_orjson_refuses_are_still_stored_and_delivered(tmp_path: Path) -> None:
    """A 20-digit numeric price and a lone surrogate must neither stop the mapper nor lose the event."""
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url)
        outbox = Outbox(config.outbox.path)
        big = message(1, "user1", price="99999999999999999999")
        odd = message(2, "user2", note="\ud800")
        outbox.accept_events([big, odd, message(3, "user3")])
        deliver(config, [])
        got = sorted((e["productId"], e.get("price")) for r in sink.delivered() for e in r.json)
    assert got == [("P1", 99999999999999999999), ("P2", 10), ("P3", 10)]


def test_retry_after_zero_still_backs_off(tmp_path: Path) -> None:
    """Retry-After: 0 (or a date in the past) must not turn retries into a busy loop."""
    config = make_config(tmp_path, "http://127.0.0.1:9")
    outbox = Outbox(config.outbox.path)
    route([message(n, f"user{n}") for n in range(20)], config.destinations, outbox)
    now = time.time() + 1
    (batch,) = outbox.claim("shop", max_batches=1, batch_size=50, batch_bytes=10**6, lease=30, now=now)
    outbox.retry(batch, "429", "", delay=0.0, retry_window=3600, min_attempts=3, backoff_base=1.0,
                 backoff_cap=10.0, now=now)  # fmt: skip
    waits = [row[0] - now for row in outbox._db().execute("SELECT next_at FROM requests")]
    assert len(waits) == 20
    assert max(waits) > 0.5  # full jitter over [0, 2 s): twenty draws all below 0.5 s is a one-in-10^12 event


def test_a_plugins_declared_credentials_never_reach_the_disk(tmp_path: Path) -> None:
    """The destination's credential declaration, not a list of names, decides what the outbox leaves out."""
    from typing import Annotated, ClassVar

    from pydantic import SecretStr

    from destinations.base import Credential, Destination, Mapped, SettingsModel
    from destinations.delivery.sender import Sender

    class PluginSettings(SettingsModel):
        accessToken: Annotated[SecretStr, ...]
        baseUrl: str

    class Plugin(Destination):
        name = "plugin"
        display_name = "Plugin"
        Settings = PluginSettings
        calls: ClassVar = {"identify": lambda call: Mapped("/users", {"id": call.user_id})}
        credentials_declared = (Credential("accessToken", param="access_token"),)

    with RecordingServer() as vendor:
        plugin = Plugin({"accessToken": "plugin-token-9f8e7d", "baseUrl": vendor.url})
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        assert "plugin-token-9f8e7d" not in repr(plugin.handle({"type": "identify", "userId": "u1"}))
        route([{"type": "identify", "userId": "u1", "messageId": "m1"}], {"plug": plugin}, outbox)
        # The main file and its WAL (a fresh write is in the WAL), for a caller that gives its forms and one that
        # does not (the request's own declared names are left out all the same).
        forms = stored_forms({"plug": plugin})
        request = plugin.handle({"type": "identify", "userId": "u2"})
        outbox.enqueue([MessageRequests([("plug", "m2", "u2", request)])])
        outbox.enqueue([MessageRequests([("plug", "m3", "u3", request)])], forms=forms)
        stored = on_disk(tmp_path / "outbox.sqlite3")
        assert b"'m3'" in stored  # the pack's entries, read back (the key table holds m3 bare, not quoted)
        assert b"access_token" not in stored
        assert b"plugin-token-9f8e7d" not in stored
        (batch,) = outbox.claim("plug", max_batches=1, batch_size=10, batch_bytes=10**6, lease=30)
        row = batch[0]
        assert "access_token" not in row.params
        sender = Sender(plugin)
        try:
            url = resolve_url(row.url, plugin.base_url)
            outcome = sender.send_raw(row.method, url, row.params, row.headers, row.body.encode())
        finally:
            sender.close()
        assert outcome.kind == "delivered"
        deadline = time.time() + 5  # the stand-in records a request just after it answers
        while not vendor.received and time.time() < deadline:
            time.sleep(0.01)
        assert vendor.received[0].params == {"access_token": "plugin-token-9f8e7d"}
        outbox.close()


def test_delivered_rows_keep_only_what_dedupe_needs(tmp_path: Path) -> None:
    import sqlite3

    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url)
        deliver(config, [message(1, note="x" * 5000), message(2)])
        assert len(sink.delivered()) >= 1
        with sqlite3.connect(config.outbox.path) as db:
            packs = db.execute("SELECT state, delivered FROM packs").fetchall()
            entries = db.execute("SELECT COUNT(*) FROM pack_entries").fetchone()[0]
            keys = db.execute("SELECT destination, message_id, count FROM request_keys ORDER BY message_id").fetchall()
        db.close()
        # Delivered from a pack: the pack keeps its count; the requests' text goes; the dedupe keys stay.
        assert packs == [("done", 2)]
        assert entries == 0
        assert [k[1:] for k in keys] == [("u1-m1", 1), ("u1-m2", 1)]
        # The same messages again: still delivered once.
        deliver(config, [message(1, note="x" * 5000), message(2)])
        assert sum(len(r.json) for r in sink.delivered()) == 2


def test_bodies_made_while_mapping_are_stored_as_made_and_one_that_cannot_be_made_is_set_aside(
    tmp_path: Path,
) -> None:
    """The intake makes each body's JSON text while it maps (MessageRequests.texts); a body it cannot make is
    left to the outbox, which sets its message aside as before, and the round's others are stored."""
    from pydantic import SecretStr

    from destinations.base import Credential, Destination, Mapped, SettingsModel

    class PluginSettings(SettingsModel):
        apiKey: SecretStr

    def odd_body(call: Any) -> Mapped:  # a body only JSON cannot carry (a set) for the event "Odd"
        return Mapped("/e", {"event": call.event, "odd": {1} if call.event == "Odd" else 1})

    class Plugin(Destination):
        name = "plugin"
        display_name = "Plugin"
        Settings = PluginSettings
        credentials_declared = (Credential("apiKey", param="apiKey"),)
        other_event = odd_body

    outbox = Outbox(tmp_path / "outbox.sqlite3", pack_size=0)
    messages = [{"type": "track", "event": "Fine", "userId": "u", "messageId": "m1"},
                {"type": "track", "event": "Odd", "userId": "u", "messageId": "m2"}]  # fmt: skip
    report = route(messages, {"plugin": Plugin({"apiKey": "k"})}, outbox)
    assert report.accepted == {"plugin": 1}
    assert report.dead_events == 1
    assert [m for m, _, _ in report.errors] == ["m2"]
    stored = outbox._db().execute("SELECT message_id, body FROM requests").fetchall()
    assert stored == [("m1", '{"event":"Fine","odd":1}')]
    outbox.close()


def test_a_send_that_ends_without_an_outcome_becomes_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`send_raw` promises an outcome; if it ever raises, the batch (here a pack's) is recorded as a retry with its
    backoff. Left to its lease, a pack out is renewed for as long as its process sends, so it would never go. The
    fault's traceback is logged with the instance's key masked (a command's log masks nothing itself), and a fault
    of the metrics callback does not keep the outcome from being recorded either."""
    config = make_config(tmp_path, "http://127.0.0.1:9")
    outbox = Outbox(config.outbox.path)
    route([message(1, "a"), message(2, "b")], config.destinations, outbox)

    def observe(*_: Any) -> None:
        raise RuntimeError("a fault of the metrics")

    worker = InstanceWorker("shop", config.destinations["shop"], outbox, config.outbox, Counters(), observe=observe)

    def raises(*_: Any, **__: Any) -> Any:
        raise RuntimeError(f"a fault of the classification, quoting {SECRET}")

    monkeypatch.setattr(worker.sender, "send_raw", raises)
    (batch,) = outbox.claim("shop", max_batches=4, batch_size=100, batch_bytes=10**6, lease=60)
    assert batch[0].pack  # from a pack
    with caplog.at_level(logging.ERROR, logger="destinations"):
        worker._deliver(batch)
    assert "RuntimeError: a fault of the classification, quoting ***" in caplog.text
    assert SECRET not in caplog.text
    assert "the metrics could not note an outcome" in caplog.text
    rows = list(outbox._db().execute("SELECT message_id, state, attempts, last_status, last_error FROM requests"))
    assert sorted(rows) == [("a-m1", "pending", 1, "no outcome", "RuntimeError"),
                            ("b-m2", "pending", 1, "no outcome", "RuntimeError")]  # fmt: skip
    assert worker.counters.retried["shop"] == 2
