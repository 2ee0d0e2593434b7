"""The durable outbox: vendor requests in one SQLite file (WAL), claimed by workers with a lease.

The server commits raw Segment events to the `inbox` table of the same file before it answers (a
cheap insert); the delivery process maps them into vendor requests in a transaction that also
removes them from the inbox, so an accepted event is never lost between the two stages.

Guarantees: a request is stored, without its credentials, in the same transaction as the other
requests of its message, before the sender of the event hears "accepted"; (instance, messageId,
request index) is unique, so a message received twice is delivered once while its row is kept
(the dedupe window); a user's requests to one instance are claimed in the order received; a
crashed worker's claims come back when their lease ends.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base import HttpRequest
from ..redaction import SECRET_HEADERS, SECRET_PARAMS
from ..spec import finite

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id          INTEGER PRIMARY KEY,
    destination TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    idx         INTEGER NOT NULL,
    user_key    TEXT    NOT NULL,
    method      TEXT    NOT NULL,
    url         TEXT    NOT NULL,
    params      TEXT    NOT NULL,
    headers     TEXT    NOT NULL,
    body        TEXT    NOT NULL,
    batchable   INTEGER NOT NULL,
    batch_key   TEXT    NOT NULL,
    size        INTEGER NOT NULL,
    state       TEXT    NOT NULL DEFAULT 'pending',
    solo        INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  REAL    NOT NULL,
    next_at     REAL    NOT NULL,
    lease_until REAL    NOT NULL DEFAULT 0,
    finished_at REAL,
    last_status TEXT,
    last_error  TEXT,
    UNIQUE (destination, message_id, idx)
);
CREATE INDEX IF NOT EXISTS requests_pending ON requests (destination, id) WHERE state = 'pending';
CREATE TABLE IF NOT EXISTS inbox (
    id          INTEGER PRIMARY KEY,
    body        TEXT    NOT NULL,
    received_at REAL    NOT NULL,
    lease_until REAL    NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS requests_finished ON requests (state, finished_at);
"""


@dataclass(frozen=True)
class Row:
    """A claimed request; `body` is its JSON text as stored (merged as text, never re-parsed)."""

    id: int
    destination: str
    message_id: str
    user_key: str
    method: str
    url: str
    params: dict[str, Any]
    headers: dict[str, str]
    body: str
    batchable: bool
    attempts: int
    created_at: float


@dataclass(frozen=True)
class Enqueued:
    accepted: dict[str, int]  # requests committed, per instance
    duplicates: int  # requests already in the outbox (same instance, messageId and index)

    @property
    def total(self) -> int:
        return sum(self.accepted.values())


# One writer at a time per file within a process: SQLite's own busy handler sleeps in steps of
# milliseconds, so threads of one process queue on a lock instead. Other processes still meet
# SQLite's lock and busy timeout.
_WRITE_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(path.resolve(), threading.Lock())


def _dumps_stdlib(value: Any) -> str:
    """Compact JSON that SQLite can always store: lone surrogates escaped, NaN and infinities as null."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(finite(value), separators=(",", ":"), allow_nan=False)


try:  # several times faster; the stdlib takes over for what orjson refuses (huge integers, lone surrogates)
    import orjson

    def _dumps(value: Any) -> str:
        try:
            return orjson.dumps(value).decode("utf-8")
        except (TypeError, orjson.JSONEncodeError):
            return _dumps_stdlib(value)

except ImportError:  # pragma: no cover - orjson comes with the server extra
    _dumps = _dumps_stdlib


def _chunks(ids: list[int], size: int = 500) -> Iterator[list[int]]:
    """Id lists short enough for one statement's parameters."""
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def _public(mapping: Mapping[str, Any], secret: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k.lower() not in secret}


# Where an instance's credential names are not given: the names the built-in destinations use.
_KNOWN_SECRETS = (SECRET_PARAMS, SECRET_HEADERS)


class Outbox:
    """One SQLite file; each thread gets its own connection."""

    def __init__(self, path: str | Path, *, dedupe_window: float = 24 * 3600.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dedupe_window = dedupe_window
        self._local = threading.local()
        self._lock = _write_lock(self.path)
        self._db().executescript(SCHEMA)  # executescript commits on its own

    # -- connections

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        with self._lock:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- intake

    def enqueue(
        self,
        items: Iterable[tuple[str, str, str, list[HttpRequest]]],
        now: float | None = None,
        *,
        inbox_ids: Iterable[int] = (),
        credentials: Mapping[str, tuple[frozenset[str], frozenset[str]]] | None = None,
    ) -> Enqueued:
        """Store (instance, messageId, user key, requests) items in one transaction, removing the
        inbox events they came from; returns counts of requests accepted and of duplicates ignored.
        Committed when this returns.

        `credentials` gives, per instance, the (query parameter, header) names that carry its secrets, from
        the destination's declaration (`Destination.credential_names`): those are never stored; the sender
        adds them back. Instances it does not name fall back to the built-in destinations' names."""
        credentials = credentials or {}
        now = time.time() if now is None else now
        rows: dict[str, list[tuple[Any, ...]]] = {}
        # Requests of one instance share params and headers: encode each distinct pair once.
        envelopes: dict[tuple[Any, ...], tuple[str, str, str]] = {}
        for destination, message_id, user_key, requests_ in items:
            for idx, r in enumerate(requests_):
                envelope_key = (r.method, r.url, r.batchable, *r.params.items(), None, *r.headers.items())
                envelope = envelopes.get(envelope_key)
                if envelope is None:
                    secret_params, secret_headers = credentials.get(destination, _KNOWN_SECRETS)
                    params = _public(r.params, secret_params)
                    headers = _public(r.headers, secret_headers)
                    key = json.dumps([r.method, r.url, params, headers], sort_keys=True) if r.batchable else ""
                    envelope = envelopes[envelope_key] = (json.dumps(params), json.dumps(headers), key)
                body = _dumps(r.json)
                rows.setdefault(destination, []).append(
                    (destination, message_id, idx, user_key, r.method, r.url, envelope[0], envelope[1], body,
                     int(r.batchable), envelope[2], len(body), now, now)
                )  # fmt: skip
        accepted: dict[str, int] = {}
        done = [(rid,) for rid in inbox_ids]
        if not rows and not done:
            return Enqueued(accepted, 0)
        with self._write() as db:
            db.executemany("DELETE FROM inbox WHERE id = ?", done)
            for destination, group in rows.items():
                before = db.total_changes
                db.executemany(
                    "INSERT OR IGNORE INTO requests (destination, message_id, idx, user_key, method, url, params,"
                    " headers, body, batchable, batch_key, size, created_at, next_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    group,
                )
                accepted[destination] = db.total_changes - before
        total = sum(len(g) for g in rows.values())
        return Enqueued(accepted, total - sum(accepted.values()))

    # -- the inbox: accepted events waiting to be mapped

    def accept_events(self, events: list[dict[str, Any]], now: float | None = None) -> int:
        """Commit raw events in one transaction; ValueError/TypeError when one cannot be encoded."""
        now = time.time() if now is None else now
        rows = [(_dumps(e), now) for e in events]
        with self._write() as db:
            db.executemany("INSERT INTO inbox (body, received_at) VALUES (?, ?)", rows)
        return len(rows)

    def claim_inbox(self, limit: int, lease: float, now: float | None = None) -> list[tuple[int, str]]:
        """Lease up to `limit` accepted events, oldest first, for mapping."""
        now = time.time() if now is None else now
        with self._write() as db:
            rows = db.execute(
                "SELECT id, body FROM inbox WHERE lease_until <= ? ORDER BY id LIMIT ?", (now, limit)
            ).fetchall()
            db.executemany("UPDATE inbox SET lease_until = ? WHERE id = ?", [(now + lease, rid) for rid, _ in rows])
        return rows

    def inbox_count(self) -> int:
        return int(self._db().execute("SELECT COUNT(*) FROM inbox").fetchone()[0])

    # -- claiming

    def claim(
        self,
        destination: str,
        *,
        max_batches: int,
        batch_size: int,
        batch_bytes: int,
        lease: float,
        now: float | None = None,
        scan: int = 5000,
    ) -> list[list[Row]]:
        """Lease up to `max_batches` batches of due requests for `destination`.

        Per-user order: a user's request is claimable only when every earlier pending request of
        that user is claimed in this same round into the same batch (concatenated in order), so no
        request overtakes an earlier one that is in flight or waiting to retry.
        """
        now = time.time() if now is None else now
        scan = min(scan, max(2 * max_batches * batch_size, 200))
        with self._write() as db:
            candidates = db.execute(
                "SELECT id, user_key, batchable, batch_key, solo, next_at, lease_until, size FROM requests"
                " WHERE destination = ? AND state = 'pending' ORDER BY id LIMIT ?",
                (destination, scan),
            ).fetchall()
            blocked: set[str] = set()
            user_batch: dict[str, int] = {}  # user -> index of the open batch holding its last row
            open_batch: dict[str, int] = {}  # batch key -> index of the batch still filling
            chosen: list[list[int]] = []
            sizes: list[int] = []
            for rid, user, batchable, key, solo, next_at, lease_until, size in candidates:
                if user in blocked:
                    continue
                if next_at > now or lease_until > now:
                    blocked.add(user)
                    continue
                mergeable = bool(batchable) and not solo
                target = open_batch.get(key) if mergeable else None
                if target is not None and (len(chosen[target]) >= batch_size or sizes[target] + size > batch_bytes):
                    target = None
                if user in user_batch and user_batch[user] != target:
                    blocked.add(user)  # it would go out beside, and maybe before, its predecessor
                    continue
                if target is None:
                    if len(chosen) >= max_batches:
                        blocked.add(user)
                        continue
                    chosen.append([])
                    sizes.append(0)
                    target = len(chosen) - 1
                    if mergeable:
                        open_batch[key] = target
                chosen[target].append(rid)
                sizes[target] += size
                user_batch[user] = target
            ids = [rid for batch in chosen for rid in batch]
            if not ids:
                return []
            for part in _chunks(ids):
                db.execute(
                    "UPDATE requests SET lease_until = ? WHERE id IN (" + ",".join("?" * len(part)) + ")",
                    [now + lease, *part],
                )
            rows: dict[int, Row] = {}
            decoded: dict[str, Any] = {}  # params and headers repeat across rows: decode each text once
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                sql = (
                    "SELECT id, message_id, user_key, method, url, params, headers, body, batchable, attempts,"
                    " created_at FROM requests WHERE id IN (" + ",".join("?" * len(part)) + ")"
                )
                for rid, mid, user, method, url, params, headers, body, batchable, attempts, created in db.execute(
                    sql, part
                ):
                    if params not in decoded:
                        decoded[params] = json.loads(params)
                    if headers not in decoded:
                        decoded[headers] = json.loads(headers)
                    rows[rid] = Row(rid, destination, mid, user, method, url, decoded[params], decoded[headers], body,
                                    bool(batchable), attempts, created)  # fmt: skip
        return [[rows[rid] for rid in batch] for batch in chosen]

    def next_due(self, destination: str) -> float | None:
        """When the earliest pending request of `destination` becomes claimable (None: nothing pending)."""
        row = (
            self._db()
            .execute(
                "SELECT MIN(MAX(next_at, lease_until)) FROM requests WHERE destination = ? AND state = 'pending'",
                (destination,),
            )
            .fetchone()
        )
        return row[0]

    # -- outcomes

    def delivered(self, rows: list[Row], status: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        ids = [r.id for r in rows]
        with self._write() as db:
            for part in _chunks(ids):
                db.execute(
                    # Only dedupe needs a delivered row (its instance, messageId and index): the body goes.
                    "UPDATE requests SET state = 'delivered', attempts = attempts + 1, finished_at = ?,"
                    " last_status = ?, last_error = NULL, lease_until = 0, body = '', params = '{}', headers = '{}'"
                    " WHERE id IN (" + ",".join("?" * len(part)) + ")",
                    [now, status, *part],
                )

    def retry(
        self,
        rows: list[Row],
        status: str,
        detail: str,
        *,
        delay: float | None,
        retry_window: float,
        min_attempts: int,
        backoff_base: float,
        backoff_cap: float,
        now: float | None = None,
    ) -> int:
        """Schedule another attempt (full-jitter exponential backoff, or `delay` when the vendor
        said when); a request past the retry window with its minimum attempts made is dead.
        Returns how many died."""
        now = time.time() if now is None else now
        updates, dead = [], []
        for r in rows:
            attempts = r.attempts + 1
            if attempts >= min_attempts and now - r.created_at >= retry_window:
                dead.append((now, status, detail, r.id))
                continue
            backoff = random.uniform(0, min(backoff_cap, backoff_base * 2 ** min(attempts, 30)))
            # A vendor's Retry-After wins, but "0" or a past date must not turn retries into a busy loop.
            wait = max(delay, backoff) if delay is not None else backoff
            updates.append((now + wait, status, detail, r.id))
        with self._write() as db:
            db.executemany(
                "UPDATE requests SET attempts = attempts + 1, next_at = ?, lease_until = 0, last_status = ?,"
                " last_error = ? WHERE id = ?",
                updates,
            )
            db.executemany(
                "UPDATE requests SET state = 'dead', attempts = attempts + 1, finished_at = ?, lease_until = 0,"
                " last_status = ?, last_error = ? WHERE id = ?",
                dead,
            )
        return len(dead)

    def dead(self, rows: list[Row], status: str, detail: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._write() as db:
            db.executemany(
                "UPDATE requests SET state = 'dead', attempts = attempts + 1, finished_at = ?, lease_until = 0,"
                " last_status = ?, last_error = ? WHERE id = ?",
                [(now, status, detail, r.id) for r in rows],
            )

    def split(self, rows: list[Row], status: str, detail: str, now: float | None = None) -> None:
        """A merged batch was refused as bad input: send each of its requests alone, at once."""
        now = time.time() if now is None else now
        with self._write() as db:
            db.executemany(
                "UPDATE requests SET solo = 1, attempts = attempts + 1, next_at = ?, lease_until = 0,"
                " last_status = ?, last_error = ?"
                " WHERE id = ?",
                [(now, status, detail, r.id) for r in rows],
            )

    def release(self, rows: list[Row]) -> None:
        """Give claimed requests back untouched (a graceful stop)."""
        with self._write() as db:
            db.executemany("UPDATE requests SET lease_until = 0 WHERE id = ?", [(r.id,) for r in rows])

    # -- operations

    def stats(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per instance: pending, retrying (pending with an attempt made), delivered, dead, oldest pending age."""
        now = time.time() if now is None else now
        out: dict[str, dict[str, Any]] = {}
        for destination, state, retrying, count, oldest in self._db().execute(
            "SELECT destination, state, attempts > 0, COUNT(*), MIN(created_at) FROM requests"
            " GROUP BY destination, state, attempts > 0"
        ):
            d = out.setdefault(
                destination, {"pending": 0, "retrying": 0, "delivered": 0, "dead": 0, "oldest_pending_age": 0.0}
            )
            if state == "pending":
                d["pending"] += count
                if retrying:
                    d["retrying"] += count
                d["oldest_pending_age"] = max(d["oldest_pending_age"], now - oldest)
            else:
                d[state] += count
        return out

    def pending_count(self, destination: str | None = None) -> int:
        """Pending requests (of one instance, or of all plus the events still in the inbox)."""
        if destination is None:
            row = (
                self._db()
                .execute(
                    "SELECT (SELECT COUNT(*) FROM requests WHERE state = 'pending') + (SELECT COUNT(*) FROM inbox)"
                )
                .fetchone()
            )
        else:
            row = (
                self._db()
                .execute("SELECT COUNT(*) FROM requests WHERE state = 'pending' AND destination = ?", (destination,))
                .fetchone()
            )
        return int(row[0])

    def dead_rows(self, destination: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Dead requests with their last answer; credentials were never stored, so none can show."""
        sql = (
            "SELECT id, destination, message_id, idx, method, url, attempts, last_status, last_error, created_at,"
            " finished_at, body FROM requests WHERE state = 'dead'"
        )
        args: list[Any] = []
        if destination:
            sql += " AND destination = ?"
            args.append(destination)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        keys = ("id", "destination", "message_id", "index", "method", "url", "attempts", "last_status",
                "last_error", "created_at", "finished_at", "body")  # fmt: skip
        return [dict(zip(keys, row, strict=True)) for row in self._db().execute(sql, args)]

    def replay(self, destination: str | None = None, ids: list[int] | None = None, now: float | None = None) -> int:
        """Dead requests back to pending, with a fresh retry window."""
        now = time.time() if now is None else now
        sql = (
            "UPDATE requests SET state = 'pending', attempts = 0, solo = 0, next_at = ?, created_at = ?,"
            " lease_until = 0, finished_at = NULL WHERE state = 'dead'"
        )
        args: list[Any] = [now, now]
        if destination:
            sql += " AND destination = ?"
            args.append(destination)
        if ids:
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args.extend(ids)
        with self._write() as db:
            return db.execute(sql, args).rowcount

    def prune(self, now: float | None = None) -> int:
        """Forget delivered requests older than the dedupe window."""
        now = time.time() if now is None else now
        with self._write() as db:
            return db.execute(
                "DELETE FROM requests WHERE state = 'delivered' AND finished_at < ?", (now - self.dedupe_window,)
            ).rowcount
