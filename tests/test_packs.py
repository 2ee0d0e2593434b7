"""Packs: an instance's requests from one stored round, one row while everything goes well, a row of their own
per request the moment anything else happens. Outbox calls on a real SQLite file, outcomes as the workers
record them; the end-to-end runs (chaos, delivery, reliability) drive the same code through real processes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from destinations.base import HttpRequest
from destinations.delivery import Outbox
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


def test_users_with_rows_waiting_are_held_when_a_pack_goes_out(outbox: Outbox) -> None:
    now = time.time()
    outbox.enqueue([message(1, "a")])
    (batch,) = claim(outbox, now)
    outbox.retry(batch, "503", "busy", delay=60, retry_window=3600, min_attempts=3, backoff_base=1, backoff_cap=1,
                 now=now)  # fmt: skip
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


def test_a_pack_out_is_renewed_while_its_process_sends_it_and_given_up_once_taken(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    mine, theirs = Outbox(path, pack_size=4), Outbox(path, pack_size=4)
    mine.enqueue([message(1, "a")])
    (batch,) = mine.claim("shop", max_batches=4, batch_size=100, batch_bytes=10**6, lease=1.0)
    time.sleep(0.4)  # past a third of the lease: the delivery loop renews it
    mine.renew_packs()
    time.sleep(0.7)  # past the lease as claimed, not as renewed
    assert claim(theirs, time.time()) == []
    assert mine.current(batch)
    (taken,) = claim(theirs, time.time() + 60)  # as if this process had stalled past its lease
    time.sleep(0.4)
    mine.renew_packs()
    assert not mine.current(batch)  # not sent: the other claim sends it
    assert mine.delivered(batch, "200") == 0
    assert theirs.delivered(taken, "200") == 1
