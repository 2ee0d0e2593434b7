"""What the live debugger shows, kept in the outbox database: each recent message as received, what each
destination instance made of it, and every delivery attempt of its requests.

A mapping round writes one `debug_messages` row per message in the transaction that stores its requests
(so a message is shown once it is mapped, with outcomes that are true of the outbox), and keeps the last
`keep` of them: the table is a ring of `keep` slots, each new message written over the oldest (`save`). Each
recorded outcome of a request (delivered, retry, dead, split) adds a `debug_attempts` row in the transaction
that records it. Requests are kept as the vendor gets them with the destination's
declared secrets masked (`HttpRequest.to_dict(masked=True)`); vendor answers are the redacted excerpts the
outbox keeps; so nothing here holds a write key, a vendor key or the webhook secret.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ..spec import has_surrogate, json_text, message_type
from .packing import PackEntry, entries_of

SCHEMA = """
CREATE TABLE IF NOT EXISTS debug_messages (
    id           INTEGER PRIMARY KEY,  -- the slot in the ring: seq % keep
    seq          INTEGER,              -- the message's number, in the order mapped
    message_id   TEXT NOT NULL,
    type         TEXT,
    event        TEXT,
    user_id      TEXT,
    anonymous_id TEXT,
    source       TEXT,
    received_at  REAL,
    mapped_at    REAL NOT NULL,
    body         TEXT NOT NULL,
    outcomes     TEXT NOT NULL
);
-- No index on message_id: a lookup scans at most `keep` rows, and every message mapped would pay for one.
-- The ring's state: the next message's number, and the ring size the rows are laid out for.
CREATE TABLE IF NOT EXISTS debug_ring (
    id   INTEGER PRIMARY KEY CHECK (id = 0),
    next INTEGER NOT NULL,
    keep INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS debug_attempts (
    id          INTEGER PRIMARY KEY,
    destination TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    idx         INTEGER NOT NULL,
    at          REAL    NOT NULL,
    status      TEXT    NOT NULL,
    detail      TEXT,
    next_at     REAL
);
CREATE INDEX IF NOT EXISTS debug_attempts_message ON debug_attempts (message_id);
-- Delivered requests whose bodies the debugger keeps: what its housekeeping clears, found without a scan.
CREATE INDEX IF NOT EXISTS requests_kept_bodies ON requests (finished_at) WHERE state = 'delivered' AND body != '';
"""

# What a destination instance made of a message, as the page's badges name them.
STATUSES = ("delivered", "pending", "retrying", "filtered", "invalid", "dead")
BODY_LIMIT = 64 * 1024  # characters of a message kept for the page (Segment's limit is 32 KB)


def _text(value: Any) -> str | None:
    """A message's string field as the page shows it (None when absent or not text)."""
    return _storable(value) if isinstance(value, str) else None


def _storable(text: str) -> str:
    """Text SQLite can store: a lone surrogate (which no UTF-8 can hold) written as its escape."""
    if text.isascii() or not has_surrogate(text):  # nearly always: no copy of a message's whole text to ask
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def record(
    message: Any, body: str | None, source: str | None, received_at: float | None, outcomes: Mapping[str, Any], *,
    message_id: str, now: float,
) -> tuple[Any, ...]:  # fmt: skip
    """One `debug_messages` row: the message's labels (its event: a track's event, a page or screen call's name),
    the message as received (`body`, the stored JSON text; made from `message` when None; cut to BODY_LIMIT
    characters, and any lone surrogate escaped, so SQLite can store it) and the outcomes by instance."""
    labels = message if isinstance(message, dict) else {}
    event = _name(labels) if message_type(labels) in ("page", "screen") else labels.get("event")
    if body is None:
        try:
            body = json_text(message)
        except (TypeError, ValueError, RecursionError):  # a library caller's dict may hold any object
            body = json.dumps(str(message))
    if len(body) > BODY_LIMIT:
        body = json_text({"note": f"the message is {len(body)} characters; the first {BODY_LIMIT} are kept",
                           "start": body[:BODY_LIMIT]})  # fmt: skip
    return (
        _storable(message_id), _text(labels.get("type")), _text(event), _id(labels.get("userId")),
        _id(labels.get("anonymousId")), source, received_at, now, _storable(body), json_text(outcomes),
    )  # fmt: skip


def set_aside(row: tuple[Any, ...], reason: str) -> tuple[Any, ...]:
    """A record whose message was set aside (nothing stored for anyone): every outcome says why."""
    names = list(json.loads(row[-1])) or ["every destination"]
    return (*row[:-1], json_text({name: {"outcome": "set aside", "reason": reason} for name in names}))


def _name(call: dict[str, Any]) -> str | None:
    """What a page or screen call is named by: its `name`, else `properties.name` (analytics.js sends both), as
    text without surrounding spaces; None when neither names it."""
    properties = call.get("properties")
    for value in (call.get("name"), properties.get("name") if isinstance(properties, dict) else None):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _id(value: Any) -> str | None:
    return None if value is None or isinstance(value, bool) else _storable(str(value))


def save(db: sqlite3.Connection, rows: list[tuple[Any, ...]], keep: int) -> None:
    """Write a round's records and keep the last `keep` messages (inside the caller's transaction).

    Each message takes the slot `seq % keep`, over the oldest: rewriting the same pages costs SQLite less than
    appending rows and deleting as many from the other end."""
    state = db.execute("SELECT next, keep FROM debug_ring").fetchone()
    top = db.execute("SELECT MAX(id) FROM debug_messages").fetchone()[0]
    # Laid out for this `keep`, with every row in its slot: the highest slot is the last one filled. Else (a file
    # from before the ring, another `keep`, or rows an earlier version appended since) it is laid out again.
    if state is not None and state[1] == keep and top == (min(state[0], keep) - 1 if state[0] else None):
        first = state[0]
    else:
        first = _lay_out(db, keep, state[0] if state is not None else None)
    if len(rows) > keep:  # only the last `keep` are kept
        first += len(rows) - keep
        rows = rows[-keep:]
    db.executemany(
        "INSERT OR REPLACE INTO debug_messages (id, seq, message_id, type, event, user_id, anonymous_id, source,"
        " received_at, mapped_at, body, outcomes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [((first + i) % keep, first + i, *row) for i, row in enumerate(rows)],
    )
    db.execute("INSERT OR REPLACE INTO debug_ring (id, next, keep) VALUES (0, ?, ?)", (first + len(rows), keep))


def _lay_out(db: sqlite3.Connection, keep: int, next_number: int | None) -> int:
    """Lay the kept messages out as a ring of `keep` slots, the newest `keep` kept in order, the rest dropped;
    `next_number` is the ring's next number, None in a file from before the ring. Returns the next number, never
    lower than it was. Numbers (the API's ids) stay as they were wherever they run on, as a ring's do."""
    found = db.execute("SELECT id, seq FROM debug_messages").fetchall()
    # Rows without a number came before the ring (each numbered by its id, in the order mapped), or were appended
    # by an earlier version after the ring's last round: those follow the ring's rows, numbered on from its next.
    numbered = sorted((seq, rid) for rid, seq in found if seq is not None)
    plain = sorted(rid for rid, seq in found if seq is None)
    if next_number is None:
        numbered += [(rid, rid) for rid in plain]
    else:
        start = max(next_number, numbered[-1][0] + 1 if numbered else 0)
        numbered += [(start + i, rid) for i, rid in enumerate(plain)]
    cut = max(len(numbered) - keep, 0)
    db.executemany("DELETE FROM debug_messages WHERE id = ?", [(rid,) for _, rid in numbered[:cut]])
    kept = numbered[cut:]
    if not kept:
        return next_number or 0
    # The newest keeps its number; the others count down from it (as they are, when they run on).
    top = max(kept[-1][0], len(kept) - 1, (next_number or 0) - 1)
    first = top - len(kept) + 1
    db.execute("UPDATE debug_messages SET id = -1 - id")  # out of the slots' way first: ids are unique
    db.executemany(
        "UPDATE debug_messages SET id = ?, seq = ? WHERE id = ?",
        [((first + i) % keep, first + i, -1 - rid) for i, (_, rid) in enumerate(kept)],
    )
    return top + 1


@contextmanager
def _snapshot(db: sqlite3.Connection) -> Iterator[None]:
    """Several reads that must see one state of the file (a mapping round may commit in between): one read
    transaction, unless the caller has one open."""
    if db.in_transaction:
        yield
        return
    db.execute("BEGIN")
    try:
        yield
    finally:
        db.execute("COMMIT")


def _newest_first(db: sqlite3.Connection) -> list[tuple[str, tuple[Any, ...]]]:
    """(condition on id, its arguments) for each part of the table in turn, newest messages first, each read
    newest first by id: in a ring, the slots below the next one, then those from it on; before the ring, one."""
    state = db.execute("SELECT next, keep FROM debug_ring").fetchone()
    if state is None:
        return [("1", ())]
    head = state[0] % state[1]
    return [("id < ?", (head,)), ("id >= ?", (head,))]


def log_attempts(db: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    """(destination, messageId, index, at, status, detail, next retry) for each recorded outcome."""
    db.executemany(
        "INSERT INTO debug_attempts (destination, message_id, idx, at, status, detail, next_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        rows,
    )


def prune(db: sqlite3.Connection, chunk: int = 5000) -> int:
    """Attempts of messages no longer kept, and the bodies of their delivered requests (kept for the detail
    view while the debugger shows their message; the outbox needs only the row itself, for dedupe). Returns
    how many bodies it cleared: at most `chunk`, so the caller repeats it in short transactions.

    A kept message was mapped at or after the oldest kept one: an attempt, or a delivery, from before that
    moment is of a message no longer kept. Both are found from the old end: attempts by id, which grows with
    time; bodies through `requests_kept_bodies`, which holds only the delivered rows that still have one."""
    oldest = db.execute("SELECT MIN(mapped_at) FROM debug_messages").fetchone()[0]
    if oldest is None:
        oldest = float("inf")  # nothing kept: nothing to keep
    first = db.execute("SELECT id FROM debug_attempts WHERE at >= ? ORDER BY id LIMIT 1", (oldest,)).fetchone()
    if first is None:
        db.execute("DELETE FROM debug_attempts")
    else:
        db.execute("DELETE FROM debug_attempts WHERE id < ?", (first[0],))
    cleared = db.execute(
        "UPDATE requests SET body = '', params = '{}', headers = '{}' WHERE id IN (SELECT id FROM requests"
        " INDEXED BY requests_kept_bodies WHERE state = 'delivered' AND body != '' AND finished_at < ? LIMIT ?)",
        (oldest, chunk),
    ).rowcount
    # A pack stored before the oldest kept message was mapped holds none that is kept, however late it was
    # delivered (after a backlog, say). Only kept and waiting packs have entries: the join is short.
    packs = db.execute(
        "DELETE FROM pack_entries WHERE pack IN (SELECT pack FROM pack_entries JOIN packs ON packs.id = pack"
        " WHERE state = 'done' AND created_at < ? LIMIT ?)",
        (oldest, chunk),
    ).rowcount
    return cleared + packs


def _in_packs(
    db: sqlite3.Connection, pairs: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[tuple[int, str, int, PackEntry | None]]]:
    """(instance, messageId) -> [(index, state, attempts, entry)] of the requests a pack holds: pending while
    the pack is, else delivered (a request that was not is a row of its own since, and the row says more);
    the entry (a pack entry: messageId, index, user key, method, url, params, headers, body, ...) while kept."""
    by_instance: dict[str, list[str]] = {}
    for name, mid in pairs:
        by_instance.setdefault(name, []).append(mid)
    keys: dict[tuple[str, str], tuple[int, int]] = {}
    for name, ids in by_instance.items():
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            for mid, count, pack in db.execute(
                "SELECT message_id, count, pack FROM request_keys WHERE destination = ? AND pack IS NOT NULL"
                f" AND message_id IN ({','.join('?' * len(part))})",
                [name, *part],
            ):
                keys[(name, mid)] = (count, pack)
    packs = sorted({pack for _, pack in keys.values()})
    pending: set[int] = set()
    entries: dict[tuple[str, str], dict[int, PackEntry]] = {}
    for i in range(0, len(packs), 500):
        part = packs[i : i + 500]
        marks = ",".join("?" * len(part))
        pending.update(
            p for (p,) in db.execute(f"SELECT id FROM packs WHERE state = 'pending' AND id IN ({marks})", part)
        )
        for name, text in db.execute(
            "SELECT destination, entries FROM pack_entries JOIN packs ON packs.id = pack_entries.pack"
            f" WHERE pack IN ({marks})",
            part,
        ):
            for entry in entries_of(text):
                if (name, entry.message_id) in keys:
                    entries.setdefault((name, entry.message_id), {})[entry.index] = entry
    return {
        pair: [(idx, "pending" if pack in pending else "delivered", 0 if pack in pending else 1,
                entries.get(pair, {}).get(idx)) for idx in range(count)]
        for pair, (count, pack) in keys.items()
    }  # fmt: skip


# --- reading, for the API ------------------------------------------------------------------------------


def _states(
    db: sqlite3.Connection, pairs: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[tuple[int, str, int]]]:
    """(instance, messageId) -> [(index, state, attempts)] of the requests still in the outbox (read per
    instance, through the outbox's (instance, messageId, index) index)."""
    by_instance: dict[str, list[str]] = {}
    for name, mid in pairs:
        by_instance.setdefault(name, []).append(mid)
    out: dict[tuple[str, str], list[tuple[int, str, int]]] = {}
    for name, ids in by_instance.items():
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            for mid, idx, state, attempts in db.execute(
                "SELECT message_id, idx, state, attempts FROM requests WHERE destination = ? AND message_id IN ("
                + ",".join("?" * len(part))
                + ")",
                [name, *part],
            ):
                out.setdefault((name, mid), []).append((idx, state, attempts))
    for pair, packed in _in_packs(db, [(n, m) for n, ids in by_instance.items() for m in ids]).items():
        rows = out.setdefault(pair, [])
        own = {idx for idx, _, _ in rows}
        rows.extend((idx, state, attempts) for idx, state, attempts, _ in packed if idx not in own)
    return out


def status_of(outcome: Mapping[str, Any], states: list[tuple[int, str, int]]) -> str:
    """One badge for what an instance made of a message, from its outcome and its requests' states now."""
    kind = outcome.get("outcome")
    if kind in ("filtered", "invalid"):
        return str(kind)
    if kind != "requests":
        return "dead"  # set aside: nothing was stored for anyone
    if not outcome.get("count"):
        return "filtered"  # the destination made no request of it
    found = {state for _, state, _ in states}
    if "dead" in found:
        return "dead"
    if any(state == "pending" and attempts for _, state, attempts in states):
        return "retrying"
    if "pending" in found:
        return "pending"
    return "delivered"  # every request delivered (or delivered and since pruned)


def summaries(
    db: sqlite3.Connection, *, search: str | None, destination: str | None, status: str | None, limit: int
) -> list[dict[str, Any]]:
    """The newest messages first, each with one badge per instance; filtered by a text that is its userId,
    anonymousId, messageId or event name (exactly, or as the start of the event name), by instance and by
    status (of that instance, or of any). Read in one transaction: the ring's state and its slots agree."""
    with _snapshot(db):
        return _summaries(db, search=search, destination=destination, status=status, limit=limit)


def _summaries(
    db: sqlite3.Connection, *, search: str | None, destination: str | None, status: str | None, limit: int
) -> list[dict[str, Any]]:
    sql = (
        "SELECT COALESCE(seq, id), message_id, type, event, user_id, anonymous_id, source, received_at, mapped_at,"
        " outcomes FROM debug_messages WHERE {part}"
    )
    args: list[Any] = []
    if search:
        sql += " AND (? IN (message_id, user_id, anonymous_id, event) OR event LIKE ? ESCAPE '\\')"
        escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        args += [search, escaped + "%"]
    sql += " ORDER BY id DESC LIMIT ?"
    # Filters on badges are applied after the states are known: read a few more rows than asked for.
    wanted = limit if not (destination or status) else max(limit * 10, 1000)
    rows: list[tuple[Any, ...]] = []
    for part, part_args in _newest_first(db):  # each part by rowid, so no sort of the whole ring
        found = db.execute(sql.format(part=part), [*part_args, *args, wanted - len(rows)])
        rows += [(*row[:-1], json.loads(row[-1])) for row in found]
        if len(rows) >= wanted:
            break
    states = _states(db, {(name, row[1]) for row in rows for name, o in row[-1].items() if o.get("count")})
    out = []
    for rid, mid, kind, event, user, anonymous, source, received, mapped, outcomes in rows:
        badges = {
            name: {"status": status_of(o, states.get((name, mid), [])), "warnings": len(o.get("warnings", ()))}
            for name, o in outcomes.items()
        }
        if destination and destination not in badges:
            continue
        if status and not any(
            b["status"] == status for name, b in badges.items() if not destination or name == destination
        ):
            continue
        out.append({"id": rid, "messageId": mid, "type": kind, "event": event, "userId": user,
                    "anonymousId": anonymous, "wayIn": source, "receivedAt": received, "mappedAt": mapped,
                    "destinations": badges})  # fmt: skip
        if len(out) >= limit:
            break
    return out


def detail(
    db: sqlite3.Connection, message_id: str, instances: Mapping[str, tuple[str, Iterable[str], Iterable[str]]],
    resolve: Callable[[str, str], str],
) -> dict[str, Any] | None:  # fmt: skip
    """The newest record of a message: as received, and per instance the mapping outcome, each request as the
    vendor gets it (from the outbox row: `resolve(url, base)` forms its URL, and the credentials the outbox
    never stores are shown as `***`), its state now and every delivery attempt with its answer and next
    retry. `instances`: name -> (base URL, credential query parameter names, credential header names)."""
    with _snapshot(db):
        return _detail(db, message_id, instances, resolve)


def _detail(
    db: sqlite3.Connection, message_id: str, instances: Mapping[str, tuple[str, Iterable[str], Iterable[str]]],
    resolve: Callable[[str, str], str],
) -> dict[str, Any] | None:  # fmt: skip
    row = db.execute(
        "SELECT COALESCE(seq, id), message_id, type, event, user_id, anonymous_id, source, received_at, mapped_at,"
        " body, outcomes FROM debug_messages WHERE message_id = ? ORDER BY COALESCE(seq, id) DESC LIMIT 1",
        (message_id,),
    ).fetchone()
    if row is None:
        return None
    rid, mid, kind, event, user, anonymous, source, received, mapped, body, outcomes_text = row
    try:
        message: Any = json.loads(body)
    except ValueError:
        message = body
    outcomes = json.loads(outcomes_text)
    attempts: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for destination, idx, at, status, detail_text, next_at in db.execute(
        "SELECT destination, idx, at, status, detail, next_at FROM debug_attempts WHERE message_id = ? ORDER BY id",
        (mid,),
    ):
        attempts.setdefault((destination, idx), []).append(
            {"at": at, "status": status, "answer": detail_text, "nextRetry": next_at}
        )
    destinations = {}
    packed = _in_packs(db, [(name, mid) for name in outcomes])
    for name, outcome in outcomes.items():
        base, secret_params, secret_headers = instances.get(name, ("", (), ()))
        requests, states = [], []
        found = list(db.execute(
            "SELECT idx, state, attempts, method, url, params, headers, body FROM requests"
            " WHERE destination = ? AND message_id = ? ORDER BY idx",
            (name, mid),
        ))  # fmt: skip
        own = {row[0] for row in found}
        for idx, state, n, entry in packed.get((name, mid), []):
            if idx not in own and entry is not None:  # as the pack holds it
                found.append((idx, state, n, entry.method, entry.url, entry.params, entry.headers, entry.body))
            elif idx not in own:  # its text is gone: its state is still known
                states.append((idx, state, n))
        for idx, state, n, method, url, params, headers, text in sorted(found, key=lambda r: r[0]):
            states.append((idx, state, n))
            requests.append({
                "index": idx, "state": state, "method": method, "url": resolve(url, base),
                "params": {**dict.fromkeys(secret_params, "***"), **json.loads(params)},
                "headers": {**dict.fromkeys(secret_headers, "***"), **json.loads(headers)},
                "json": json.loads(text) if text else None, "attempts": attempts.get((name, idx), []),
            })  # fmt: skip
        destinations[name] = {
            "status": status_of(outcome, states),
            "outcome": outcome.get("outcome"),
            "reason": outcome.get("reason"),
            "path": outcome.get("path"),
            "warnings": outcome.get("warnings", []),
            "requests": requests,
        }
    return {"id": rid, "messageId": mid, "type": kind, "event": event, "userId": user, "anonymousId": anonymous,
            "wayIn": source, "receivedAt": received, "mappedAt": mapped, "message": message,
            "destinations": destinations}  # fmt: skip


def kept(db: sqlite3.Connection, message_id: str) -> bool:
    """Whether the debugger keeps a message."""
    return db.execute("SELECT 1 FROM debug_messages WHERE message_id = ? LIMIT 1", (message_id,)).fetchone() is not None


def dead_request_ids(db: sqlite3.Connection, message_id: str, destination: str | None) -> list[int]:
    """The outbox ids of a message's dead requests (of one instance, or of all)."""
    sql = "SELECT id FROM requests WHERE message_id = ? AND state = 'dead'"
    args: list[Any] = [message_id]
    if destination:
        sql += " AND destination = ?"
        args.append(destination)
    return [rid for (rid,) in db.execute(sql, args)]
