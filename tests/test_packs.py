"""Packs: an instance's requests from one stored round, one row while everything goes well, a row of their own
per request the moment anything else happens. Outbox calls on a real SQLite file, outcomes as the workers
record them; the end-to-end runs (chaos, delivery, reliability) drive the same code through real processes."""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_reliability import gone_pid

from destinations.base import HttpRequest
from destinations.delivery import Outbox
from destinations.delivery import outbox as outbox_module
from destinations.delivery.outbox import PACKS_OUT, MessageRequests, Row

BATCHED = "https://vendor.example/batch"
SINGLE = "https://vendor.example/one"
LEASE = 30.0


def request(n: int, *, batchable: bool = True) -> HttpRequest:
    return HttpRequest("POST", BATCHED if batchable else SINGLE, {}, {}, [{"n": n}] if batchable else {"n": n},
                       batchable)  # fmt: skip


def message(n: int, user: str, *, instance: str = "shop", requests: int = 1, batchable: bool = True) -> MessageRequests:
    return MessageRequests([(instance, f"m{n}", user, [request(n * 10 + i, batchable=batchable)
                                                        for i in range(requests)])])  # fmt: skip


def claim(outbox: Outbox, now: float, *, batches: int = 4, size: int = 100, instance: str = "shop") -> list[list[Row]]:
    return outbox.claim(instance, max_batches=batches, batch_size=size, batch_bytes=10**6, lease=LEASE, now=now)


def ids(batch: list[Row]) -> list[tuple[str, int]]:
    return [(r.message_id, r.index) for r in batch]


def rows(outbox: Outbox) -> list[tuple[Any, ...]]:
    return list(
        outbox._db().execute("SELECT message_id, idx, user_key, state, attempts, solo FROM requests ORDER BY id")
    )


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.sqlite3", pack_size=4)


def test_a_round_is_stored_as_packs_of_whole_messages(outbox: Outbox) -> None:
    # pack_size 4: m1 (1) + m2 (3) fill the first pack; m3 (2) cannot join m4 (3) within 4: three packs.
    result = outbox.enqueue([message(1, "a"), message(2, "b", requests=3), message(3, "c", requests=2),
                             message(4, "d", requests=3)])  # fmt: skip
    assert result.accepted == {"shop": 9}
    db = outbox._db()
    assert list(db.execute("SELECT count, state FROM packs ORDER BY id")) == [(4, "pending"), (2, "pending"),
                                                                             (3, "pending")]  # fmt: skip
    keys = {m: (n, p) for m, n, p in db.execute("SELECT message_id, count, pack FROM request_keys")}
    first, second, third = (p for (p,) in db.execute("SELECT id FROM packs ORDER BY id"))
    assert keys == {"m1": (1, first), "m2": (3, first), "m3": (2, second), "m4": (3, third)}
    assert rows(outbox) == []
    assert outbox.pending_count() == 9
    assert outbox.stats()["shop"]["pending"] == 9
    assert [(r["message_id"], r["index"]) for r in outbox.waiting()] == [
        ("m1", 0), ("m2", 0), ("m2", 1), ("m2", 2), ("m3", 0), ("m3", 1), ("m4", 0), ("m4", 1), ("m4", 2)
    ]  # fmt: skip


def test_a_message_stored_again_is_a_duplicate_in_a_pack_or_a_row(tmp_path: Path) -> None:
    packed = Outbox(tmp_path / "outbox.sqlite3", pack_size=4)
    assert packed.enqueue([message(1, "a", requests=2), message(1, "a", requests=2)]).duplicates == 2  # same round
    assert packed.enqueue([message(1, "a", requests=2)]).duplicates == 2  # a later round
    as_rows = Outbox(tmp_path / "outbox.sqlite3", pack_size=0)  # the same file, storing rows
    assert as_rows.enqueue([message(1, "a", requests=2), message(2, "b")]).accepted == {"shop": 1}
    assert packed.enqueue([message(2, "b")]).duplicates == 1
    assert packed.stored_count("shop", "m1") == 2
    assert packed.pending_count() == 3


def test_a_pack_delivered_whole_is_one_row_and_keys(outbox: Outbox) -> None:
    now = time.time()
    outbox.enqueue([message(1, "a"), message(2, "b"), message(3, "c")])
    (batch,) = claim(outbox, now)
    assert ids(batch) == [("m1", 0), ("m2", 0), ("m3", 0)]
    assert all(r.pack and r.lease == now + LEASE for r in batch)
    assert claim(outbox, now) == []  # nothing else is stored
    assert outbox.delivered(batch, "200") == 3
    db = outbox._db()
    assert list(db.execute("SELECT state, delivered, last_status, lease_until FROM packs")) == [("done", 3, "200", 0)]
    assert list(db.execute("SELECT COUNT(*) FROM pack_entries")) == [(0,)]  # the text goes once delivered
    assert rows(outbox) == []
    assert outbox.stats()["shop"]["delivered"] == 3
    assert outbox.pending_count() == 0


def test_a_packs_entries_are_stored_compressed_and_plain_text_ones_still_read(outbox: Outbox) -> None:
    now = time.time()
    outbox.enqueue([message(1, "a"), message(2, "b")])
    db = outbox._db()
    (stored,) = db.execute("SELECT entries FROM pack_entries").fetchone()
    assert isinstance(stored, bytes)
    envelopes, mids, indexes, users, bodies, sizes, numbers = json.loads(zlib.decompress(stored))
    assert (mids, indexes, users, numbers) == (["m1", "m2"], [0, 0], ["a", "b"], [0, 0])
    # A pack an earlier version stored as plain text (an entry a list) is claimed and delivered the same way.
    text = json.dumps([envelopes, [list(e) for e in zip(mids, indexes, users, bodies, sizes, numbers, strict=True)]])
    db.execute("UPDATE pack_entries SET entries = ?", (text,))
    assert [(r["message_id"], r["index"]) for r in outbox.waiting()] == [("m1", 0), ("m2", 0)]
    (batch,) = claim(outbox, now)
    assert ids(batch) == [("m1", 0), ("m2", 0)]
    assert [r.body for r in batch] == ['[{"n":10}]', '[{"n":20}]']
    assert outbox.delivered(batch, "200") == 2
    assert outbox.pending_count() == 0


def test_a_pack_whose_rows_cannot_be_made_goes_again_after_its_lease(
    outbox: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.time()
    outbox.enqueue([message(1, "a"), message(2, "b")])

    def broken(*_: Any) -> Any:
        raise MemoryError

    with monkeypatch.context() as patch:
        patch.setattr(outbox_module, "_pack_rows", broken)
        with pytest.raises(MemoryError):
            claim(outbox, now)
    outbox.renew_packs(now + LEASE / 2)  # given up: not renewed, so not kept out
    assert claim(outbox, now + 1) == []  # its lease has not ended yet
    (batch,) = claim(outbox, now + LEASE + 1)
    assert ids(batch) == [("m1", 0), ("m2", 0)]


def test_a_users_second_request_waits_for_the_first_across_batches(outbox: Outbox) -> None:
    # Unbatched: each request is a batch of its own, so a's second request cannot go beside its first.
    now = time.time()
    outbox.enqueue([message(1, "a", batchable=False), message(2, "b", batchable=False),
                    message(3, "a", batchable=False)])  # fmt: skip
    batches = claim(outbox, now)
    assert [ids(b) for b in batches] == [[("m1", 0)], [("m2", 0)]]
    for b in batches:
        outbox.delivered(b, "200")
    # The pack is done; a's held request is a row now, and goes next.
    assert rows(outbox) == [("m3", 0, "a", "pending", 0, 0)]
    (batch,) = claim(outbox, now + 1)
    assert ids(batch) == [("m3", 0)]
    assert batch[0].pack == 0  # a row of its own
    assert batch[0].id > 0
    outbox.delivered(batch, "200")
    assert outbox.pending_count() == 0
    assert outbox.stats()["shop"]["delivered"] == 3


def test_a_failed_request_and_its_users_later_ones_become_rows_in_order(outbox: Outbox) -> None:
    now = time.time()
    outbox.enqueue([message(1, "a", batchable=False), message(2, "b", batchable=False),
                    message(3, "a", batchable=False), message(4, "c", batchable=False)])  # fmt: skip
    first, b_batch, c_batch = claim(outbox, now)
    assert [ids(x) for x in (first, b_batch, c_batch)] == [[("m1", 0)], [("m2", 0)], [("m4", 0)]]
    outbox.delivered(b_batch, "200")
    assert rows(outbox) == []  # written once every sent request has its outcome
    outbox.retry(first, "503", "busy", delay=5, retry_window=3600, min_attempts=3, backoff_base=1, backoff_cap=1,
                 now=now)  # fmt: skip
    outbox.dead(c_batch, "400", "bad", now=now)
    # a's failed request, then a's held one behind it; c's dead one.
    assert rows(outbox) == [("m1", 0, "a", "pending", 1, 0), ("m3", 0, "a", "pending", 0, 0),
                            ("m4", 0, "c", "dead", 1, 0)]  # fmt: skip
    assert outbox.next_due("shop") == pytest.approx(now + 5)
    assert claim(outbox, now + 1) == []  # a waits behind its retry: nothing else is due
    (again,) = claim(outbox, now + 6)
    assert ids(again) == [("m1", 0)]  # the retry first; m3 only beside or after it
    stats = outbox.stats(now=now + 6)["shop"]
    assert (stats["delivered"], stats["dead"], stats["pending"], stats["retrying"]) == (1, 1, 2, 1)
    assert [r["message_id"] for r in outbox.dead_rows()] == ["m4"]


def test_a_refused_batch_from_a_pack_is_split_into_rows_sent_alone(outbox: Outbox) -> None:
    now = time.time()
    outbox.enqueue([message(1, "a"), message(2, "b")])
    (batch,) = claim(outbox, now)
    outbox.split(batch, "400", "one bad event", now=now)
    assert rows(outbox) == [("m1", 0, "a", "pending", 1, 1), ("m2", 0, "b", "pending", 1, 1)]
    assert [ids(b) for b in claim(outbox, now)] == [[("m1", 0)], [("m2", 0)]]  # solo: never merged again


def a_retrying(outbox: Outbox, now: float, delay: float) -> None:
    """User a's m1 sent from a pack, answered 503: a row waiting `delay` seconds to go again."""
    outbox.enqueue([message(1, "a")])
    (batch,) = claim(outbox, now)
    outbox.retry(batch, "503", "busy", delay=delay, retry_window=3600, min_attempts=3, backoff_base=1, backoff_cap=1,
                 now=now)  # fmt: skip


def test_users_with_rows_waiting_are_held_when_a_pack_goes_out(outbox: Outbox) -> None:
    now = time.time()
    a_retrying(outbox, now, delay=60)
    outbox.enqueue([message(2, "a"), message(3, "b")])
    (batch,) = claim(outbox, now + 1)  # a is waiting to retry: only b goes
    assert ids(batch) == [("m3", 0)]
    outbox.delivered(batch, "200")
    assert rows(outbox) == [("m1", 0, "a", "pending", 1, 0), ("m2", 0, "a", "pending", 0, 0)]


def test_the_next_pack_goes_beside_this_process_own_and_is_written_after_it(outbox: Outbox) -> None:
    now = time.time()
    outbox.enqueue([message(1, "a", requests=4)])  # one full pack
    outbox.enqueue([message(2, "a"), message(3, "b")])  # the next: a is out in the first
    (first,) = claim(outbox, now)
    (second,) = claim(outbox, now)
    assert ids(second) == [("m3", 0)]  # a's request is held: its user is out in the first pack
    outbox.delivered(second, "200")
    assert rows(outbox) == []  # the second waits for the first: its held rows must follow the first's
    assert outbox._db().execute("SELECT COUNT(*) FROM packs WHERE state = 'done'").fetchone() == (0,)
    outbox.retry(first, "503", "busy", delay=1, retry_window=3600, min_attempts=3, backoff_base=1, backoff_cap=1,
                 now=now)  # fmt: skip
    assert rows(outbox) == [("m1", i, "a", "pending", 1, 0) for i in range(4)] + [("m2", 0, "a", "pending", 0, 0)]
    assert outbox.stats()["shop"]["delivered"] == 1


def test_a_process_has_at_most_so_many_packs_out(outbox: Outbox) -> None:
    now = time.time()
    for n in range(PACKS_OUT + 1):
        outbox.enqueue([message(n, f"u{n}")])
    claimed = [claim(outbox, now) for _ in range(PACKS_OUT)]
    assert all(claimed)
    assert claim(outbox, now) == []


def test_another_process_pack_out_holds_everything_back_until_its_lease_ends(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    mine, theirs = Outbox(path, pack_size=4), Outbox(path, pack_size=4)  # two processes' outboxes
    now = time.time()
    mine.enqueue([message(1, "a")])
    mine.enqueue([message(2, "b")])
    (late,) = claim(theirs, now)
    assert claim(mine, now) == []  # their pack is out: its users are unknown here, so nothing goes beside it
    (current,) = claim(mine, now + LEASE + 1)  # their lease ended: the oldest pack is anyone's again
    assert ids(current) == ids(late) == [("m1", 0)]
    assert theirs.delivered(late, "200") == 0  # void: the pack is claimed by another since
    assert mine.delivered(current, "200") == 1
    assert list(mine._db().execute("SELECT delivered FROM packs ORDER BY id")) == [(1,), (0,)]


def test_a_batch_given_back_unsent_becomes_a_row_as_it_was(outbox: Outbox) -> None:
    now = time.time()
    outbox.enqueue([message(1, "a"), message(2, "b")])
    (batch,) = claim(outbox, now)
    outbox.release(batch)
    assert rows(outbox) == [("m1", 0, "a", "pending", 0, 0), ("m2", 0, "b", "pending", 0, 0)]
    assert outbox.next_due("shop") == pytest.approx(time.time(), abs=5)


def test_a_file_from_before_packs_keeps_deduping_what_it_stored(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    Outbox(path, pack_size=0).enqueue([message(1, "a", requests=2)])
    with sqlite3.connect(path) as db:  # as the previous version left it: rows, no keys
        db.execute("DROP TABLE request_keys")
    db.close()
    again = Outbox(path, pack_size=4)
    assert again.enqueue([message(1, "a", requests=2), message(2, "b")]).duplicates == 2
    assert again.stored_count("shop", "m1") == 2
    assert again.pending_count() == 3


def test_a_pack_out_is_renewed_while_its_process_sends_it_and_given_up_once_lapsed(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    mine, theirs = Outbox(path, pack_size=4), Outbox(path, pack_size=4)
    now = time.time()
    mine.enqueue([message(1, "a")])
    (batch,) = claim(mine, now)  # out until now + 30
    mine.renew_packs(now=now + 5)  # not a third of the lease yet: nothing to do
    mine.renew_packs(now=now + 11)  # past a third: out until now + 41
    assert claim(theirs, now + 35) == []  # past the lease as claimed, not as renewed
    assert mine.current(batch)
    mine.renew_packs(now=now + 50)  # this process stalled past its lease: it is not brought back
    assert not mine.current(batch)  # so its batches are not sent: the next claim sends them
    assert mine.delivered(batch, "200") == 0
    (taken,) = claim(theirs, now + 51)
    assert theirs.delivered(taken, "200") == 1


def test_a_process_that_stalled_past_its_packs_writes_none_of_them(tmp_path: Path) -> None:
    """A had packs P1 (a's m1) and P2 (a's m2, held behind P1, and b's m3) out and stalled past both leases; B took
    P1. Writing P2 now would put a's m2 as a row before m1's outcome: a's order would be lost."""
    path = tmp_path / "outbox.sqlite3"
    a_process, b_process = Outbox(path, pack_size=4), Outbox(path, pack_size=4)
    now = time.time()
    a_process.enqueue([message(1, "a", batchable=False)])
    a_process.enqueue([message(2, "a", batchable=False), message(3, "b", batchable=False)])
    (p1,) = claim(a_process, now)
    (p2,) = claim(a_process, now)
    assert (ids(p1), ids(p2)) == ([("m1", 0)], [("m3", 0)])  # m2 held: a is out in P1
    (b1,) = claim(b_process, now + LEASE + 1)  # both of A's leases ended; B takes the oldest
    assert ids(b1) == [("m1", 0)]
    a_process.renew_packs(now=now + LEASE + 2)
    assert not a_process.current(p1)
    assert not a_process.current(p2)  # given up with the pack before it
    assert a_process.delivered(p2, "200") == 0
    assert rows(a_process) == []  # nothing of P2 written
    b_process.retry(b1, "503", "busy", delay=600, retry_window=3600, min_attempts=3, backoff_base=1,
                    backoff_cap=1, now=now + LEASE + 3)  # fmt: skip
    assert rows(b_process) == [("m1", 0, "a", "pending", 1, 0)]
    # P2 goes again, whole, after its lease: a's m2 held behind m1's retry row, b's m3 sent.
    (again,) = claim(b_process, now + 2 * LEASE + 1)
    assert ids(again) == [("m3", 0)]
    b_process.delivered(again, "200")
    assert rows(b_process) == [("m1", 0, "a", "pending", 1, 0), ("m2", 0, "a", "pending", 0, 0)]


def test_rows_go_out_beside_this_process_packs_and_wait_only_for_their_own_users(outbox: Outbox) -> None:
    now = time.time()
    a_retrying(outbox, now, delay=1)
    outbox.enqueue([message(2, "b"), message(3, "a")])  # a's m3 is held behind its row
    outbox.enqueue([message(4, "c")])
    (p2,) = claim(outbox, now + 0.5)  # a's row is not due yet: the next pack goes
    assert ids(p2) == [("m2", 0)]
    (row,) = claim(outbox, now + 2)  # due now, and a has nothing out: a's row goes beside the pack
    assert ids(row) == [("m1", 0)]
    assert row[0].pack == 0


def test_a_user_out_in_a_pack_keeps_its_rows_waiting(outbox: Outbox) -> None:
    now = time.time()
    outbox.enqueue([message(1, "a", batchable=False), message(2, "a", batchable=False)])  # m2 held behind m1
    outbox.enqueue([message(3, "b", batchable=False)])
    (m1,) = claim(outbox, now)
    (m3,) = claim(outbox, now)  # the next pack; a is out, and has no row yet
    assert (ids(m1), ids(m3)) == ([("m1", 0)], [("m3", 0)])
    outbox.delivered(m3, "200")
    assert rows(outbox) == []  # the second pack waits for the first
    outbox.delivered(m1, "200")
    assert rows(outbox) == [("m2", 0, "a", "pending", 0, 0)]
    (m2,) = claim(outbox, time.time() + 1)
    assert ids(m2) == [("m2", 0)]


def test_a_pack_whose_every_request_is_held_waits_for_the_packs_before_it(outbox: Outbox) -> None:
    now = time.time()
    outbox.enqueue([message(1, "a", requests=4, batchable=False)])
    outbox.enqueue([message(2, "a", batchable=False)])
    batches = claim(outbox, now)
    assert [ids(b) for b in batches] == [[("m1", 0)]]  # the rest of a's m1 held behind its first request
    assert claim(outbox, now) == []  # the second pack: all of it held (a is out), done once the first is
    outbox.delivered(batches[0], "200")
    assert rows(outbox) == [("m1", i, "a", "pending", 0, 0) for i in (1, 2, 3)] + [("m2", 0, "a", "pending", 0, 0)]
    assert outbox._db().execute("SELECT state FROM packs ORDER BY id").fetchall() == [("done",), ("done",)]


def test_a_pack_of_a_process_gone_is_taken_over_at_once(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    mine, gone = Outbox(path, pack_size=4), Outbox(path, pack_size=4)
    gone._holder = gone._holder._replace(pid=gone_pid())  # as if its process had been SIGKILLed
    now = time.time()
    mine.enqueue([message(1, "a")])
    claim(gone, now)
    (taken,) = claim(mine, now + 1)  # its lease runs for 29 s more, but nobody will renew it
    assert ids(taken) == [("m1", 0)]


def test_a_message_sent_again_after_its_key_is_pruned_is_not_lost_to_an_old_row(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    outbox = Outbox(path, pack_size=4, dedupe_window=60)
    now = time.time()
    outbox.enqueue([message(1, "a")], now=now)
    (batch,) = claim(outbox, now)
    outbox.dead(batch, "400", "bad", now=now)  # a dead letter: kept until replayed, its key with it
    outbox.prune(now=now + 3600)
    assert outbox.stored_count("shop", "m1") == 1
    assert outbox.enqueue([message(1, "a")], now=now + 3600).duplicates == 1
    # A delivered message's key goes with the window; the same messageId later is a new message, delivered.
    outbox.enqueue([message(2, "b")], now=now)
    (batch,) = claim(outbox, now)
    outbox.delivered(batch, "200", now=now)
    outbox.prune(now=now + 3600)
    assert outbox.stored_count("shop", "m2") == 0
    assert outbox.enqueue([message(2, "b")], now=now + 3600).accepted == {"shop": 1}


def test_keys_of_a_pack_still_waiting_outlive_the_window(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", pack_size=4, dedupe_window=60)
    now = time.time()
    outbox.enqueue([message(1, "a")], now=now)
    outbox.prune(now=now + 3600)  # the instance's workers were down all along
    assert outbox.enqueue([message(1, "a")], now=now + 3600).duplicates == 1
    assert outbox.pending_count() == 1


def test_a_pruned_pack_takes_its_entries_with_it(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", pack_size=4, dedupe_window=60, debug_keep=10)  # entries kept
    now = time.time()
    outbox.enqueue([message(1, "a")], now=now)
    (batch,) = claim(outbox, now)
    outbox.delivered(batch, "200", now=now)
    assert outbox._db().execute("SELECT COUNT(*) FROM pack_entries").fetchone() == (1,)
    outbox.prune(now=now + 3600)
    assert outbox._db().execute("SELECT COUNT(*) FROM packs").fetchone() == (0,)
    assert outbox._db().execute("SELECT COUNT(*) FROM pack_entries").fetchone() == (0,)


def test_a_user_held_in_a_pack_out_is_held_in_the_next_one_too(outbox: Outbox) -> None:
    """a has a row out when pack P1 goes: a's request in P1 is held (a row once P1 is written). The next pack, sent
    beside P1, must hold a's later request as well, or it would reach the vendor before the one P1 holds."""
    now = time.time()
    outbox.enqueue([message(1, "a", batchable=False)])
    (first,) = claim(outbox, now)
    outbox.release(first)  # a's m1 is a row now
    (row,) = claim(outbox, now + 1)  # and out
    assert ids(row) == [("m1", 0)]
    outbox.enqueue([message(2, "a", batchable=False), message(3, "b", batchable=False)])  # P1
    outbox.enqueue([message(4, "a", batchable=False), message(5, "c", batchable=False)])  # P2
    (p1,) = claim(outbox, now + 1)
    assert ids(p1) == [("m3", 0)]  # a's m2 held: a has a row out
    outbox.delivered(row, "200")  # a has no row left; P1 still holds a's m2
    (p2,) = claim(outbox, now + 1)
    assert ids(p2) == [("m5", 0)]  # so a's m4 is held too
    outbox.delivered(p2, "200")
    outbox.delivered(p1, "200")
    assert [r[:2] for r in rows(outbox) if r[3] == "pending"] == [("m2", 0), ("m4", 0)]


@given(
    sizes=st.lists(st.integers(1, 12), max_size=60),
    batch_size=st.integers(1, 12),
    batch_bytes=st.integers(1, 60),
    batchable=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_a_pack_of_one_request_a_user_is_batched_as_the_general_grouping_would(
    sizes: list[int], batch_size: int, batch_bytes: int, batchable: bool
) -> None:
    """The usual pack (a request a user, none held, one batch key or none batchable) takes a shortcut past
    `_group`: the same batches, cut at batch_size or before batch_bytes, a request alone when not batchable."""
    candidates = [(i, f"u{i}", batchable, "k", 0, 0.0, 0.0, size) for i, size in enumerate(sizes)]
    general = outbox_module._group(candidates, 0.0, len(sizes), batch_size, batch_bytes, set())
    shortcut = outbox_module._consecutive(sizes, batch_size if batchable else 1, batch_bytes)
    assert shortcut == general


def test_a_pack_of_several_endpoints_goes_in_a_batch_for_each(tmp_path: Path) -> None:
    """One request a user, none held, but two batch keys (another Origin header) and a request that takes no
    batch: each endpoint's requests share a batch of their own, and the unbatched one goes alone."""
    outbox = Outbox(tmp_path / "outbox.sqlite3", pack_size=10)
    other = HttpRequest("POST", BATCHED, {}, {"Origin": "https://b.example"}, [{"n": 99}], batchable=True)
    outbox.enqueue([message(1, "a"), MessageRequests([("shop", "m2", "b", [other])]), message(3, "c"),
                    message(4, "d", batchable=False), message(5, "e")])  # fmt: skip
    batches = claim(outbox, 1000.0, batches=10)
    assert sorted(ids(b) for b in batches) == [[("m1", 0), ("m3", 0), ("m5", 0)], [("m2", 0)], [("m4", 0)]]
    (alone,) = [b for b in batches if ids(b) == [("m2", 0)]]
    assert alone[0].headers == {"Origin": "https://b.example"}


def test_requests_differing_only_in_headers_keep_their_own(tmp_path: Path) -> None:
    """A round's envelopes are matched by their params and headers; past the few kept for one endpoint, each is
    made afresh, and every request keeps its own headers."""
    outbox = Outbox(tmp_path / "outbox.sqlite3", pack_size=100)
    sent = [HttpRequest("POST", BATCHED, {"site": str(n % 2)}, {"Origin": f"https://s{n}.example"}, [{"n": n}],
                        batchable=True) for n in range(12)]  # fmt: skip
    outbox.enqueue([MessageRequests([("shop", f"m{n}", f"u{n}", [r])]) for n, r in enumerate(sent)])
    batches = claim(outbox, 1000.0, batches=20)
    got = {r.message_id: (r.params, r.headers) for b in batches for r in b}
    assert got == {f"m{n}": ({"site": str(n % 2)}, {"Origin": f"https://s{n}.example"}) for n in range(12)}
    assert all(len(b) == 1 for b in batches)  # each its own endpoint: nothing merged across them


def test_a_requests_declared_secret_names_are_part_of_its_envelope(tmp_path: Path) -> None:
    """Equal params, but one request declares `access_token` secret: each keeps its own stored form (the declared
    one without the token, the other with it), never the other's."""
    outbox = Outbox(tmp_path / "outbox.sqlite3", pack_size=10)
    params = {"access_token": "tok-1234", "site": "s"}
    declared = HttpRequest("POST", BATCHED, params, {}, [{"n": 1}], batchable=True,
                           secret_names=frozenset({"access_token"}))  # fmt: skip
    plain = HttpRequest("POST", BATCHED, dict(params), {}, [{"n": 2}], batchable=True)
    outbox.enqueue([MessageRequests([("shop", "m1", "u1", [declared])]),
                    MessageRequests([("shop", "m2", "u2", [plain])])])  # fmt: skip
    got = {r.message_id: r.params for b in claim(outbox, 1000.0, batches=10) for r in b}
    assert got == {"m1": {"site": "s"}, "m2": params}
