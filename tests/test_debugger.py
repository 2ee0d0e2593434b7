"""The live debugger: its JSON API and access rules over a real server, and its page in a real headless Chromium.

Three events go through the tracking API, as a shop's server library posts them (Basic auth with the write key):
one every instance takes (eSputnik's stand-in refuses its first call with 400, so that request is dead), one
without an image (invalid for Segmentify, at `properties.image_url`), and one with `integrations.Wigzo = false`
(filtered for Wigzo).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from chromium import ARTIFACTS, driver, require
from chromium import missing as chromium_missing
from test_server import CONTEXT, KEYS, PRODUCT, WEBHOOK_SECRET, WRITE_KEY, live, make_config, wait_for

from destinations.delivery import Outbox
from destinations.delivery import debugger as store
from destinations.delivery.intake import map_inbox
from destinations.delivery.outbox import Holder
from destinations.esputnik import basic_auth
from destinations.sink import Answer, Received, RecordingServer

TOKEN = "debugger-token-5e1f0a9b7c"
# Every form a secret could leak in: eSputnik's key travels only inside a Basic header.
SECRETS = (WRITE_KEY, WEBHOOK_SECRET, TOKEN, *KEYS.values(), basic_auth(KEYS["esputnik"]),
           basic_auth(KEYS["esputnik"]).split(" ", 1)[1])  # fmt: skip


def refuse_first_esputnik_call() -> Any:
    lock, refused = threading.Lock(), []

    def script(received: Received) -> Answer:
        with lock:
            if received.path == "/api/v2/event" and not refused:
                refused.append(received)
                return Answer(400, {"error": "bad request"})
        return Answer()

    return script


def events(user: str = "dbg-user") -> list[dict[str, Any]]:
    base = {"type": "track", "event": "Product Viewed", "userId": user, "context": CONTEXT}
    return [
        {**base, "messageId": "dbg-taken", "properties": PRODUCT},
        {**base, "messageId": "dbg-invalid", "properties": {k: v for k, v in PRODUCT.items() if k != "image_url"}},
        {**base, "messageId": "dbg-filtered", "properties": PRODUCT, "integrations": {"Wigzo": False}},
    ]


KINDS = ("segmentify", "esputnik", "wigzo")


def badges(url: str, **auth: Any) -> dict[str, dict[str, str]]:
    answer = httpx.get(f"{url}/debugger/api/messages", **auth).json()
    return {m["messageId"]: {n: b["status"] for n, b in m["destinations"].items()} for m in answer["messages"]}


def settled(url: str, **auth: Any) -> dict[str, dict[str, str]] | None:
    found = badges(url, **auth)
    done = len(found) == 3 and all(s not in ("pending", "retrying") for b in found.values() for s in b.values())
    return found if done else None


def test_the_json_api_shows_outcomes_and_attempts_and_replays(tmp_path: Path) -> None:
    with RecordingServer(refuse_first_esputnik_call()) as sink:
        config = make_config(tmp_path, sink.url, kinds=KINDS)
        with live(config) as url:
            res = httpx.post(f"{url}/v1/batch", json={"batch": events()}, auth=(WRITE_KEY, ""))
            assert res.status_code == 200
            found = wait_for(lambda: settled(url))
            assert found == {
                "dbg-taken": {"shop-segmentify": "delivered", "shop-esputnik": "dead", "shop-wigzo": "delivered"},
                "dbg-invalid": {"shop-segmentify": "invalid", "shop-esputnik": "delivered", "shop-wigzo": "delivered"},
                "dbg-filtered": {"shop-segmentify": "delivered", "shop-esputnik": "delivered",
                                 "shop-wigzo": "filtered"},
            }  # fmt: skip
            listed = httpx.get(f"{url}/debugger/api/messages").json()["messages"]
            assert [m["messageId"] for m in listed] == ["dbg-filtered", "dbg-invalid", "dbg-taken"]  # newest first
            assert {m["wayIn"] for m in listed} == {"tracking"}

            invalid = httpx.get(f"{url}/debugger/api/messages/dbg-invalid").json()
            assert invalid["destinations"]["shop-segmentify"]["path"] == "properties.image_url"
            assert invalid["message"]["properties"]["name"] == PRODUCT["name"]  # as received
            filtered = httpx.get(f"{url}/debugger/api/messages/dbg-filtered").json()
            assert "Wigzo" in filtered["destinations"]["shop-wigzo"]["reason"]

            taken = httpx.get(f"{url}/debugger/api/messages/dbg-taken").json()
            (request,) = taken["destinations"]["shop-esputnik"]["requests"]
            assert request["state"] == "dead"
            assert [(a["status"], "bad request" in a["answer"]) for a in request["attempts"]] == [("400", True)]
            assert request["headers"]["Authorization"] == "***"  # the vendor request, its secret masked
            (segmentify,) = taken["destinations"]["shop-segmentify"]["requests"]
            assert segmentify["params"]["apiKey"] == "***"
            assert [a["status"] for a in segmentify["attempts"]] == ["200"]

            # Filters: by user, destination and status.
            def ids(**params: str) -> list[str]:
                messages = httpx.get(f"{url}/debugger/api/messages", params=params).json()["messages"]
                return [m["messageId"] for m in messages]

            assert ids(q="dbg-user") == ["dbg-filtered", "dbg-invalid", "dbg-taken"]
            assert ids(q="dbg-invalid") == ["dbg-invalid"]
            assert ids(q="Product") == ["dbg-filtered", "dbg-invalid", "dbg-taken"]  # the start of an event name
            assert ids(q="nobody") == []
            assert ids(status="dead") == ["dbg-taken"]
            assert ids(destination="shop-wigzo", status="filtered") == ["dbg-filtered"]
            assert ids(destination="shop-segmentify", status="filtered") == []
            assert httpx.get(f"{url}/debugger/api/messages", params={"status": "lost"}).status_code == 400

            # A replay wants the page's header, and no other site's Origin.
            path = f"{url}/debugger/api/messages/dbg-taken/replay"
            only = {"destination": "shop-esputnik"}
            assert httpx.post(path, params=only).status_code == 403
            foreign = {"X-Debugger": "replay", "Origin": "https://evil.example"}
            assert httpx.post(path, params=only, headers=foreign).status_code == 403
            assert (
                httpx.post(f"{url}/debugger/api/messages/nothing/replay", headers={"X-Debugger": "replay"}).status_code
                == 404
            )
            replayed = httpx.post(path, params=only, headers={"X-Debugger": "replay"})
            assert replayed.json() == {"replayed": 1}
            assert wait_for(lambda: badges(url)["dbg-taken"]["shop-esputnik"] == "delivered")
            again = httpx.get(f"{url}/debugger/api/messages/dbg-taken").json()
            attempts = again["destinations"]["shop-esputnik"]["requests"][0]["attempts"]
            assert [a["status"] for a in attempts] == ["400", "200"]

            everything = json.dumps([httpx.get(f"{url}/debugger/api/messages").json()] + [
                httpx.get(f"{url}/debugger/api/messages/{mid}").json() for mid in ("dbg-taken", "dbg-invalid")
            ])  # fmt: skip
            for secret in SECRETS:
                assert secret not in everything
            assert "/debugger/api/messages" in httpx.get(f"{url}/openapi.json").text


def test_a_token_guards_every_route(tmp_path: Path) -> None:
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url, kinds=("segmentify",), debugger={"token": TOKEN})
        with live(config) as url:
            assert httpx.get(f"{url}/debugger").status_code == 200  # the page shell holds nothing
            for path in ("/debugger/api/messages", "/debugger/api/messages/x", "/debugger/api/access"):
                assert httpx.get(f"{url}{path}").status_code == 401
            assert (
                httpx.post(f"{url}/debugger/api/messages/x/replay", headers={"X-Debugger": "replay"}).status_code == 401
            )
            bearer = {"headers": {"Authorization": f"Bearer {TOKEN}"}}
            assert httpx.get(f"{url}/debugger/api/access", **bearer).json()["open"] is False
            assert (
                httpx.get(f"{url}/debugger/api/messages", headers={"Authorization": "Bearer wrong"}).status_code == 401
            )

            with httpx.Client(base_url=url) as browser:  # the login form's way: a cookie, never the token itself
                wrong = browser.post("/debugger/login", data={"token": "wrong"})
                assert wrong.status_code == 303
                assert "login=failed" in wrong.headers["location"]
                assert browser.get("/debugger/api/messages").status_code == 401
                right = browser.post("/debugger/login", data={"token": TOKEN})
                assert right.status_code == 303
                cookie = right.headers["set-cookie"]
                assert "HttpOnly" in cookie
                assert "SameSite=strict" in cookie
                assert TOKEN not in cookie
                assert browser.get("/debugger/api/messages").status_code == 200


def test_without_a_token_it_is_open_on_loopback_and_says_so(tmp_path: Path) -> None:
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url, kinds=("segmentify",))
        with live(config) as url:
            access = httpx.get(f"{url}/debugger/api/access").json()
            assert access["open"] is True
            assert "loopback" in access["note"]
        off = make_config(tmp_path, sink.url, kinds=("segmentify",), debugger={"enabled": False})
        with live(off) as url:
            assert httpx.get(f"{url}/debugger").status_code == 404
            assert httpx.get(f"{url}/debugger/api/messages").status_code == 404


# --- the page, in headless Chromium ---------------------------------------------------------------


@pytest.fixture
def chrome(tmp_path: Path) -> Any:
    require(chromium_missing())
    with driver(tmp_path / "profile") as browser:
        yield browser


def test_the_page_shows_a_session_live_with_badges_details_and_replay(tmp_path: Path, chrome: Any) -> None:
    from selenium.webdriver.common.by import By

    # Read and click in the page itself: it redraws its rows whenever an answer changes.
    def badge(message_id: str, destination: str) -> str | None:
        selector = f'tr[data-message-id="{message_id}"] .badge[data-destination="{destination}"]'
        return chrome.execute_script(  # type: ignore[no-any-return]
            "const e = document.querySelector(arguments[0]); return e ? e.dataset.status : null;", selector
        )

    def click(selector: str) -> bool:
        return bool(chrome.execute_script(
            "const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;", selector
        ))  # fmt: skip

    with RecordingServer(refuse_first_esputnik_call()) as sink:
        config = make_config(tmp_path, sink.url, kinds=KINDS)
        with live(config) as url:
            chrome.get(f"{url}/debugger")
            assert wait_for(lambda: "open on loopback" in chrome.find_element(By.ID, "access").text)
            assert chrome.find_elements(By.CSS_SELECTOR, "tr.message") == []

            res = httpx.post(f"{url}/v1/batch", json={"batch": events()}, auth=(WRITE_KEY, ""))
            assert res.status_code == 200
            # No reload: the page polls.
            assert wait_for(lambda: len(chrome.find_elements(By.CSS_SELECTOR, "tr.message")) == 3)
            assert wait_for(lambda: badge("dbg-taken", "shop-esputnik") == "dead")
            assert wait_for(lambda: badge("dbg-taken", "shop-segmentify") == "delivered")
            assert badge("dbg-invalid", "shop-segmentify") == "invalid"
            assert badge("dbg-filtered", "shop-wigzo") == "filtered"
            assert wait_for(lambda: badge("dbg-filtered", "shop-esputnik") == "delivered")

            assert click('tr[data-message-id="dbg-invalid"]')
            assert wait_for(lambda: "properties.image_url" in chrome.find_element(By.ID, "detail").text)

            assert click('tr[data-message-id="dbg-taken"]')
            assert wait_for(lambda: click('button.replay[data-destination="shop-esputnik"]'))
            assert wait_for(lambda: badge("dbg-taken", "shop-esputnik") in ("pending", "retrying", "delivered"))
            assert wait_for(lambda: badge("dbg-taken", "shop-esputnik") == "delivered")
            assert wait_for(lambda: "200" in chrome.find_element(By.ID, "detail").text)

            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            chrome.save_screenshot(str(ARTIFACTS / "debugger.png"))
            problems = [e for e in chrome.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
            assert problems == []
            page = chrome.page_source
            for secret in SECRETS:
                assert secret not in page
            time.sleep(0.1)


def test_odd_message_ids_and_values_open_and_a_rebound_host_is_refused(tmp_path: Path) -> None:
    """messageIds a path segment cannot carry open through the query form; a lone surrogate in a value is shown
    as its escape (not a 500); an open debugger answers loopback host names only (DNS rebinding)."""
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url, kinds=("segmentify",))
        with live(config) as url:
            odd = [{**events()[0], "messageId": mid} for mid in ("a/b", "..", "<i>id</i>")]
            odd.append({**events()[0], "messageId": "lone", "properties": {**PRODUCT, "note": "x\ud800"}})
            body = json.dumps({"batch": odd})  # ASCII JSON: the lone surrogate travels as its escape
            headers = {"Content-Type": "application/json"}
            res = httpx.post(f"{url}/v1/batch", content=body, headers=headers, auth=(WRITE_KEY, ""))
            assert res.status_code == 200
            assert wait_for(lambda: len(httpx.get(f"{url}/debugger/api/messages").json()["messages"]) == 4)
            for mid in ("a/b", "..", "<i>id</i>", "lone"):
                res = httpx.get(f"{url}/debugger/api/message", params={"messageId": mid})
                assert res.status_code == 200, mid
                assert res.json()["messageId"] == mid
            assert "\\ud800" in httpx.get(f"{url}/debugger/api/message", params={"messageId": "lone"}).text
            rebound = httpx.get(f"{url}/debugger/api/messages", headers={"Host": "rebind.evil.example"})
            assert rebound.status_code == 403
            assert httpx.get(f"{url}/debugger/api/messages", params={"q": "x" * 1001}).status_code == 422


def test_a_message_id_no_text_can_hold_neither_stops_mapping_nor_hides_the_others(tmp_path: Path) -> None:
    """A lone surrogate in a messageId (the tracking API takes it) once made every round fail while the debugger
    was on: the debugger's record must never hold back what is delivered."""
    config = make_config(tmp_path, "http://127.0.0.1:9", kinds=("segmentify",))
    outbox = Outbox(config.outbox.path, debug_keep=1000)
    outbox.accept_events([{**events()[0], "messageId": "mid\ud800"}, {**events()[0], "messageId": "fine"}])
    report = map_inbox(outbox, config.destinations, Holder.new())
    assert report.dead_events == 1  # the first, set aside with its reason
    assert "fine" not in {e["message_id"] for e in outbox.dead_events()}
    assert outbox.stored_count("shop-segmentify", "fine") == 1  # the second went on
    shown = [row[0] for row in outbox._db().execute("SELECT message_id FROM debug_messages")]
    assert "fine" in shown


def test_housekeeping_keeps_what_the_debugger_shows_and_clears_the_rest(tmp_path: Path) -> None:
    """Attempts and delivered bodies of messages the debugger no longer keeps are cleared, from the old end and
    in chunks; those of kept messages stay."""
    config = make_config(tmp_path, "http://127.0.0.1:9", kinds=("segmentify",))
    outbox = Outbox(config.outbox.path, debug_keep=3)
    holder = Holder.new()
    for n in range(6):  # one message a round: the first three fall out of the debugger
        outbox.accept_events([{**events()[0], "messageId": f"m{n}"}], source="tracking")
        map_inbox(outbox, config.destinations, holder)
        (batch,) = outbox.claim("shop-segmentify", max_batches=1, batch_size=10, batch_bytes=10**6, lease=30)
        outbox.delivered(batch, "200")
        time.sleep(0.01)
    db = outbox._db()
    assert [m for (m,) in db.execute("SELECT message_id FROM debug_messages ORDER BY seq")] == ["m3", "m4", "m5"]

    def with_body() -> list[str]:  # delivered from a pack: the pack's entries hold the bodies
        rows = {m for (m,) in db.execute("SELECT message_id FROM requests WHERE body != ''")}
        packed = {m for (m,) in db.execute("SELECT message_id FROM request_keys JOIN pack_entries USING (pack)")}
        return sorted(rows | packed)

    assert with_body() == [f"m{n}" for n in range(6)]  # not yet pruned
    outbox.prune()
    assert with_body() == ["m3", "m4", "m5"]
    assert sorted({m for (m,) in db.execute("SELECT message_id FROM debug_attempts")}) == ["m3", "m4", "m5"]
    # In chunks: a chunk of one clears one body a call.
    db.execute("DELETE FROM debug_messages")
    assert store.prune(db, chunk=1) == 1
    assert len(with_body()) == 2
    assert db.execute("SELECT COUNT(*) FROM debug_attempts").fetchone()[0] == 0  # nothing kept: none kept


def test_housekeeping_clears_packs_stored_before_the_oldest_kept_message_however_late_delivered(
    tmp_path: Path,
) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9", kinds=("segmentify",))
    outbox = Outbox(config.outbox.path, debug_keep=1)
    holder = Holder.new()
    for n in range(2):  # two rounds, two packs; the debugger keeps the second message only
        outbox.accept_events([{**events()[0], "messageId": f"late{n}"}], source="tracking")
        map_inbox(outbox, config.destinations, holder)
        time.sleep(0.01)
    for _ in range(2):  # both delivered after the second was mapped (a backlog drained, say)
        (batch,) = outbox.claim("shop-segmentify", max_batches=1, batch_size=10, batch_bytes=10**6, lease=30)
        outbox.delivered(batch, "200")
    db = outbox._db()
    kept = "SELECT message_id FROM request_keys JOIN pack_entries USING (pack) ORDER BY message_id"
    assert [m for (m,) in db.execute(kept)] == ["late0", "late1"]
    outbox.prune()
    assert [m for (m,) in db.execute(kept)] == ["late1"]  # what the debugger shows keeps its text


@pytest.mark.parametrize(
    ("host", "status"),
    [("127.0.0.1:8080", 200), ("localhost", 200), ("[::1]:8080", 200), ("LOCALHOST:1", 200),
     ("rebind.evil.example", 403), ("evil:80", 403), ("", 403)],
)  # fmt: skip
def test_an_open_debugger_answers_loopback_names_only(tmp_path: Path, host: str, status: int) -> None:
    with RecordingServer() as sink:
        config = make_config(tmp_path, sink.url, kinds=("segmentify",))
        with live(config) as url:
            assert httpx.get(f"{url}/debugger/api/access", headers={"Host": host}).status_code == status


def test_a_replay_from_the_servers_own_origin_is_taken(tmp_path: Path) -> None:
    with RecordingServer(refuse_first_esputnik_call()) as sink:
        config = make_config(tmp_path, sink.url, kinds=("esputnik",))
        with live(config) as url:
            httpx.post(f"{url}/v1/batch", json={"batch": events()[:1]}, auth=(WRITE_KEY, ""))
            assert wait_for(lambda: badges(url).get("dbg-taken", {}).get("shop-esputnik") == "dead")
            own = {"X-Debugger": "replay", "Origin": url}
            res = httpx.post(f"{url}/debugger/api/replay", params={"messageId": "dbg-taken"}, headers=own)
            assert res.json() == {"replayed": 1}


# --- the ring of kept messages ---------------------------------------------------------------------------------


def _record(mid: str, now: float = 1.0) -> tuple[Any, ...]:
    return store.record({"type": "track", "event": "Shown", "userId": "u"}, None, "send", now,
                        {"shop": {"outcome": "filtered", "reason": "r"}}, message_id=mid, now=now)  # fmt: skip


def _listed(db: Any, **filters: Any) -> list[str]:
    args = {"search": None, "destination": None, "status": None, "limit": 50, **filters}
    return [row["messageId"] for row in store.summaries(db, **args)]


def _save_rounds(outbox: Outbox, rounds: list[list[str]]) -> None:
    for mids in rounds:
        with outbox._write() as db:
            store.save(db, [_record(m) for m in mids], outbox.debug_keep)


def test_the_ring_keeps_the_last_messages_newest_first_across_its_turn(tmp_path: Path) -> None:
    """Slots are written over as the ring turns: the list is the last `keep`, newest first, whichever slot the
    newest is in; a round of more than `keep` keeps its last; search and limits read across the turn."""
    outbox = Outbox(tmp_path / "o.sqlite3", debug_keep=4)
    _save_rounds(outbox, [["a1", "a2", "a3"], ["b1", "b2"], ["c1"]])
    db = outbox._db()
    assert _listed(db) == ["c1", "b2", "b1", "a3"]
    assert _listed(db, limit=3) == ["c1", "b2", "b1"]  # the newest is at slot 1, the next two wrap back to 0, 3
    assert db.execute("SELECT COUNT(*) FROM debug_messages").fetchone()[0] == 4  # no more rows than slots
    assert _listed(db, search="b") == []  # exact ids, users and event names only, or an event name's start
    assert _listed(db, search="Sho", limit=2) == ["c1", "b2"]
    assert store.detail(db, "a3", {}, lambda url, _: url)["messageId"] == "a3"
    assert store.detail(db, "a2", {}, lambda url, _: url) is None  # written over
    assert [row["id"] for row in store.summaries(db, search=None, destination=None, status=None, limit=2)] == [5, 4]
    _save_rounds(outbox, [[f"d{n}" for n in range(6)]])  # more than the ring holds: its last four
    assert _listed(db) == ["d5", "d4", "d3", "d2"]
    # The same message mapped again (a replay): the newest record is the one shown.
    _save_rounds(outbox, [["d3"]])
    assert _listed(db) == ["d3", "d5", "d4", "d3"]
    assert store.detail(db, "d3", {}, lambda url, _: url)["id"] == 12  # d2..d5 took 8..11: the first two are skipped


def test_a_file_from_before_the_ring_and_a_new_keep_are_laid_out_again(tmp_path: Path) -> None:
    """A file written before the ring (ids in the order mapped, no numbers) is listed as it was, and laid out as
    a ring by the next round, keeping its newest messages; a smaller or larger `keep` is laid out again too."""
    path = tmp_path / "o.sqlite3"
    Outbox(path)  # the schema
    db = Outbox(path)._db()
    db.execute("DROP TABLE debug_ring")  # as the file was: the ids the order, no seq
    db.executemany(
        "INSERT INTO debug_messages (id, message_id, type, event, user_id, anonymous_id, source, received_at,"
        " mapped_at, body, outcomes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(rid, *_record(f"old{rid}")) for rid in (7, 8, 9, 12)],
    )
    db.execute("ALTER TABLE debug_messages DROP COLUMN seq")
    outbox = Outbox(path, debug_keep=3)  # adds the column and the ring's table
    db = outbox._db()
    assert _listed(db) == ["old12", "old9", "old8", "old7"]  # before any round: as it was
    _save_rounds(outbox, [["new1"]])
    assert _listed(db) == ["new1", "old12", "old9"]
    _save_rounds(outbox, [["new2"]])
    assert _listed(db) == ["new2", "new1", "old12"]
    outbox.debug_keep = 2  # a smaller ring: the newest two stay
    _save_rounds(outbox, [["new3"]])
    assert _listed(db) == ["new3", "new2"]
    outbox.debug_keep = 5  # a larger one: room for more
    _save_rounds(outbox, [["new4", "new5", "new6"]])
    assert _listed(db) == ["new6", "new5", "new4", "new3", "new2"]
    _save_rounds(outbox, [["new7"]])
    assert _listed(db) == ["new7", "new6", "new5", "new4", "new3"]
    assert sorted(rid for (rid,) in db.execute("SELECT id FROM debug_messages")) == [0, 1, 2, 3, 4]


def test_a_page_or_screen_call_is_listed_and_found_by_its_name(tmp_path: Path) -> None:
    """The list's event column holds a track's event and a page or screen call's name (its `name`, else
    `properties.name`, without surrounding spaces; never another field), which search finds too."""
    outbox = Outbox(tmp_path / "o.sqlite3", debug_keep=10)
    calls = [{"type": "Page", "name": " Checkout ", "event": "Other", "anonymousId": "a"},
             {"type": "screen", "name": "   ", "properties": {"name": "Cart"}, "event": 7},
             {"type": "identify", "name": "Ann", "userId": "u"}]  # fmt: skip
    records = [store.record(m, None, "send", 1.0, {}, message_id=f"m{i}", now=1.0) for i, m in enumerate(calls)]
    with outbox._write() as db:
        store.save(db, records, outbox.debug_keep)
    listed = store.summaries(outbox._db(), search=None, destination=None, status=None, limit=10)
    assert [(m["type"], m["event"]) for m in listed] == [("identify", None), ("screen", "Cart"), ("Page", "Checkout")]
    assert _listed(outbox._db(), search="Check") == ["m0"]  # the start of a name, as of an event name


def test_the_list_is_read_from_one_state_of_the_file_while_a_round_commits(tmp_path: Path) -> None:
    """A round committed between the read of the ring's state and the read of its slots must not be half seen (the
    newest behind older ones): the list is read in one transaction."""
    outbox = Outbox(tmp_path / "o.sqlite3", debug_keep=4)
    _save_rounds(outbox, [["m0", "m1"]])
    writer = Outbox(tmp_path / "o.sqlite3", debug_keep=4)  # another connection, as the mapping process has
    reader = outbox._db()
    newest_first = store._newest_first

    def a_round_commits_meanwhile(db: Any) -> Any:
        parts = newest_first(db)
        _save_rounds(writer, [["x0", "x1"]])
        return parts

    store._newest_first = a_round_commits_meanwhile
    try:
        assert _listed(reader) == ["m1", "m0"]  # as the file was when the read began
    finally:
        store._newest_first = newest_first
    assert _listed(reader) == ["x1", "x0", "m1", "m0"]
    # The detail too: the message's row, its requests and its attempts, from one state of the file.
    in_packs, seen = store._in_packs, []

    def noting(db: Any, pairs: Any) -> Any:
        seen.append(db.in_transaction)
        return in_packs(db, pairs)

    store._in_packs = noting
    try:
        assert store.detail(reader, "x1", {}, lambda url, _: url)["messageId"] == "x1"
    finally:
        store._in_packs = in_packs
    assert seen == [True]
    assert not reader.in_transaction  # and closed after


def _append_as_before_the_ring(outbox: Outbox, mids: list[str], keep: int) -> None:
    """Rows as an earlier version writes them into the same file: appended after the highest id, no seq, then
    those `keep` below the highest deleted."""
    with outbox._write() as db:
        db.executemany(
            "INSERT INTO debug_messages (message_id, type, event, user_id, anonymous_id, source, received_at,"
            " mapped_at, body, outcomes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [_record(m) for m in mids],
        )
        db.execute("DELETE FROM debug_messages WHERE id <= (SELECT MAX(id) FROM debug_messages) - ?", (keep,))


@pytest.mark.parametrize("first", [2, 4, 10])  # the ring not yet full, full, turned several times
def test_rows_an_earlier_version_wrote_since_are_laid_out_again(tmp_path: Path, first: int) -> None:
    """Back to an earlier version after a drain, and forward again: the rows it appended are laid out with the
    ring's by the next round, the newest kept in order, none left beyond the ring (where `prune` would take them for
    kept messages forever), and no id goes back or names another message."""
    outbox = Outbox(tmp_path / "o.sqlite3", debug_keep=3)
    _save_rounds(outbox, [[f"a{n}"] for n in range(first)])
    _append_as_before_the_ring(outbox, ["b0", "b1"], keep=3)
    named: dict[int, str] = {}
    highest = -1
    for n in range(4):
        _save_rounds(outbox, [[f"c{n}"]])
        expected = [f"c{k}" for k in range(n, -1, -1)] + ["b1", "b0", f"a{first - 1}"]
        listed = store.summaries(outbox._db(), search=None, destination=None, status=None, limit=50)
        assert [m["messageId"] for m in listed] == expected[:3]
        ids = [m["id"] for m in listed]
        assert ids == sorted(ids, reverse=True)
        assert ids[0] > highest  # the newest has the highest number yet
        highest = ids[0]
        for m in listed:
            assert named.setdefault(m["id"], m["messageId"]) == m["messageId"]  # an id names one message
    db = outbox._db()
    assert sorted(rid for (rid,) in db.execute("SELECT id FROM debug_messages")) == [0, 1, 2]
    assert db.execute("SELECT COUNT(*) FROM debug_messages WHERE seq IS NULL").fetchone()[0] == 0


def test_a_new_keep_keeps_each_message_its_number(tmp_path: Path) -> None:
    """The API's id of a kept message does not change when `keep` does: the numbers run on."""
    outbox = Outbox(tmp_path / "o.sqlite3", debug_keep=4)
    _save_rounds(outbox, [[f"m{n}" for n in range(6)]])
    db = outbox._db()

    def ids() -> dict[str, int]:
        listed = store.summaries(db, search=None, destination=None, status=None, limit=50)
        return {m["messageId"]: m["id"] for m in listed}

    assert ids() == {"m5": 5, "m4": 4, "m3": 3, "m2": 2}
    outbox.debug_keep = 3
    _save_rounds(outbox, [["m6"]])
    assert ids() == {"m6": 6, "m5": 5, "m4": 4}
    outbox.debug_keep = 5
    _save_rounds(outbox, [["m7"]])
    assert ids() == {"m7": 7, "m6": 6, "m5": 5, "m4": 4}
