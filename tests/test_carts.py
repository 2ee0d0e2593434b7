"""eSputnik carts from single-product events: the package keeps each cart's contents (carts.py).

The session of the issue, through the server, through `send` and through `CartTracker`: add p1, add p2, add p1
again, remove p2, complete the order, add p3. eSputnik's cartUpdated (seed 003) must carry the whole cart each
time: [p1x1], [p1x1, p2x1], [p1x2, p2x1], [p1x2], and after the order a new cart [p3x1] with a new
recycleStateId. Expectations are written from the issue and seed 003, not from what the code printed.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_server import KEYS, WRITE_KEY, live, make_config, wait_for

from destinations import CartTracker, Filtered, InvalidMessage, get_destination
from destinations.carts import CartBook
from destinations.cli import main
from destinations.delivery import Outbox, route
from destinations.delivery.intake import map_inbox
from destinations.delivery.outbox import Holder
from destinations.sink import Answer, RecordingServer

# (productId, quantity) per cart, as the vendor must get them.
EXPECTED = [[("p1", 1)], [("p1", 1), ("p2", 1)], [("p1", 2), ("p2", 1)], [("p1", 2)], [("p3", 1)]]
PRICES = {"p1": 10.5, "p2": 20, "p3": 7}


def session(user: str, start: int = 0) -> list[dict[str, Any]]:
    """The issue's session for one shopper, as analytics.js would send it (the product in properties)."""

    def track(n: int, event: str, **properties: Any) -> dict[str, Any]:
        return {"type": "track", "event": event, "messageId": f"{user}-{start + n}", "userId": user,
                "timestamp": f"2026-11-30T10:00:{n:02d}Z", "context": {"traits": {"email": f"{user}@example.com"}},
                "properties": properties}  # fmt: skip

    def product(pid: str) -> dict[str, Any]:
        return {"product_id": pid, "name": f"Product {pid}", "price": PRICES[pid], "currency": "EUR"}

    return [
        track(1, "Product Added", **product("p1")),
        track(2, "Product Added", **product("p2")),
        track(3, "Product Added", **product("p1")),
        track(4, "Product Removed", product_id="p2"),
        track(
            5,
            "Order Completed",
            order_id=f"o-{user}",
            total=21,
            currency="EUR",
            products=[{**product("p1"), "quantity": 2}],
        ),
        track(6, "Product Added", **product("p3")),
    ]


def carts_of(bodies: list[Any]) -> dict[str, list[tuple[list[tuple[str, int]], str]]]:
    """Per contact (keyValue): each cartUpdated's (productId, quantity) list and recycleStateId, in order, with a
    request the vendor got twice in a row (a resend after a kill or a late answer) counted once."""
    out: dict[str, list[tuple[list[tuple[str, int]], str]]] = {}
    for body in bodies:
        if not isinstance(body, dict) or body.get("eventTypeKey") != "cartUpdated":
            continue
        params = {p["name"]: p["value"] for p in body["params"]}
        products = json.loads(params["products"])
        cart = ([(p["productId"], p["quantity"]) for p in products], params["recycleStateId"])
        seen = out.setdefault(body["keyValue"], [])
        if not seen or seen[-1] != cart:
            seen.append(cart)
    return out


def assert_session(carts: list[tuple[list[tuple[str, int]], str]]) -> None:
    assert [products for products, _ in carts] == EXPECTED
    ids = [recycle for _, recycle in carts]
    assert len(set(ids[:4])) == 1, "one cart until the order"
    assert ids[4] != ids[0], "a new cart, with a new recycleStateId, after the order"
    assert all(recycle.isalnum() and len(recycle) >= 16 for recycle in ids)  # letters and digits (seed 003)


def vendor_bodies(sink: RecordingServer) -> list[Any]:
    return [r.json for r in sink.delivered() if r.path == "/api/v2/event"]


def test_the_session_through_the_server(tmp_path: Path) -> None:
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url, kinds=("esputnik",))
        with live(config) as url:
            for event in session("ann"):  # one request an event, as a page sends them
                res = httpx.post(f"{url}/v1/track", json=event, auth=(WRITE_KEY, ""))
                assert res.status_code == 200
            assert wait_for(lambda: len(carts_of(vendor_bodies(sink)).get("ann@example.com", [])) == 5)
            time.sleep(0.3)  # nothing more comes
        carts = carts_of(vendor_bodies(sink))
        assert_session(carts["ann@example.com"])
        # The lines keep what the shopper's events said of each product, and the cart its currency.
        params = {p["name"]: p["value"] for p in vendor_bodies(sink)[2]["params"]}
        assert json.loads(params["products"]) == [
            {"productId": "p1", "quantity": 2, "price": 10.5, "name": "Product p1"},
            {"productId": "p2", "quantity": 1, "price": 20, "name": "Product p2"},
        ]
        assert params["currencyCode"] == "EUR"
        # The order itself still goes as the custom event it always was.
        assert [b["eventTypeKey"] for b in vendor_bodies(sink)].count("orderCompleted") == 1


def test_two_shoppers_carts_do_not_mix(tmp_path: Path) -> None:
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url, kinds=("esputnik",))
        events = [e for pair in zip(session("ann"), session("bob"), strict=True) for e in pair]
        with live(config) as url:
            res = httpx.post(f"{url}/v1/batch", json={"batch": events}, auth=(WRITE_KEY, ""))
            assert res.status_code == 200
            assert wait_for(lambda: all(len(c) == 5 for c in carts_of(vendor_bodies(sink)).values())
                            and len(carts_of(vendor_bodies(sink))) == 2)  # fmt: skip
        carts = carts_of(vendor_bodies(sink))
        assert_session(carts["ann@example.com"])
        assert_session(carts["bob@example.com"])
        assert {r for _, r in carts["ann@example.com"]}.isdisjoint({r for _, r in carts["bob@example.com"]})


def test_the_session_through_send(tmp_path: Path) -> None:
    with RecordingServer() as sink:
        config = tmp_path / "destinations.toml"
        config.write_text(
            f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\n[destinations.shop-esputnik]\ntype = "esputnik"\n'
            f'apiKey = "{KEYS["esputnik"]}"\nbaseUrl = "{sink.url}"\n',
            encoding="utf-8",
        )
        events = tmp_path / "session.jsonl"
        # Two sends: the cart outlives the first one, in the outbox database.
        first, rest = session("cy")[:2], session("cy")[2:]
        events.write_text("\n".join(json.dumps(e) for e in first), encoding="utf-8")
        assert main(["send", "--config", str(config), "--quiet", str(events)]) == 0
        events.write_text("\n".join(json.dumps(e) for e in rest), encoding="utf-8")
        assert main(["send", "--config", str(config), "--quiet", str(events)]) == 0
        assert_session(carts_of(vendor_bodies(sink))["cy@example.com"])


def test_cart_tracker_for_library_users(tmp_path: Path) -> None:
    esputnik = get_destination("esputnik", {"apiKey": "k"})
    for tracker in (CartTracker(), CartTracker(tmp_path / "carts.sqlite3")):
        bodies = [r.json for event in session("dee") for r in tracker.handle(esputnik, event)]
        assert_session(carts_of(bodies)["dee@example.com"])
        cart = tracker.cart("esputnik", "user:dee")
        assert cart is not None
        assert [(line["product_id"], line["quantity"]) for line in cart.lines] == [("p3", 1)]
        tracker.close()
    # Without a tracker, handle keeps the stateless rule: a single product is not a cart.
    with pytest.raises(Filtered, match=r"without properties\.products"):
        esputnik.handle(session("dee")[0])
    again = CartTracker(tmp_path / "carts.sqlite3")  # the file keeps the carts
    assert again.cart("esputnik", "user:dee") is not None
    again.close()


def test_a_cart_untouched_past_its_ttl_starts_again(tmp_path: Path) -> None:
    esputnik = get_destination("esputnik", {"apiKey": "k"})
    tracker = CartTracker(ttl=0.2)
    events = session("eve")
    first = carts_of([r.json for r in tracker.handle(esputnik, events[0])])["eve@example.com"]
    time.sleep(0.3)
    second = carts_of([r.json for r in tracker.handle(esputnik, events[1])])["eve@example.com"]
    assert first[0][0] == [("p1", 1)]
    assert second[0][0] == [("p2", 1)]  # p1's cart was forgotten
    assert second[0][1] != first[0][1]


def test_sigkill_while_mapping_leaves_no_cart_ahead_of_or_behind_the_outbox(tmp_path: Path) -> None:
    """A worker killed at any point of mapping a backlog: each shopper's carts still come out exactly, once each,
    because a cart changes in the transaction that stores the request it caused."""
    users = [f"u{n:03d}" for n in range(150)]
    with RecordingServer(lambda _: Answer(delay=0.002)) as sink:
        config = tmp_path / "destinations.toml"
        config.write_text(
            f'[outbox]\npath = "{tmp_path / "outbox.sqlite3"}"\nconcurrency = 8\nconnect_timeout = 1\n'
            f'read_timeout = 2\nlease = 4\n[destinations.shop-esputnik]\ntype = "esputnik"\n'
            f'apiKey = "{KEYS["esputnik"]}"\nbaseUrl = "{sink.url}"\n',
            encoding="utf-8",
        )
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        sessions = [session(u) for u in users]
        outbox.accept_events([sessions[u][n] for n in range(6) for u in range(len(users))])
        total = outbox.inbox_count()
        kills = 0
        for threshold in (total * 2 // 3, total // 3):
            worker = worker_process(config)
            while outbox.inbox_count() > threshold and worker.poll() is None:
                time.sleep(0.001)
            worker.send_signal(signal.SIGKILL)  # in the middle of mapping the backlog
            worker.wait()
            kills += 1
        worker = worker_process(config)
        try:
            assert wait_for(lambda: outbox.pending_count() == 0, timeout=60)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        assert kills == 2
        carts = carts_of(vendor_bodies(sink))
        assert sorted(carts) == sorted(f"{u}@example.com" for u in users)
        for user in users:
            assert_session(carts[f"{user}@example.com"])
        # The carts kept match what was sent last: each shopper's cart holds p3 alone.
        kept = outbox._db().execute("SELECT cart_key, lines FROM carts").fetchall()
        assert sorted(key for key, _ in kept) == sorted(f"user:{u}" for u in users)
        assert {json.dumps([(x["product_id"], x["quantity"]) for x in json.loads(lines)]) for _, lines in kept} == {
            json.dumps([["p3", 1]])
        }


def worker_process(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "destinations", "worker", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def handled(tracker: CartTracker, events: list[dict[str, Any]], **settings: Any) -> list[Any]:
    esputnik = get_destination("esputnik", {"apiKey": "k", **settings})
    out: list[Any] = []
    for event in events:
        try:
            out.extend(r.json for r in tracker.handle(esputnik, event))
        except (Filtered, InvalidMessage) as exc:
            out.append(type(exc).__name__)
    return out


def cart_products(body: Any) -> list[Any]:
    return json.loads({p["name"]: p["value"] for p in body["params"]}["products"])


def test_a_resend_changes_no_cart_again() -> None:
    """A client that resends on a timeout sends the same messageId: the cart counts the product once."""
    tracker = CartTracker()
    first = session("fay")[0]
    bodies = handled(tracker, [first, first, session("fay")[1]])
    carts = [[(p["productId"], p["quantity"]) for p in cart_products(b)] for b in bodies]
    assert carts == [[("p1", 1)], [("p1", 1)], [("p1", 1), ("p2", 1)]]  # the resend gets the cart as it is


def test_a_resend_without_a_message_id_changes_no_cart_again(tmp_path: Path) -> None:
    """A library caller's message without a messageId is known by the digest of its content, as the intake
    knows it (`message_id_of`): sent twice, it counts its product once, in memory and in a file."""
    first = {k: v for k, v in session("fay")[0].items() if k != "messageId"}
    for tracker in (CartTracker(), CartTracker(tmp_path / "carts.sqlite3")):
        bodies = handled(tracker, [first, first, session("fay")[1]])
        carts = [[(p["productId"], p["quantity"]) for p in cart_products(b)] for b in bodies]
        assert carts == [[("p1", 1)], [("p1", 1)], [("p1", 1), ("p2", 1)]]
        tracker.close()


def test_a_cart_event_whose_message_id_holds_a_lone_surrogate_takes_no_cart_and_stops_no_round(
    tmp_path: Path,
) -> None:
    """No UTF-8 can carry such a messageId, so no cart can record it: the event is handed on as it came (one product
    and no cart: the stateless rule filters it), and the round's others go on. It used to fail the cart's lookup,
    and so the whole round, five times, before the event was set aside as a process that died."""
    config = make_config(tmp_path, "http://127.0.0.1:9", kinds=("esputnik",))
    outbox = Outbox(config.outbox.path)
    odd = {**session("kim")[0], "messageId": "kim-1\ud800"}
    outbox.accept_events([odd, *session("lee")[:2]])
    report = map_inbox(outbox, config.destinations, Holder.new())
    assert (report.messages, report.dead_events, sum(report.accepted.values())) == (3, 0, 2)
    assert report.filtered["shop-esputnik"] == 1
    assert outbox.inbox_count() == 0
    assert outbox.cart_book().get("shop-esputnik", "user:kim") is None  # no cart change recorded for it
    assert outbox.cart_book().get("shop-esputnik", "user:lee") is not None


def test_a_tracker_hands_on_a_message_id_no_text_can_hold_as_it_came(tmp_path: Path) -> None:
    """No file could record such a messageId (SQLite refuses it): as at the intake, no cart takes the event, which
    goes on as it came (one product and no cart: the stateless rule filters it), and nothing but the package's
    own errors comes out; the next event's cart does not hold its product."""
    for tracker in (CartTracker(), CartTracker(tmp_path / "carts.sqlite3")):
        odd = {**session("ned")[0], "messageId": "ned-1\ud800"}
        out = handled(tracker, [odd, session("ned")[1]])
        assert out[0] == "Filtered"
        assert [(p["productId"], p["quantity"]) for p in cart_products(out[1])] == [("p2", 1)]
        tracker.close()


def test_a_fault_while_mapping_sets_its_event_aside_and_the_round_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug of this package met by one event (here, in the cart's bookkeeping) sets that event aside with a
    reason, not the round back (five rounds, then set aside as a process that died)."""
    config = make_config(tmp_path, "http://127.0.0.1:9", kinds=("esputnik",))
    outbox = Outbox(config.outbox.path)
    outbox.accept_events(session("max")[:3])
    real = CartBook.resent

    def resent(self: CartBook, instance: str, destination: Any, parsed: Any, message_id: str | None) -> int:
        if message_id == "max-2":
            raise RuntimeError(f"a bug, quoting {KEYS['esputnik']}")
        return real(self, instance, destination, parsed, message_id)

    monkeypatch.setattr(CartBook, "resent", resent)
    with caplog.at_level(logging.ERROR, logger="destinations"):
        report = map_inbox(outbox, config.destinations, Holder.new())
    assert "RuntimeError: a bug, quoting ***" in caplog.text  # logged with its traceback, the key masked
    assert KEYS["esputnik"] not in caplog.text
    assert (report.messages, report.dead_events, sum(report.accepted.values())) == (3, 1, 2)
    (dead,) = outbox.dead_events()
    assert dead["message_id"] == "max-2"
    assert dead["reason"] == (
        "it could not be mapped (RuntimeError: a fault of this package, logged with its traceback); once fixed, map"
        f" it again with `destinations outbox replay --event {dead['id']}`"
    )


def test_a_database_error_while_mapping_fails_the_round_and_blames_no_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A locked or full database met while mapping (the cart's lookups read the outbox) is the file's state, not
    the event's: the round fails and its events stay to be mapped again, none set aside to replay by hand."""
    config = make_config(tmp_path, "http://127.0.0.1:9", kinds=("esputnik",))
    outbox = Outbox(config.outbox.path)
    outbox.accept_events(session("ida")[:2])
    real = CartBook.resent

    def locked(self: CartBook, instance: str, destination: Any, parsed: Any, message_id: str | None) -> int:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(CartBook, "resent", locked)
    holder = Holder.new()
    for _ in range(6):  # more rounds than the attempts that set an event aside as its process's death
        with pytest.raises(sqlite3.OperationalError):
            map_inbox(outbox, config.destinations, holder)
    assert outbox.dead_events() == []
    assert outbox.inbox_count() == 2
    monkeypatch.setattr(CartBook, "resent", real)
    report = map_inbox(outbox, config.destinations, holder)  # the next round maps them, together
    assert (report.messages, report.dead_events) == (2, 0)
    assert outbox._db().execute("SELECT MAX(attempts) FROM inbox").fetchone()[0] in (None, 0)


def test_a_session_sent_twice_is_counted_as_duplicates_not_filtered(tmp_path: Path) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9", kinds=("esputnik",))
    outbox = Outbox(config.outbox.path)
    first = route(session("gil"), config.destinations, outbox)
    again = route(session("gil"), config.destinations, outbox)
    assert sum(first.accepted.values()) == 6  # five carts and the order
    assert (sum(again.accepted.values()), again.duplicates, sum(again.filtered.values())) == (0, 6, 0)


def test_no_cart_is_made_up_when_none_is_known() -> None:
    """A removal or a Cart Viewed without products for a shopper with no known cart would send an empty cart,
    which clears theirs at eSputnik: the stateless rule applies instead (filtered)."""
    tracker = CartTracker()
    removal = session("gus")[3]
    viewed = {**removal, "event": "Cart Viewed", "messageId": "gus-viewed", "properties": {}}
    assert handled(tracker, [removal, viewed]) == ["Filtered", "Filtered"]
    assert tracker.cart("esputnik", "user:gus") is None


def test_only_what_the_instance_takes_changes_its_carts() -> None:
    tracker = CartTracker()
    off = {**session("hal")[0], "integrations": {"eSputnik": False}}
    assert handled(tracker, [off]) == ["Filtered"]
    assert tracker.cart("esputnik", "user:hal") is None


def test_a_shopper_who_logs_in_keeps_their_cart() -> None:
    tracker = CartTracker()
    anonymous = {**session("ivy")[0], "anonymousId": "a-ivy"}
    del anonymous["userId"]
    logged_in = {**session("ivy")[1], "anonymousId": "a-ivy"}
    bodies = handled(tracker, [anonymous, logged_in])
    assert [p["productId"] for p in cart_products(bodies[-1])] == ["p1", "p2"]
    assert tracker.cart("esputnik", "anonymous:a-ivy") is None


def test_quantities_add_in_decimal_and_whole_carts_keep_every_field() -> None:
    tracker = CartTracker()
    half = {**session("jo")[0], "properties": {**session("jo")[0]["properties"], "quantity": 0.1}}
    more = {**half, "messageId": "jo-more", "properties": {**half["properties"], "quantity": 0.2}}
    bodies = handled(tracker, [half, more])
    assert [p["quantity"] for p in cart_products(bodies[-1])] == [0.3]
    whole = {
        **session("jo")[0],
        "messageId": "jo-whole",
        "event": "Cart Viewed",
        "properties": {"products": [{"product_id": "p9", "price": 5, "sizes": ["M", "L"], "currency": "USD"}]},
    }
    (body,) = handled(tracker, [whole])
    params = {p["name"]: p["value"] for p in body["params"]}
    assert cart_products(body) == [{"productId": "p9", "quantity": 1, "price": 5, "sizes": ["M", "L"]}]
    assert params["currencyCode"] == "USD"


def test_a_message_with_null_properties_does_not_stop_the_mapper(tmp_path: Path) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9", kinds=("esputnik",))
    outbox = Outbox(config.outbox.path)
    outbox.accept_events([{**session("kim")[0], "properties": None}, session("kim")[1]])
    report = map_inbox(outbox, config.destinations, Holder.new())
    assert (report.messages, report.dead_events) == (2, 0)
    assert dict(report.filtered) == {"shop-esputnik": 1}  # null properties: no product, no cart, filtered
    assert dict(report.accepted) == {"shop-esputnik": 1}
    assert outbox.inbox_count() == 0


def test_one_product_in_products_and_odd_removals_keep_the_cart_right() -> None:
    """Real traffic: the product as the one item of products[] (MAPPINGS "Real traffic"); a removal with a
    negative quantity removes the line rather than adding to it; an add without a price leaves the cart alone."""
    tracker = CartTracker()
    base = session("lou")[0]
    one = {**base, "properties": {"products": [{"product_id": "p1", "price": 10.5, "name": "Product p1"}]}}
    two = {**base, "messageId": "lou-2", "properties": {"products": [{"product_id": "p2", "price": 20}]}}
    minus = {**base, "messageId": "lou-3", "event": "Product Removed",
             "properties": {"product_id": "p2", "quantity": -3}}  # fmt: skip
    no_price = {**base, "messageId": "lou-4", "properties": {"product_id": "p4", "name": "No price"}}
    bodies = handled(tracker, [one, two, minus, no_price])
    assert [[(p["productId"], p["quantity"]) for p in cart_products(b)] for b in bodies[:3]] == [
        [("p1", 1)], [("p1", 1), ("p2", 1)], [("p1", 1)]
    ]  # fmt: skip
    assert bodies[3] == "Filtered"  # handled as without cart state: a single product is not a cart
    kept = tracker.cart("esputnik", "user:lou")
    assert kept is not None
    assert [line["product_id"] for line in kept.lines] == ["p1"]


def test_resends_after_the_order_and_of_filtered_events_change_nothing(tmp_path: Path) -> None:
    """A session resent after its Order Completed (the cart is gone) counts as duplicates; an anonymous add that
    eSputnik filters (no contact locator), sent three times, counts once in the cart the shopper takes along."""
    config = make_config(tmp_path, "http://127.0.0.1:9", kinds=("esputnik",))
    outbox = Outbox(config.outbox.path)
    to_order = session("max")[:5]
    route(to_order, config.destinations, outbox)
    again = route(to_order, config.destinations, outbox)
    assert (sum(again.filtered.values()), sum(again.invalid.values()), again.duplicates) == (0, 0, 5)

    anonymous = {**session("ned")[0], "anonymousId": "a-ned", "context": {}}
    del anonymous["userId"]
    for _ in range(3):
        report = route([anonymous], config.destinations, outbox)
        assert sum(report.filtered.values()) == 1  # no contact locator: filtered, as the first time
    cart = load_cart_of(outbox, "anonymous:a-ned")
    assert [(line["product_id"], line["quantity"]) for line in cart] == [("p1", 1)]


def load_cart_of(outbox: Outbox, key: str) -> list[Any]:
    row = outbox._db().execute("SELECT lines FROM carts WHERE cart_key = ?", (key,)).fetchone()
    return json.loads(row[0]) if row else []
