"""The durable outbox: vendor requests in one SQLite file (WAL), claimed by workers with a lease.

The server commits raw Segment events to the `inbox` table of the same file before it answers (a
cheap insert); the delivery process maps them into vendor requests in a transaction that also
removes them from the inbox, so an accepted event is never lost between the two stages.

Guarantees: a request is stored, without its credentials and with its path rather than its
instance's base URL, in the same transaction as the other requests of its message, before the
sender of the event hears "accepted"; (instance, messageId, request index) is unique, so a message
received twice is delivered once while its row is kept (the dedupe window).

Per-user order, across crashes and any number of processes:
- one mapper at a time holds the `mapper` lease and maps the oldest inbox events, so request ids
  follow arrival order; a holder whose process is gone (same host) is replaced at once, a live one
  when its lease ends, and a mapper commits only while it still holds the lease;
- a user's requests to one instance are claimed in id order, and a user with a request leased or
  waiting to retry is skipped as a whole (so one user's retries never hold back another's);
- an outcome is recorded only under the claim's own lease: a row another worker has claimed since
  is left to that worker.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import sqlite3
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import accumulate, chain, groupby, repeat
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from ..base import HttpRequest, under_base
from ..carts import DEFAULT_TTL, CartBook, applied_before, load_cart, prune_carts, save_carts
from ..carts import SCHEMA as CARTS_SCHEMA
from ..config import OutboxConfig
from ..redaction import SECRET_HEADERS, SECRET_PARAMS
from ..spec import json_text, new_tuple
from . import debugger
from .packing import Stored, entries_of, entries_stored, stored_pack

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
    lease_until REAL    NOT NULL DEFAULT 0  -- unused since the mapper lease; kept for files of any age
);
CREATE INDEX IF NOT EXISTS requests_finished ON requests (state, finished_at);
-- Users that cannot be claimed now (a request in flight or waiting to retry): few rows, found without a scan.
CREATE INDEX IF NOT EXISTS requests_waiting ON requests (destination, user_key)
    WHERE state = 'pending' AND (attempts > 0 OR lease_until > 0);
-- Which of a pack's users have rows pending (their requests in it are held), without a scan of the rows.
CREATE INDEX IF NOT EXISTS requests_pending_users ON requests (destination, user_key) WHERE state = 'pending';
-- Packs: the requests of one instance from one stored round (up to `pack_size`), as one row, claimed and
-- recorded whole while everything goes well; a request that is not delivered at once becomes a `requests`
-- row (see `Outbox.claim`), so retries, splits and dead letters work per request.
CREATE TABLE IF NOT EXISTS packs (
    id          INTEGER PRIMARY KEY,
    destination TEXT    NOT NULL,
    count       INTEGER NOT NULL,
    state       TEXT    NOT NULL DEFAULT 'pending',
    created_at  REAL    NOT NULL,
    lease_until REAL    NOT NULL DEFAULT 0,
    delivered   INTEGER NOT NULL DEFAULT 0,
    finished_at REAL,
    last_status TEXT,  -- the answer its delivered requests had
    host        TEXT,  -- where the process that has it out runs (`this_host`), and its pid: a pack of a
    pid         INTEGER  -- process gone from this host is taken over at once, as the mapper lease is
);
CREATE INDEX IF NOT EXISTS packs_pending ON packs (destination, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS packs_finished ON packs (finished_at) WHERE state = 'done';
-- Apart from `packs`, so that a lease or an outcome rewrites a few bytes, not the requests' text.
CREATE TABLE IF NOT EXISTS pack_entries (
    pack    INTEGER PRIMARY KEY,
    entries TEXT    NOT NULL
);
-- The dedupe keys: one per (instance, message) stored, packed or not, kept for the dedupe window.
CREATE TABLE IF NOT EXISTS request_keys (
    destination TEXT    NOT NULL,
    message_id  TEXT    NOT NULL,
    count       INTEGER NOT NULL,
    stored_at   REAL    NOT NULL,
    pack        INTEGER,  -- the pack that holds its requests (NULL: rows)
    PRIMARY KEY (destination, message_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS request_keys_stored ON request_keys (stored_at);
CREATE TABLE IF NOT EXISTS leases (
    name   TEXT    PRIMARY KEY,
    holder TEXT    NOT NULL,
    host   TEXT    NOT NULL,
    pid    INTEGER NOT NULL,
    until  REAL    NOT NULL
);
-- The inbox range a mapper's round claimed and has not committed yet (one row, not a write to every event):
-- the next claim counts each range left here as an attempt of its live events (a process died or stalled).
CREATE TABLE IF NOT EXISTS inbox_claims (
    holder TEXT    PRIMARY KEY,
    first  INTEGER NOT NULL,
    last   INTEGER NOT NULL
);
"""

# Columns added since the first schema, applied to files of any age; then what uses them.
MIGRATIONS = (
    # Claims the inbox event took part in without being committed: a process that dies mapping it counts.
    ("inbox", "attempts", "ALTER TABLE inbox ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0"),
    ("inbox", "dead_reason", "ALTER TABLE inbox ADD COLUMN dead_reason TEXT"),
    ("inbox", "dead_at", "ALTER TABLE inbox ADD COLUMN dead_at REAL"),
    # The way in it came by (tracking, webhook, send), for the debugger.
    ("inbox", "source", "ALTER TABLE inbox ADD COLUMN source TEXT"),
    # A debugger message's number once the table is a ring of slots (debugger.py `save`).
    ("debug_messages", "seq", "ALTER TABLE debug_messages ADD COLUMN seq INTEGER"),
)
# The events waiting to be mapped, without the dead ones that stay at the front of the inbox.
LIVE_INBOX_INDEX = "CREATE INDEX IF NOT EXISTS inbox_live ON inbox (id) WHERE dead_reason IS NULL"
# Requests of one instance a pack holds at most, unless `[outbox]` says otherwise (`Outbox.configured`): what
# one worker has in flight with the default `concurrency` x `batch_size`.
DEFAULT_PACK_SIZE = OutboxConfig().concurrency * OutboxConfig().batch_size
# Packs of one instance a process has out at once: the next goes out while the last batches of one finish. Their
# outcomes are written in pack order, so a crash may send again up to this many packs.
PACKS_OUT = 2
# Packs whose every request is held that one claim turns into rows before it gives up for now.
HELD_PACKS_A_CLAIM = 10
MAPPER = "mapper"  # the name of the lease one mapping process holds at a time
MAX_MAPPING_ATTEMPTS = 5  # claims of one inbox event whose process died before committing: then it is dead

log = logging.getLogger("destinations.delivery")
_T = TypeVar("_T")


class Row(NamedTuple):
    """A claimed request; `body` is its JSON text as stored (merged as text, never re-parsed).

    `url` is as stored: a path under the instance's base URL (see `resolve_url`), or an absolute URL for
    a request a plugin sends elsewhere. `lease` is the end of the claim that returned it: outcomes are
    recorded only while the row still carries it."""

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
    lease: float
    index: int = 0  # among its message's requests to this instance
    pack: int = 0  # the pack it was claimed from (0: a row of its own, `id`)
    entry: int = 0  # its place in that pack


class MessageRequests(NamedTuple):
    """One message's requests for every instance that takes it: stored together, or set aside together.

    `items` are (instance, messageId, user key, requests); `inbox_id` is the inbox event they were mapped
    from, if any; `dead` says why the event could not be mapped at all (it is set aside with that reason)."""

    items: list[tuple[str, str, str, list[HttpRequest]]]
    inbox_id: int | None = None
    dead: str | None = None
    message_id: str | None = None  # for what a set-aside message is called in logs and reports
    debug: tuple[Any, ...] | None = None  # its debugger record (delivery/debugger.py `record`), when kept
    #: Each request's body as `json_text` made it, per item, when the mapper made it while the body was at hand
    #: (a round's bodies are long out of the CPU's caches by the time they are stored); else made by `_rows`.
    texts: list[list[str]] | None = None


class StoredForm(NamedTuple):
    """How one instance's requests are stored: its credential names (lower-case query parameters and
    headers) left out, and its base URL taken off, so the sender adds back what the settings say *now*."""

    secret_params: frozenset[str]
    secret_headers: frozenset[str]
    base_url: str = ""


@dataclass(frozen=True)
class Enqueued:
    """What `Outbox.enqueue` stored."""

    accepted: dict[str, int]  # requests committed, per instance
    duplicates: int  # requests of messages the instance has stored before (same instance and messageId)
    failed: list[tuple[int, str]] = field(default_factory=list)  # (position among the events, reason)

    @property
    def total(self) -> int:
        return sum(self.accepted.values())


class Holder(NamedTuple):
    """Who holds a lease: a token of its own, and the host and process it runs in (a holder whose
    process is gone from this host is replaced at once instead of when its lease ends)."""

    token: str
    host: str  # where its pid means something: hostname, boot and pid namespace (see `this_host`)
    pid: int

    @classmethod
    def new(cls) -> Holder:
        return cls(uuid.uuid4().hex, this_host(), os.getpid())


def this_host() -> str:
    """Where a pid names one process: the hostname, and on Linux this boot and this pid namespace, so two
    containers that share a hostname and the outbox file never take each other's pids for their own."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:  # not Linux: the hostname alone; a holder elsewhere is then waited for
        pass
    return "|".join(parts)


class LeaseLost(Exception):
    """The mapper lease passed to another process: this mapper's round is not committed."""


def _alive(pid: int) -> bool:
    """Whether a process of this host exists (a zombie counts; on doubt, yes)."""
    if os.name != "posix":  # signal 0 means something else on Windows: let the lease run out instead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def stored_url(url: str, base_url: str) -> str:
    """What the outbox keeps of a request's URL: the part after its instance's base URL (so a base URL
    fixed later applies to requests already stored), or the whole URL when it lies elsewhere."""
    if base_url and under_base(url, base_url):
        return url[len(base_url) :]
    return url


def resolve_url(stored: str, base_url: str) -> str:
    """The URL a stored request goes to, under the instance's current base URL."""
    return stored if _ABSOLUTE.match(stored) else base_url + stored


# One writer at a time per file within a process: SQLite's own busy handler sleeps in steps of
# milliseconds, so threads of one process queue on a lock instead. Other processes still meet
# SQLite's lock and busy timeout.
_WRITE_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> threading.Lock:
    with _LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(path.resolve(), threading.Lock())


def _chunks(ids: list[_T], size: int = 500) -> Iterator[list[_T]]:
    """Id lists short enough for one statement's parameters."""
    for i in range(0, len(ids), size):
        yield ids[i : i + size]


def _insert(db: sqlite3.Connection, head: str, width: int, values: list[Any]) -> None:
    """`executemany` of `head` (an INSERT up to its VALUES) over rows of `width` columns given one after another in
    `values`, as statements of many rows each: a statement's parameters bound at once cost about half what a
    statement a row does (and a flat list makes no tuple a row). Up to 999 parameters a statement, the limit of
    SQLite before 3.32."""
    row = "(" + ",".join("?" * width) + ")"
    for part in _chunks(values, 999 // width * width):
        db.execute(f"{head} VALUES {','.join([row] * (len(part) // width))}", part)


def _runs_of(ids: list[int]) -> list[tuple[int, int]]:
    """Sorted ids as (first, last) runs of consecutive integers: a round's inbox events are mostly one run, so
    they go in one range delete instead of one delete each."""
    runs: list[tuple[int, int]] = []
    for i in ids:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _public(mapping: Mapping[str, Any], secret: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k.lower() not in secret}


def _envelope(request: HttpRequest, form: StoredForm) -> tuple[str, str, str, int, str]:
    """What a request's row stores of its envelope: url, params, headers, batchable and batch key. Left out: the
    instance's declared credential names, and those the request itself carries (`secret_names`), so a caller
    that gives no form still stores no secret."""
    url = stored_url(request.url, form.base_url)
    params = _public(request.params, form.secret_params | request.secret_names)
    headers = _public(request.headers, form.secret_headers | request.secret_names)
    key = json.dumps([request.method, url, params, headers], sort_keys=True) if request.batchable else ""
    return url, json.dumps(params), json.dumps(headers), int(request.batchable), key


# A round's stored envelopes by (instance, method, url, batchable, secret names): each with the params and headers
# it was made from, a few a key (a plugin whose every request has headers of its own gets each made afresh).
_Envelopes = dict[
    tuple[str, str, str, bool, frozenset[str]],
    list[tuple[dict[str, Any], dict[str, str], tuple[str, str, str, int, str]]],
]
_ENVELOPES_KEPT = 8

# Where an instance's form is not given: the credential names the built-in destinations use, URLs kept whole.
_KNOWN = StoredForm(SECRET_PARAMS, SECRET_HEADERS)

# What one event could not be stored for: its own content, never the database's state.
_EVENT_FAULTS = (ValueError, TypeError, RecursionError, OverflowError, sqlite3.InterfaceError, sqlite3.DataError)

_DEAD = (
    "UPDATE requests SET state = 'dead', attempts = attempts + 1, finished_at = ?, lease_until = 0,"
    " last_status = ?, last_error = ?"
)

_INSERT = (
    "INSERT OR IGNORE INTO requests (destination, message_id, idx, user_key, method, url, params, headers, body,"
    " batchable, batch_key, size, created_at, next_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_ANY_EVENT = "SELECT 1 FROM inbox INDEXED BY inbox_live WHERE dead_reason IS NULL LIMIT 1"  # an event to map
_ANY_ROW_PENDING = (
    "SELECT 1 FROM requests INDEXED BY requests_pending WHERE destination = ? AND state = 'pending' LIMIT 1"
)
_MESSAGE_OF = itemgetter(0, 1)  # a `requests` row's instance and messageId
_FIRST, _SECOND = itemgetter(0), itemgetter(1)

_ROW_COLUMNS = ("destination", "messageId", "index", "user key", "method", "url", "params", "headers", "body")


def _unstorable(message: MessageRequests, exc: BaseException, rows: list[tuple[Any, ...]] = ()) -> str:
    """Why a message's requests cannot be stored, naming the instance, the request and the part that fails
    (text no UTF-8 can hold, such as a lone surrogate, in a URL a plugin built from the message), so the
    sender can find what to fix."""
    for row in rows:
        for column, value in zip(_ROW_COLUMNS, row, strict=False):
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    return (f"{row[0]} request {row[2]}: its {column} holds text no UTF-8 can carry (a lone"
                            " surrogate), so it cannot be stored; fix the value it is made from")  # fmt: skip
    names = ", ".join(sorted({name for name, *_ in message.items})) or "no instance"
    return f"the requests for {names} cannot be stored ({type(exc).__name__}: {str(exc)[:120]})"


# (event, its rows, or the reason it is set aside)
_Unit = tuple[MessageRequests, list[tuple[Any, ...]], str | None]


# What became of one packed request: (kind, status, detail, next attempt at, when), kind one of delivered,
# retry, split, dead and held (not sent: it becomes a pending row as it was).
_Outcome = tuple[str, str | None, str | None, float | None, float]
_HELD: _Outcome = ("held", None, None, None, 0.0)

# A row the key of whose message was pruned since (dead rows stay) gives way to the request just taken, which
# would else be neither pending, delivered nor dead.
_EXPLODE = (
    "INSERT OR REPLACE INTO requests (destination, message_id, idx, user_key, method, url, params, headers, body,"
    " batchable, batch_key, size, state, solo, attempts, created_at, next_at, finished_at, last_status, last_error)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass
class _PackRun:
    """A pack this process claimed: its entries, and what became of each as its batches come back."""

    pack: int
    destination: str
    entries: Stored
    created: float
    claim: float  # the lease its claim set: which claim a row belongs to (rows carry it as `Row.lease`)
    expected: int  # requests sent; the others are held
    length: float = 0.0  # the lease's length, for renewals
    until: float = 0.0  # the lease's end now
    renewed: float = 0.0  # when it was claimed or last renewed
    sent_users: frozenset[str] = frozenset()  # the users of its requests sent: their rows wait for it
    outcomes: dict[int, _Outcome] = field(default_factory=dict)
    done: bool = False  # every sent request has its outcome (written once the packs before it are)

    def __post_init__(self) -> None:
        self.until = self.until or self.claim


_PACK_CLAIM = attrgetter("pack", "lease")  # a claimed row's pack and claim
_ENTRY = attrgetter("entry")  # a packed row's place in its pack


def _by_pack(run: _PackRun) -> int:
    return run.pack


def _decoded(cache: dict[str, Any], text: str) -> Any:
    """Params or headers JSON text, decoded once per distinct text (they repeat across requests)."""
    value = cache.get(text)
    if value is None:
        value = cache[text] = json.loads(text)
    return value


def _group(  # noqa: PLR0917 - the claim's own parameters, passed on
    candidates: Iterable[tuple[Any, ...]], now: float, max_batches: int, batch_size: int, batch_bytes: int,
    blocked: set[str],
) -> list[list[Any]]:  # fmt: skip
    """Requests into batches, in order: each candidate is (key, user, batchable, batch key, solo, next_at,
    lease_until, size). A user's request joins only the batch of its user's previous one; one that cannot
    (or is not due, or would need a batch past `max_batches`) blocks its user for the rest, as does `blocked`."""
    blocked = set(blocked)
    user_batch: dict[str, int] = {}  # user -> index of the open batch holding its last request
    open_batch: dict[str, int] = {}  # batch key -> index of the batch still filling
    chosen: list[list[Any]] = []
    sizes: list[int] = []
    for key_, user, batchable, key, solo, next_at, lease_until, size in candidates:
        if user in blocked:
            continue
        if next_at > now or lease_until > now:
            blocked.add(user)
            continue
        mergeable = batchable and not solo
        target = open_batch.get(key) if mergeable else None
        if target is not None and (len(chosen[target]) >= batch_size or sizes[target] + size > batch_bytes):
            target = None
        if user_batch.get(user, target) != target:
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
        chosen[target].append(key_)
        sizes[target] += size
        user_batch[user] = target
    return chosen


def _consecutive(sizes: list[int], batch_size: int, batch_bytes: int) -> list[list[int]]:
    """`_group` of a pack whose requests all share one batch key (or none is batchable) and whose users are all
    different, as the places in the pack: nothing blocks there, so the batches are the requests in order, cut at
    `batch_size` or before the request that would take a batch past `batch_bytes` (one batch each when none is
    batchable: `batch_size` 1). Cut by count alone when no such batch passes `batch_bytes` (the usual case)."""
    n = len(sizes)
    starts = range(0, n, batch_size)
    if all(sum(sizes[i : i + batch_size]) <= batch_bytes for i in starts):
        return [list(range(i, min(i + batch_size, n))) for i in starts]
    chosen: list[list[int]] = []
    total = 0
    for i, size in enumerate(sizes):
        if not chosen or len(chosen[-1]) >= batch_size or total + size > batch_bytes:
            chosen.append([])
            total = 0
        chosen[-1].append(i)
        total += size
    return chosen


def _pack_rows(run: _PackRun, chosen: list[list[int]]) -> list[list[Row]]:
    """A claimed pack's batches (places in the pack) as rows, made from the pack as stored. Params and headers are
    decoded once an envelope, not once a request (and the rows of an envelope share the decoded dicts, which
    nothing changes)."""
    kept, mids, indexes, users, bodies, _, numbers = run.entries  # kept: the envelopes as stored
    envelopes = [(e.method, e.url, json.loads(e.params), json.loads(e.headers), bool(e.batchable))
                 for e in kept]  # fmt: skip
    destination, created, lease, pack = run.destination, run.created, run.claim, run.pack
    # tuple.__new__ with every field (spec.new_tuple): a frame less per request on the path every one takes.
    return [
        [new_tuple(Row, (0, destination, mids[i], users[i], method, url, params, headers, bodies[i], batchable, 0,
                         created, lease, indexes[i], pack, i))
         for i in batch
         for method, url, params, headers, batchable in (envelopes[numbers[i]],)]
        for batch in chosen
    ]  # fmt: skip


def _stored_keys(db: sqlite3.Connection, destination: str, message_ids: list[str]) -> set[str]:
    """Which of these messageIds have a dedupe key of the instance already (stored before)."""
    found: set[str] = set()
    for part in _chunks(message_ids):
        marks = ",".join("?" * len(part))
        sql = f"SELECT message_id FROM request_keys WHERE destination = ? AND message_id IN ({marks})"
        found.update(mid for (mid,) in db.execute(sql, (destination, *part)))
    return found


class Outbox:
    """One SQLite file; each thread gets its own connection."""

    def __init__(
        self, path: str | Path, *, dedupe_window: float = 24 * 3600.0, cart_ttl: float = DEFAULT_TTL,
        debug_keep: int = 0, pack_size: int = DEFAULT_PACK_SIZE,
    ) -> None:  # fmt: skip
        """`pack_size`: the most requests of one instance stored as one pack (0: every request a row of its own);
        a pack is claimed whole, so it also bounds what a killed worker leaves to be sent again."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dedupe_window = dedupe_window
        self.cart_ttl = cart_ttl
        #: Messages the debugger keeps (0: off): outcomes then also log each delivery attempt.
        self.debug_keep = debug_keep
        self.pack_size = pack_size
        self._local = threading.local()
        self._lock = _write_lock(self.path)
        self._runs: dict[int, _PackRun] = {}  # packs this process has claimed, until their outcomes are recorded
        self._runs_lock = threading.Lock()
        self._holder = Holder.new()  # who has this process's packs out
        self._mapper_due: dict[str, float] = {}  # mapper lease holder -> when its lease is next renewed, at the latest
        db = self._db()
        keyed = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'request_keys'").fetchone() is not None
        db.executescript(SCHEMA + CARTS_SCHEMA + debugger.SCHEMA)  # executescript commits on its own
        if not keyed:  # a file from before the dedupe keys: its stored requests dedupe as they did
            with self._write() as db:
                db.execute(
                    "INSERT OR IGNORE INTO request_keys (destination, message_id, count, stored_at)"
                    " SELECT destination, message_id, COUNT(*), MIN(created_at) FROM requests"
                    " GROUP BY destination, message_id"
                )
        columns = {(t, row[1]) for t in {m[0] for m in MIGRATIONS} for row in db.execute(f"PRAGMA table_info({t})")}
        missing = [sql for table, column, sql in MIGRATIONS if (table, column) not in columns]
        if missing or db.execute("SELECT 1 FROM sqlite_master WHERE name = 'inbox_live'").fetchone() is None:
            with self._write() as db:  # another process may have migrated meanwhile: check again inside
                for table, column, sql in MIGRATIONS:
                    if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
                        db.execute(sql)
                db.execute(LIVE_INBOX_INDEX)

    @classmethod
    def configured(cls, config: OutboxConfig, *, debug_keep: int = 0, path: str | Path | None = None) -> Outbox:
        """The outbox an `[outbox]` section describes (at `path` when given): its file, dedupe window and cart
        ttl, and packs of `concurrency` x `batch_size` requests (what one worker has in flight, so what a crash
        can send again)."""
        return cls(path or config.path, dedupe_window=config.dedupe_window, cart_ttl=config.cart_ttl,
                   debug_keep=debug_keep, pack_size=config.concurrency * config.batch_size)  # fmt: skip

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
        events: Iterable[MessageRequests],
        now: float | None = None,
        *,
        forms: Mapping[str, StoredForm] | None = None,
        holder: Holder | None = None,
        lease: float = 60.0,
        carts: CartBook | None = None,
    ) -> Enqueued:
        """Store events' requests in one transaction, removing the inbox events they came from; returns
        the requests accepted, the duplicates ignored and the events that could not be stored.
        Committed when this returns.

        Each event is stored whole or not at all: one whose requests cannot be written (a value SQLite
        cannot take) is set aside, as a dead inbox event when it came from the inbox, and the others are
        stored. `forms` gives each instance's stored form (`StoredForm`, from the destination's declaration);
        instances it does not name keep the built-in destinations' credential names and whole URLs.
        With `holder`, nothing is committed unless it still holds the mapper lease (LeaseLost). `carts` are
        the round's cart changes (carts.py), written in the same transaction as the requests they caused."""
        forms = forms or {}
        now = time.time() if now is None else now
        envelopes: _Envelopes = {}
        units: list[_Unit] = []
        for event in events:
            if event.dead is not None:
                units.append((event, [], event.dead))
                continue
            try:
                units.append((event, self._rows(event, forms, envelopes, now), None))
            except _EVENT_FAULTS as exc:
                units.append((event, [], _unstorable(event, exc)))
        if not units and (carts is None or not (carts.changes or carts.applied)):
            return Enqueued({}, 0)
        with self._write() as db:
            if holder is not None:
                if not self._hold(db, holder, lease, now):
                    raise LeaseLost
                db.execute("DELETE FROM inbox_claims WHERE holder = ?", (holder.token,))  # its round is done
            if carts is not None and (carts.changes or carts.applied):
                save_carts(db, carts.changes, carts.applied, now)
            try:
                db.execute("SAVEPOINT every_event")
                accepted = self._store(db, units, now)
                db.execute("RELEASE every_event")
            except sqlite3.OperationalError:
                raise  # the database's state (locked, full), not an event's: nothing is blamed
            except _EVENT_FAULTS:
                db.execute("ROLLBACK TO every_event")
                db.execute("RELEASE every_event")
                log.info("a round of events could not be stored as a whole; finding the ones that cannot")
                for i, unit in enumerate(units):  # each on its own, undone: only to learn which fail
                    db.execute("SAVEPOINT one_event")
                    try:
                        self._store(db, [unit], now)
                    except _EVENT_FAULTS as exc:
                        units[i] = (unit[0], [], _unstorable(unit[0], exc, unit[1]))
                    finally:
                        db.execute("ROLLBACK TO one_event")
                        db.execute("RELEASE one_event")
                accepted = self._store(db, units, now)  # the others together (in packs as usual), those set aside
            self._record(db, units)
        total = sum(map(len, map(_SECOND, units)))  # a unit set aside has no rows
        failed = [(i, reason) for i, (_, _, reason) in enumerate(units) if reason is not None]
        return Enqueued(accepted, total - sum(accepted.values()), failed)

    def _record(self, db: sqlite3.Connection, units: list[_Unit]) -> None:
        """The round's debugger records (set-aside messages saying so), in its transaction; never its failure."""
        if not self.debug_keep:
            return
        records = [debugger.set_aside(u[0].debug, u[2]) if u[2] else u[0].debug
                   for u in units if u[0].debug is not None]  # fmt: skip
        if not records:
            return
        try:  # what the debugger shows must never hold back what is delivered
            db.execute("SAVEPOINT debugger")
            debugger.save(db, records, self.debug_keep)
            db.execute("RELEASE debugger")
        except _EVENT_FAULTS:
            db.execute("ROLLBACK TO debugger")
            db.execute("RELEASE debugger")
            log.warning("the debugger could not record a round of messages; they are delivered all the same")

    @staticmethod
    def _rows(
        message: MessageRequests, forms: Mapping[str, StoredForm], envelopes: _Envelopes, now: float
    ) -> list[tuple[Any, ...]]:
        """One message's `requests` rows, in its instances' stored forms."""
        rows: list[tuple[Any, ...]] = []
        texts = message.texts
        for i, (destination, message_id, user_key, requests_) in enumerate(message.items):
            bodies = texts[i] if texts is not None else None
            for idx, r in enumerate(requests_):
                method, url, params, headers, value, batchable, secret_names = r
                # Requests of one instance share params and headers: encode each distinct envelope once (its
                # dicts compared as they are, cheaper than a key made of their items). The names a request
                # declares secret are part of the key: they decide what is left out.
                endpoint = (destination, method, url, batchable, secret_names)
                known = envelopes.get(endpoint, ())
                e = None
                for p, h, made in known:
                    if p == params and h == headers:
                        e = made
                        break
                if e is None:
                    e = _envelope(r, forms.get(destination, _KNOWN))
                    seen = envelopes.setdefault(endpoint, [])
                    if len(seen) < _ENVELOPES_KEPT:
                        seen.append((params, headers, e))
                body = bodies[idx] if bodies is not None else json_text(value)
                rows.append(
                    (destination, message_id, idx, user_key, method, e[0], e[1], e[2], body, e[3], e[4], len(body),
                     now, now)
                )  # fmt: skip
        return rows

    def _store(self, db: sqlite3.Connection, units: list[_Unit], now: float) -> dict[str, int]:
        """Insert these events' requests with their dedupe keys, remove their inbox events and set aside the
        ones with a reason; returns the requests stored per instance. An instance's requests go in packs of up
        to `pack_size` (rows when it is 0); a message an instance has stored before (its key) is left out."""
        # Few tracked objects a message (a round's survive to its end, and each 700 cost a pass of the collector).
        groups: dict[str, list[tuple[str, list[tuple[Any, ...]]]]] = {}  # instance -> [(messageId, its rows)]
        for _, rows, reason in units:
            if reason is not None:
                continue
            if len(rows) == 1:  # a message of one request for one instance
                groups.setdefault(rows[0][0], []).append((rows[0][1], rows))
                continue
            if len({row[0] for row in rows}) == len(rows):  # the usual message: a request for each instance
                for row in rows:
                    groups.setdefault(row[0], []).append((row[1], [row]))
                continue
            for (destination, message_id), group in groupby(rows, key=_MESSAGE_OF):
                groups.setdefault(destination, []).append((message_id, list(group)))
        keys: list[Any] = []  # the dedupe keys' columns, one key after another
        accepted: dict[str, int] = {}
        for destination, candidates in groups.items():
            stored = _stored_keys(db, destination, list(map(_FIRST, candidates)))
            messages = []
            for message in candidates:
                if message[0] not in stored:
                    stored.add(message[0])  # the same message twice in one round: stored once
                    messages.append(message)
            if not messages:
                continue
            counts = [len(rows) for _, rows in messages]
            mids = list(map(_FIRST, messages))
            if not self.pack_size:
                before = db.total_changes
                db.executemany(_INSERT, list(chain.from_iterable(map(_SECOND, messages))))
                accepted[destination] = db.total_changes - before
                keys.extend(chain.from_iterable(zip(repeat(destination), mids, counts, repeat(now), repeat(None))))
                continue
            # Whole messages to a pack (a key names the one pack that holds its message's requests): each pack the
            # longest run of messages whose requests fit in `pack_size` (one message at least).
            ends = list(accumulate(counts))
            start = 0
            while start < len(messages):
                before = ends[start - 1] if start else 0
                end = max(bisect_right(ends, before + self.pack_size, start), start + 1)
                text = entries_stored(list(chain.from_iterable(map(_SECOND, messages[start:end]))), first=1)
                pack = db.execute(
                    "INSERT INTO packs (destination, count, created_at) VALUES (?, ?, ?)",
                    (destination, ends[end - 1] - before, now),
                ).lastrowid
                db.execute("INSERT INTO pack_entries (pack, entries) VALUES (?, ?)", (pack, text))
                keys.extend(chain.from_iterable(zip(repeat(destination), mids[start:end], counts[start:end],
                                                    repeat(now), repeat(pack))))  # fmt: skip
                start = end
            accepted[destination] = ends[-1]
        _insert(db, "INSERT OR IGNORE INTO request_keys (destination, message_id, count, stored_at, pack)", 5, keys)
        done = sorted(e.inbox_id for e, _, reason in units if reason is None and e.inbox_id is not None)
        dead = [(reason, now, e.inbox_id) for e, _, reason in units if reason is not None and e.inbox_id is not None]
        db.executemany("DELETE FROM inbox WHERE id BETWEEN ? AND ?", _runs_of(done))
        db.executemany("UPDATE inbox SET dead_reason = ?, dead_at = ? WHERE id = ?", dead)
        return accepted

    # -- the inbox: accepted events waiting to be mapped

    def accept_events(
        self, events: list[dict[str, Any]], now: float | None = None, *, source: str | None = None
    ) -> int:
        """Commit raw events in one transaction, with the way in they came by; ValueError/TypeError when one
        cannot be encoded."""
        now = time.time() if now is None else now
        rows = [(json_text(e), now, source) for e in events]
        with self._write() as db:
            db.executemany("INSERT INTO inbox (body, received_at, source) VALUES (?, ?, ?)", rows)
        return len(rows)

    # -- the mapper lease: one mapping process at a time, so requests are stored in arrival order

    @staticmethod
    def _hold(db: sqlite3.Connection, holder: Holder, lease: float, now: float) -> bool:
        """Renew the mapper lease if `holder` still has it."""
        return (
            db.execute(
                "UPDATE leases SET until = ? WHERE name = ? AND holder = ?", (now + lease, MAPPER, holder.token)
            ).rowcount
            == 1
        )

    @staticmethod
    def _take(db: sqlite3.Connection, holder: Holder, lease: float, now: float) -> bool:
        """Take or renew the mapper lease: free, ended, ours, or held by a process gone from this host."""
        row = db.execute("SELECT holder, host, pid, until FROM leases WHERE name = ?", (MAPPER,)).fetchone()
        if row is not None and row[0] != holder.token and row[3] > now:
            if row[1] != holder.host or _alive(row[2]):
                return False
            log.info("the mapper lease's holder (process %d) is gone; this process maps the inbox now", row[2])
        db.execute(
            "INSERT OR REPLACE INTO leases (name, holder, host, pid, until) VALUES (?, ?, ?, ?, ?)",
            (MAPPER, holder.token, holder.host, holder.pid, now + lease),
        )
        return True

    def renew_mapper(self, holder: Holder, lease: float, now: float | None = None) -> None:
        """Keep the mapper lease through a long round; LeaseLost when another process has it now."""
        now = time.time() if now is None else now
        with self._write() as db:
            if not self._hold(db, holder, lease, now):
                raise LeaseLost

    def release_mapper(self, holder: Holder) -> None:
        """Give the mapper lease up (a graceful stop), so another process need not wait for it to end."""
        self._mapper_due.pop(holder.token, None)
        with self._write() as db:
            db.execute("DELETE FROM leases WHERE name = ? AND holder = ?", (MAPPER, holder.token))

    def claim_inbox(
        self, limit: int, holder: Holder, lease: float, now: float | None = None
    ) -> list[tuple[int, str, str | None, float]]:
        """The oldest accepted events to map, up to `limit`, as (inbox id, raw JSON text, way in, received at),
        under the mapper lease ([] while another process holds it).

        An event claimed before without being committed (its process died mapping it) is mapped alone,
        so it cannot take others down with it again; after MAX_MAPPING_ATTEMPTS such claims it is set
        aside as a dead inbox event (a claim by a mapper that stalled past its lease counts too: it did not
        finish either)."""
        now = time.time() if now is None else now
        if now < self._mapper_due.get(holder.token, 0.0) and self._db().execute(_ANY_EVENT).fetchone() is None:
            return []  # nothing to map, and this holder's lease was taken or renewed not long ago: no write
        with self._write() as db:
            if not self._take(db, holder, lease, now):
                self._mapper_due.pop(holder.token, None)
                return []
            self._mapper_due[holder.token] = now + lease / 3  # renewed again by then, like a pack's lease
            # Rounds claimed and never committed nor given back: their process died or stalled past its lease.
            left = db.execute("SELECT first, last FROM inbox_claims").fetchall()
            if left:
                db.executemany(
                    "UPDATE inbox SET attempts = attempts + 1 WHERE id BETWEEN ? AND ? AND dead_reason IS NULL", left
                )
                db.execute("DELETE FROM inbox_claims")
            while True:
                rows = db.execute(
                    "SELECT id, body, attempts, source, received_at FROM inbox INDEXED BY inbox_live"
                    " WHERE dead_reason IS NULL ORDER BY id LIMIT ?",
                    (limit,),
                ).fetchall()
                if not rows:
                    return []
                retried = next((i for i, row in enumerate(rows) if row[2] > 0), None)
                if retried == 0 and rows[0][2] >= MAX_MAPPING_ATTEMPTS:
                    reason = f"mapping it never finished: its process stopped each of {rows[0][2]} times"
                    db.execute("UPDATE inbox SET dead_reason = ?, dead_at = ? WHERE id = ?", (reason, now, rows[0][0]))
                    continue
                rows = rows[:1] if retried == 0 else rows[:retried]
                break
            # The oldest live events are consecutive among live ones: one range covers them. An attempt once the
            # next claim finds it left (not at once: a round that commits, nearly all, writes no event twice).
            db.execute(
                "INSERT OR REPLACE INTO inbox_claims (holder, first, last) VALUES (?, ?, ?)",
                (holder.token, rows[0][0], rows[-1][0]),
            )
        return [(rid, body, source, received) for rid, body, _, source, received in rows]

    def unclaim_inbox(self, holder: Holder) -> None:
        """A round that failed in this process, not by dying: its events do not count it as an attempt.
        Only while `holder` still holds the mapper lease (else the next holder has counted it already)."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM leases WHERE name = ? AND holder = ?", (MAPPER, holder.token)).fetchone():
                db.execute("DELETE FROM inbox_claims WHERE holder = ?", (holder.token,))

    def inbox_count(self) -> int:
        """Accepted events not yet mapped (dead inbox events are not waiting)."""
        return int(self._db().execute("SELECT COUNT(*) FROM inbox WHERE dead_reason IS NULL").fetchone()[0])

    def dead_events(self, limit: int = 50) -> list[dict[str, Any]]:
        """Inbox events set aside because they could not be mapped or stored, with the reason."""
        out: list[dict[str, Any]] = []
        for rid, body, received, died, reason in self._db().execute(
            "SELECT id, body, received_at, dead_at, dead_reason FROM inbox WHERE dead_reason IS NOT NULL"
            " ORDER BY id LIMIT ?",
            (limit,),
        ):
            try:
                message = json.loads(body)
                mid = message.get("messageId") if isinstance(message, dict) else None
            except (ValueError, RecursionError):
                mid = None
            out.append({"id": rid, "message_id": mid if isinstance(mid, str) else None, "received_at": received,
                        "dead_at": died, "reason": reason})  # fmt: skip
        return out

    def dead_event_count(self) -> int:
        """Inbox events set aside."""
        return int(self._db().execute("SELECT COUNT(*) FROM inbox WHERE dead_reason IS NOT NULL").fetchone()[0])

    def inbox_states(self, ids: list[int]) -> dict[int, bool]:
        """Whether each of these inbox events still in the inbox is dead (True) or waits to be mapped (False); a
        mapped event has left the inbox."""
        db, out = self._db(), {}
        for part in _chunks(sorted(set(ids))):
            marks = ",".join("?" * len(part))
            sql = f"SELECT id, dead_reason IS NOT NULL FROM inbox WHERE id IN ({marks})"
            out.update((rid, bool(dead)) for rid, dead in db.execute(sql, part))
        return out

    def request_states(self, ids: list[int]) -> dict[int, tuple[str, str]]:
        """(state, instance) of each of these request rows that exists (`outbox dead` names dead ones by row id)."""
        db, out = self._db(), {}
        for part in _chunks(sorted(set(ids))):
            marks = ",".join("?" * len(part))
            sql = f"SELECT id, state, destination FROM requests WHERE id IN ({marks})"
            out.update((rid, (state, destination)) for rid, state, destination in db.execute(sql, part))
        return out

    def replay_events(self, ids: list[int] | None = None) -> int:
        """Dead inbox events back to be mapped again (after the fault that stopped them is fixed)."""
        sql = "UPDATE inbox SET dead_reason = NULL, dead_at = NULL, attempts = 0 WHERE dead_reason IS NOT NULL"
        args: list[Any] = []
        if ids:
            sql += f" AND id IN ({','.join('?' * len(ids))})"
            args.extend(ids)
        with self._write() as db:
            return db.execute(sql, args).rowcount

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
        """Lease up to `max_batches` batches of due rows for `destination`; when none is due, the oldest pack not
        out, whole (as many batches as it makes), while this process has fewer than PACKS_OUT of them out.

        Per-user order: a user's request is claimable only when every earlier pending request of
        that user is claimed in this same round into the same batch (concatenated in order), so no
        request overtakes an earlier one that is in flight or waiting to retry. Users with such a
        request are left out before the scan, so however many rows they hold, others go on. Rows of users
        with a request out in this process's packs wait for those. Packs are claimed and written in stored
        order, and nothing is claimed while another live process has a pack of the instance out (its users
        are unknown here); a pack's request whose user has a pending row, a request out in this process's
        packs, or an earlier request in the pack it cannot share a batch with, is held: it becomes a row
        behind that user's earlier requests when the pack's outcome is written.
        """
        now = time.time() if now is None else now
        until = now + lease
        if self._nothing_to_claim(destination, now):
            return []
        with self._write() as db:
            with self._runs_lock:
                for run in [r for r in self._runs.values() if r.destination == destination and r.until <= now]:
                    self._void(run)  # its lease ended: the pack is anyone's again
                mine = sorted((r for r in self._runs.values() if r.destination == destination), key=_by_pack)
            if self._foreign_pack_out(db, destination, mine, now):
                return []
            # A row waits for its user's requests sent in this process's packs; a pack's request also for those
            # they hold, which become rows when their pack is written.
            busy = {user for run in mine for user in run.sent_users}
            batches = self._claim_rows(db, destination, max_batches, batch_size, batch_bytes, until, now, scan, busy)
            busy = {user for run in mine for user in run.entries.users}
            for _ in range(HELD_PACKS_A_CLAIM):
                if batches or len(mine) >= PACKS_OUT:
                    return batches
                pack = db.execute(
                    "SELECT id, created_at FROM packs INDEXED BY packs_pending WHERE destination = ?"
                    f" AND state = 'pending' AND id NOT IN ({','.join('?' * len(mine))}) ORDER BY id LIMIT 1",
                    (destination, *(run.pack for run in mine)),
                ).fetchone()
                if pack is None:
                    return []
                run, chosen = self._claim_pack(db, destination, pack[0], pack[1], batch_size, batch_bytes, until,
                                               now, busy)  # fmt: skip
                if chosen:
                    break
                # Every request held: the pack is rows now (or once the packs before it are).
                with self._runs_lock:
                    mine = sorted((r for r in self._runs.values() if r.destination == destination), key=_by_pack)
                sent = {user for run in mine for user in run.sent_users}
                batches = self._claim_rows(db, destination, max_batches, batch_size, batch_bytes, until, now,
                                           scan, sent)  # fmt: skip
                busy = {user for run in mine for user in run.entries.users}
            else:
                return batches
        # Made once the transaction is committed: the pack is this process's under its lease by then, and making
        # its rows is a pack's worth of Python work the other writers of this file need not wait for.
        try:
            return _pack_rows(run, chosen)
        except BaseException:
            with self._runs_lock:
                self._void(run)  # not renewed, so its lease ends and the pack goes again
            raise

    def _nothing_to_claim(self, destination: str, now: float) -> bool:
        """No row pending, and no pack this process may take (it has PACKS_OUT out, or none but its own is pending):
        said by a read or two, without the write lock that the senders' outcomes and the intake wait on (the loop
        asks each time a batch comes back, and at each new round)."""
        with self._runs_lock:
            out = [r.pack for r in self._runs.values() if r.destination == destination and r.until > now]
        db = self._db()
        if db.execute(_ANY_ROW_PENDING, (destination,)).fetchone() is not None:
            return False
        if len(out) >= PACKS_OUT:
            return True
        other = db.execute(
            "SELECT 1 FROM packs INDEXED BY packs_pending WHERE destination = ? AND state = 'pending'"
            f" AND id NOT IN ({','.join('?' * len(out))}) LIMIT 1",
            (destination, *out),
        ).fetchone()
        return other is None

    def _foreign_pack_out(self, db: sqlite3.Connection, destination: str, mine: list[_PackRun], now: float) -> bool:
        """Whether another claim has a pack of the instance out: under a lease not ended, by a process that is
        not gone from this host (a SIGKILLed worker's pack is taken over at once, as the mapper lease is)."""
        ours = {(run.pack, run.until) for run in mine}
        for pack, end, host, pid in db.execute(
            "SELECT id, lease_until, host, pid FROM packs INDEXED BY packs_pending WHERE destination = ?"
            " AND state = 'pending' AND lease_until > ?",
            (destination, now),
        ):
            if (pack, end) in ours:
                continue
            if host == self._holder.host and pid is not None and pid != self._holder.pid and not _alive(pid):
                continue
            return True
        return False

    def _claim_rows(  # noqa: PLR0917 - the claim's own parameters, passed on
        self, db: sqlite3.Connection, destination: str, max_batches: int, batch_size: int, batch_bytes: int,
        until: float, now: float, scan: int, busy: set[str],
    ) -> list[list[Row]]:  # fmt: skip
        scan = min(scan, max(2 * max_batches * batch_size, 200))
        candidates = db.execute(
            "SELECT id, user_key, batchable, batch_key, solo, next_at, lease_until, size FROM requests"
            " WHERE destination = ? AND state = 'pending' AND user_key NOT IN ("
            "  SELECT user_key FROM requests WHERE destination = ? AND state = 'pending'"
            "  AND (attempts > 0 OR lease_until > 0) AND (next_at > ? OR lease_until > ?))"
            " ORDER BY id LIMIT ?",
            (destination, destination, now, now, scan),
        ).fetchall()
        chosen = _group(candidates, now, max_batches, batch_size, batch_bytes, busy)
        ids = [rid for batch in chosen for rid in batch]
        if not ids:
            return []
        for part in _chunks(ids):
            db.execute(
                "UPDATE requests SET lease_until = ? WHERE id IN (" + ",".join("?" * len(part)) + ")", [until, *part]
            )
        rows: dict[int, Row] = {}
        decoded: dict[str, Any] = {}  # params and headers repeat across rows: decode each text once
        for part in _chunks(ids):
            sql = (
                "SELECT id, message_id, user_key, method, url, params, headers, body, batchable, attempts,"
                " created_at, idx FROM requests WHERE id IN (" + ",".join("?" * len(part)) + ")"
            )
            for rid, mid, user, method, url, params, headers, body, batchable, attempts, created, idx in db.execute(
                sql, part
            ):
                rows[rid] = Row(rid, destination, mid, user, method, url, _decoded(decoded, params),
                                _decoded(decoded, headers), body, bool(batchable), attempts, created, until,
                                idx)  # fmt: skip
        return [[rows[rid] for rid in batch] for batch in chosen]

    def _claim_pack(  # noqa: PLR0917 - the claim's own parameters, passed on
        self, db: sqlite3.Connection, destination: str, pack: int, created: float, batch_size: int,
        batch_bytes: int, until: float, now: float, busy: set[str],
    ) -> tuple[_PackRun, list[list[int]]]:  # fmt: skip
        """Lease one pack and group its requests into batches (their places in the pack; `_pack_rows` makes
        them rows); the requests held (see `claim`) become rows with its outcome. With none to send, the pack is
        done at once, or as soon as the packs before it are."""
        (text,) = db.execute("SELECT entries FROM pack_entries WHERE pack = ?", (pack,)).fetchone()
        stored = stored_pack(text)
        envelopes = stored.envelopes
        # Users with a pending row (none to look up while the instance has no row pending, the usual case).
        rows_pending = db.execute(_ANY_ROW_PENDING, (destination,)).fetchone() is not None
        users = list(set(stored.users)) if rows_pending else []
        held = set(busy)
        for part in _chunks(users):  # through requests_pending_users: a few lookups, however many rows wait
            held.update(user for (user,) in db.execute(
                "SELECT DISTINCT user_key FROM requests INDEXED BY requests_pending_users WHERE destination = ?"
                f" AND state = 'pending' AND user_key IN ({','.join('?' * len(part))})", (destination, *part),
            ))  # fmt: skip
        batchable = {bool(e.batchable) for e in envelopes}
        one_kind = batchable == {False} or (batchable == {True} and len({e.batch_key for e in envelopes}) == 1)
        if one_kind and len(set(stored.users)) == len(stored.users) and held.isdisjoint(stored.users):
            # The usual pack: a request a user, none held, batches of one kind (or none batchable).
            chosen = _consecutive(stored.sizes, batch_size if True in batchable else 1, batch_bytes)
            sent = frozenset(stored.users)
        else:
            # A generator: each candidate goes as soon as it is grouped (fewer live objects, collector passes).
            entries = zip(stored.users, stored.sizes, stored.numbers, strict=True)
            candidates = ((i, user, envelopes[n].batchable, envelopes[n].batch_key, 0, 0.0, 0.0, size)
                          for i, (user, size, n) in enumerate(entries))  # fmt: skip
            chosen = _group(candidates, now, len(stored.users), batch_size, batch_bytes, held)
            sent = frozenset(stored.users[i] for batch in chosen for i in batch)
        run = _PackRun(pack, destination, stored, created, until, sum(map(len, chosen)), length=until - now,
                       renewed=now, sent_users=sent)  # fmt: skip
        db.execute("UPDATE packs SET lease_until = ?, host = ?, pid = ? WHERE id = ?",
                   (until, self._holder.host, self._holder.pid, pack))  # fmt: skip
        with self._runs_lock:
            self._runs[pack] = run
        if not run.expected:
            run.done = True
            self._finish_ready(db, destination, now)
        return run, chosen

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
        pack = (
            self._db()
            .execute(
                "SELECT MIN(lease_until) FROM packs INDEXED BY packs_pending"
                " WHERE destination = ? AND state = 'pending'",
                (destination,),
            )
            .fetchone()
        )
        due = [t for t in (row[0], pack[0]) if t is not None]
        return min(due) if due else None

    # -- outcomes: each recorded only where the row still carries the claim's lease

    @staticmethod
    def _under_lease(db: sqlite3.Connection, sql: str, rows: list[Row], values: list[tuple[Any, ...]]) -> int:
        """Run an outcome's UPDATE (`values` end with the row id) for the rows still under their claim;
        returns how many were recorded. A row another claim took since is that claim's to record."""
        before = db.total_changes
        db.executemany(
            sql + " WHERE id = ? AND state = 'pending' AND lease_until = ?",
            [(*v, r.lease) for v, r in zip(values, rows, strict=True)],
        )
        recorded = db.total_changes - before
        if recorded < len(rows):
            log.warning("%d outcome(s) not recorded: their lease had passed to another claim", len(rows) - recorded)
        return recorded

    def _attempts(
        self, db: sqlite3.Connection, rows: list[Row], status: str, detail: str | None, now: float, *,
        next_at: list[float] | None = None,
    ) -> None:  # fmt: skip
        """Log each outcome for the debugger (when it is on), in the transaction that records it."""
        if self.debug_keep and rows:
            nexts: list[float | None] = list(next_at) if next_at else [None] * len(rows)
            debugger.log_attempts(db, [(r.destination, r.message_id, r.index, now, status, detail, n)
                                       for r, n in zip(rows, nexts, strict=True)])  # fmt: skip

    def delivered(self, rows: list[Row], status: str, now: float | None = None) -> int:
        now = time.time() if now is None else now
        rows, noted = self._packed(rows, ("delivered", status, None, None, now), now)
        if not rows:
            return noted
        # Only dedupe needs a delivered row (its instance, messageId and index): the body goes, unless the
        # debugger shows its message (then `prune` clears it once the message leaves the debugger).
        cleared = "" if self.debug_keep else ", body = '', params = '{}', headers = '{}'"
        with self._write() as db:
            self._attempts(db, rows, status, None, now)
            return noted + self._under_lease(
                db,
                "UPDATE requests SET state = 'delivered', attempts = attempts + 1, finished_at = ?,"
                " last_status = ?, last_error = NULL, lease_until = 0" + cleared,
                rows,
                [(now, status, r.id) for r in rows],
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
    ) -> tuple[int, int]:
        """Schedule another attempt (full-jitter exponential backoff, or `delay` when the vendor
        said when); a request past the retry window with its minimum attempts made is dead.
        Returns (rescheduled, died), as recorded under the claim's lease."""
        now = time.time() if now is None else now
        later: list[Row] = []
        dead: list[Row] = []
        waits: list[tuple[Any, ...]] = []
        for r in rows:
            attempts = r.attempts + 1
            if attempts >= min_attempts and now - r.created_at >= retry_window:
                dead.append(r)
                continue
            backoff = random.uniform(0, min(backoff_cap, backoff_base * 2 ** min(attempts, 30)))
            # A vendor's Retry-After wins, but "0" or a past date must not turn retries into a busy loop.
            wait = max(delay, backoff) if delay is not None else backoff
            later.append(r)
            waits.append((now + wait, status, detail, r.id))
        _, rescheduled = self._packed(later, [("retry", status, detail, w[0], now) for w in waits], now)
        waits = [w for r, w in zip(later, waits, strict=True) if not r.pack]
        later = [r for r in later if not r.pack]
        dead, died = self._packed(dead, ("dead", status, detail, None, now), now)
        if not later and not dead:
            return rescheduled, died
        with self._write() as db:
            self._attempts(db, later, status, detail, now, next_at=[w[0] for w in waits])
            self._attempts(db, dead, status, detail, now)
            rescheduled += self._under_lease(
                db,
                "UPDATE requests SET attempts = attempts + 1, next_at = ?, lease_until = 0, last_status = ?,"
                " last_error = ?",
                later,
                waits,
            )
            return rescheduled, died + self._under_lease(db, _DEAD, dead, [(now, status, detail, r.id) for r in dead])

    def dead(self, rows: list[Row], status: str, detail: str, now: float | None = None) -> int:
        now = time.time() if now is None else now
        rows, noted = self._packed(rows, ("dead", status, detail, None, now), now)
        if not rows:
            return noted
        with self._write() as db:
            self._attempts(db, rows, status, detail, now)
            return noted + self._under_lease(db, _DEAD, rows, [(now, status, detail, r.id) for r in rows])

    def split(self, rows: list[Row], status: str, detail: str, now: float | None = None) -> int:
        """A merged batch was refused as bad input: send each of its requests alone, at once."""
        now = time.time() if now is None else now
        rows, noted = self._packed(rows, ("split", status, detail, now, now), now)
        if not rows:
            return noted
        with self._write() as db:
            self._attempts(db, rows, status, detail, now, next_at=[now] * len(rows))
            return noted + self._under_lease(
                db,
                "UPDATE requests SET solo = 1, attempts = attempts + 1, next_at = ?, lease_until = 0,"
                " last_status = ?, last_error = ?",
                rows,
                [(now, status, detail, r.id) for r in rows],
            )

    def release(self, rows: list[Row], now: float | None = None) -> int:
        """Give claimed requests back untouched (a graceful stop): a packed one becomes a row, as if held."""
        now = time.time() if now is None else now
        rows, noted = self._packed(rows, _HELD, now)
        if not rows:
            return noted
        with self._write() as db:
            return noted + self._under_lease(db, "UPDATE requests SET lease_until = 0", rows, [(r.id,) for r in rows])

    # -- packs: outcomes noted as batches come back, written once per pack

    def _packed(self, rows: list[Row], outcomes: _Outcome | list[_Outcome], now: float) -> tuple[list[Row], int]:
        """Note the outcomes of packed requests (`outcomes`: one for all `rows`, or each row's own); returns the
        rows of their own (to record as rows) and how many packed outcomes were noted (none for a claim replaced
        since). A pack's outcomes are written in one transaction once all its sent requests have one."""
        own = [r for r in rows if not r.pack]
        if len(own) == len(rows):
            return own, 0
        each = outcomes if isinstance(outcomes, list) else repeat(outcomes)
        # A batch's rows share their pack and claim: noted at once. Anything else, a row at a time.
        if len(set(map(_PACK_CLAIM, rows))) == 1:
            parts = [(rows[0], rows, each)]
        else:
            parts = [(r, [r], [o]) for r, o in zip(rows, each, strict=False)]  # `each` may repeat
        noted: dict[int, int] = {}  # pack -> outcomes noted now
        done: set[str] = set()  # instances with a pack whose outcomes are all in
        with self._runs_lock:
            for first, part, outs in parts:
                run = self._runs.get(first.pack) if first.pack else None
                if run is None or run.claim != first.lease or run.done:
                    continue
                run.outcomes.update(zip(map(_ENTRY, part), outs, strict=False))
                noted[run.pack] = noted.get(run.pack, 0) + len(part)
                if len(run.outcomes) >= run.expected:
                    run.done = True
                    done.add(run.destination)
        if done:
            with self._write() as db:
                for destination in done:
                    for pack in self._finish_ready(db, destination, now):
                        noted.pop(pack, None)  # another claim has that pack now: these outcomes are void
        return own, sum(noted.values())

    def renew_packs(self, now: float | None = None) -> None:
        """Keep this process's packs out under their leases: each is renewed once a third of its lease has gone
        by (the delivery loop calls this every fraction of a second while it has work out), so a pack is never
        anyone else's while this process is alive and sending it, however slow its vendor's answers. A lease
        that ended is not brought back: that pack, and this process's later packs of the instance, are given
        up (their batches are not sent, `current`; their outcomes are void), as another claim may have it."""
        now = time.time() if now is None else now
        with self._runs_lock:
            due = [r for r in self._runs.values() if now - r.renewed > r.length / 3]
        if not due:
            return
        with self._write() as db:
            for run in sorted(due, key=_by_pack):
                with self._runs_lock:
                    if self._runs.get(run.pack) is not run:
                        continue  # written or given up meanwhile
                until = now + run.length
                if db.execute(
                    "UPDATE packs SET lease_until = ? WHERE id = ? AND state = 'pending' AND lease_until = ?"
                    " AND lease_until > ?",
                    (until, run.pack, run.until, now),
                ).rowcount:
                    run.until, run.renewed = until, now
                    continue
                log.warning("%s: a pack of %d was given up: its lease ended before it was renewed (this process"
                            " stalled past it)", run.destination, len(run.entries.users))  # fmt: skip
                with self._runs_lock:
                    self._void(run)

    def _void(self, run: _PackRun) -> None:
        """Forget a pack this process had out, and its later packs of the same instance (their held rows must
        not be written before the outcome of the one given up). Called under `_runs_lock`."""
        for later in [r for r in self._runs.values() if r.destination == run.destination and r.pack >= run.pack]:
            del self._runs[later.pack]

    def current(self, batch: list[Row]) -> bool:
        """Whether a claimed batch is still this process's to send: a row's claim is checked when its outcome
        is recorded; a packed one's pack must still be out under the claim that returned it."""
        first = batch[0]
        if not first.pack:
            return True
        with self._runs_lock:
            run = self._runs.get(first.pack)
            return run is not None and run.claim == first.lease

    def _finish_ready(self, db: sqlite3.Connection, destination: str, now: float) -> list[int]:
        """Write the outcomes of this process's packs of an instance whose outcomes are all in, in pack order,
        up to the first one still out: a pack's new rows then follow those of the packs before it. Returns the
        packs whose outcomes could not be written (void: another claim has them, or a pack before them)."""
        with self._runs_lock:
            ready: list[_PackRun] = []
            for run in sorted((r for r in self._runs.values() if r.destination == destination), key=_by_pack):
                if not run.done:
                    break
                ready.append(self._runs.pop(run.pack))
        return [run.pack for run in ready if not self._finish(db, run, now)]

    def _finish(self, db: sqlite3.Connection, run: _PackRun, now: float) -> bool:
        """Write a pack's outcomes: the pack is done, and each request not delivered becomes a row in its
        state (in the pack's order, so behind its user's earlier rows). Only while the pack is under the run's
        own lease and no earlier pack of the instance is pending (packs are written in stored order, whoever
        sends them); else False, nothing is written, and the pack goes again when its lease ends."""
        statuses = [o[1] for o in run.outcomes.values() if o[0] == "delivered"]
        if (
            db.execute(
                "UPDATE packs SET state = 'done', delivered = ?, last_status = ?, finished_at = ?, lease_until = 0"
                " WHERE id = ? AND state = 'pending' AND lease_until = ? AND NOT EXISTS (SELECT 1 FROM packs AS p"
                " INDEXED BY packs_pending WHERE p.destination = ? AND p.state = 'pending' AND p.id < ?)",
                (
                    len(statuses),
                    statuses[-1] if statuses else None,
                    now,
                    run.pack,
                    run.until,
                    run.destination,
                    run.pack,
                ),
            ).rowcount
            != 1
        ):
            log.warning("%s: the outcomes of a pack of %d were not recorded: another claim has it, or a pack before"
                        " it, now", run.destination, len(run.entries.users))  # fmt: skip
            return False
        rows: list[tuple[Any, ...]] = []
        attempts: list[tuple[Any, ...]] = []
        outcomes = run.outcomes
        count = len(run.entries.users)
        # Every request delivered and no attempt to log (the usual pack): nothing but the pack to write.
        for i in range(count if self.debug_keep or len(statuses) < count else 0):
            kind, status, detail, next_at, at = outcomes.get(i, _HELD)
            entry = run.entries.entry(i)
            if kind != "held" and self.debug_keep:
                attempts.append((run.destination, entry.message_id, entry.index, at, status, detail, next_at))
            if kind == "delivered":
                continue
            rows.append((run.destination, *entry, "dead" if kind == "dead" else "pending", int(kind == "split"),
                         int(kind != "held"), run.created, next_at or now, now if kind == "dead" else None, status,
                         detail))  # fmt: skip
        db.executemany(_EXPLODE, rows)
        if not self.debug_keep:  # else the debugger's housekeeping clears them once it no longer shows them
            db.execute("DELETE FROM pack_entries WHERE pack = ?", (run.pack,))
        if attempts:
            debugger.log_attempts(db, attempts)
        return True

    # -- operations

    def stats(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """Per instance: pending, retrying (pending with an attempt made), delivered, dead, oldest pending age."""
        now = time.time() if now is None else now
        out: dict[str, dict[str, Any]] = {}
        # Rows by state, and packs: pending ones count their requests, done ones those they delivered.
        for destination, state, retrying, count, oldest in self._db().execute(
            "SELECT destination, state, attempts > 0, COUNT(*), MIN(created_at) FROM requests"
            " GROUP BY destination, state, attempts > 0"
            " UNION ALL SELECT destination, CASE WHEN state = 'pending' THEN 'pending' ELSE 'delivered' END, 0,"
            " SUM(CASE WHEN state = 'pending' THEN count ELSE delivered END), MIN(created_at) FROM packs"
            " GROUP BY destination, state"
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

    def pending_by_destination(self) -> dict[str, int]:
        """Pending requests (retrying ones too) per instance that has any: rows and waiting packs, read through
        their state indexes rather than `stats`' scan of every row."""
        out: dict[str, int] = {}
        for destination, count in self._db().execute(
            "SELECT destination, COUNT(*) FROM requests WHERE state = 'pending' GROUP BY destination"
            " UNION ALL SELECT destination, SUM(count) FROM packs WHERE state = 'pending' GROUP BY destination"
        ):
            out[destination] = out.get(destination, 0) + count
        return out

    def pending_count(self, destination: str | None = None) -> int:
        """Pending requests (of one instance, or of all plus the events still in the inbox)."""
        if destination is None:
            row = (
                self._db()
                .execute(
                    "SELECT (SELECT COUNT(*) FROM requests WHERE state = 'pending')"
                    " + (SELECT IFNULL(SUM(count), 0) FROM packs WHERE state = 'pending')"
                    " + (SELECT COUNT(*) FROM inbox WHERE dead_reason IS NULL)"
                )
                .fetchone()
            )
        else:
            row = (
                self._db()
                .execute(
                    "SELECT (SELECT COUNT(*) FROM requests WHERE state = 'pending' AND destination = ?)"
                    " + (SELECT IFNULL(SUM(count), 0) FROM packs WHERE state = 'pending' AND destination = ?)",
                    (destination, destination),
                )
                .fetchone()
            )
        return int(row[0])

    def waiting(self, destination: str | None = None) -> list[dict[str, Any]]:
        """The requests waiting to be delivered (of one instance, or all), rows first, then packs: each user's
        in the order they go out. Each: destination, message_id, index, user_key, url (as stored), body, attempts."""
        keys = ("destination", "message_id", "index", "user_key", "url", "body", "attempts")
        where, args = ("AND destination = ?", (destination,)) if destination else ("", ())
        out = [dict(zip(keys, row, strict=True)) for row in self._db().execute(
            "SELECT destination, message_id, idx, user_key, url, body, attempts FROM requests"
            f" WHERE state = 'pending' {where} ORDER BY id", args
        )]  # fmt: skip
        for name, text in self._db().execute(
            "SELECT destination, entries FROM packs JOIN pack_entries ON pack_entries.pack = packs.id"
            f" WHERE state = 'pending' {where} ORDER BY id",
            args,
        ):
            out.extend({"destination": name, "message_id": e.message_id, "index": e.index, "user_key": e.user_key,
                        "url": e.url, "body": e.body, "attempts": 0} for e in entries_of(text))  # fmt: skip
        return out

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
        """Forget delivered requests and packs older than the dedupe window (returns how many requests), the
        dedupe keys of messages none of whose requests is left, carts untouched for `cart_ttl`, and with the
        debugger on, its attempts and kept bodies of messages it no longer shows."""
        now = time.time() if now is None else now
        with self._write() as db:
            prune_carts(db, self.cart_ttl, now)
            horizon = now - self.dedupe_window
            pruned = db.execute(
                "DELETE FROM requests WHERE state = 'delivered' AND finished_at < ?", (horizon,)
            ).rowcount
            pruned += db.execute(
                "SELECT IFNULL(SUM(delivered), 0) FROM packs WHERE state = 'done' AND finished_at < ?", (horizon,)
            ).fetchone()[0]
            db.execute(
                "DELETE FROM pack_entries WHERE pack IN (SELECT id FROM packs INDEXED BY packs_finished"
                " WHERE state = 'done' AND finished_at < ?)",
                (horizon,),
            )
            db.execute("DELETE FROM packs WHERE state = 'done' AND finished_at < ?", (horizon,))
            # A key goes with the last of its message's requests: while a row of it stays (a dead letter stays
            # until replayed) or its pack waits, a resend is still the duplicate it is.
            db.execute(
                "DELETE FROM request_keys WHERE stored_at < ? AND (pack IS NULL OR pack NOT IN (SELECT id FROM packs"
                " INDEXED BY packs_pending WHERE state = 'pending')) AND NOT EXISTS (SELECT 1 FROM requests"
                " WHERE requests.destination = request_keys.destination"
                " AND requests.message_id = request_keys.message_id)",
                (horizon,),
            )
        while self.debug_keep:  # in short transactions: intake and delivery write in between
            with self._write() as db:
                if debugger.prune(db) < 5000:
                    break
        return pruned

    def cart_book(self) -> CartBook:
        """The carts a round of mapping reads and changes (committed by `enqueue(carts=...)`)."""
        return CartBook(lambda instance, key: load_cart(self._db(), instance, key),
                        seen=lambda instance, mid: applied_before(self._db(), instance, mid),
                        stored=self.stored_count,
                        ttl=self.cart_ttl)  # fmt: skip

    def stored_count(self, destination: str, message_id: str) -> int:
        """How many of a message's requests for an instance were stored (its dedupe key; 0: none)."""
        sql = "SELECT count FROM request_keys WHERE destination = ? AND message_id = ?"
        row = self._db().execute(sql, (destination, message_id)).fetchone()
        return int(row[0]) if row else 0
