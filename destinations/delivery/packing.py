"""How a pack's requests are written as one value (outbox.py stores it in `pack_entries`; debugger.py reads it).

An entry (`PackEntry`) is a `requests` row as the outbox makes it, from messageId to size. The requests of one
instance share a handful of envelopes (method, url, params, headers, batchable, batch key), so a pack holds each
envelope once and each entry names its envelope. A pack is stored as zlib-compressed JSON (the fastest level), its
entries a column a field: columns are made and read back a list at a time, not an entry at a time, and a pack's
bodies repeat each other's keys and values, so it shrinks several times for a fraction of a millisecond. Every
page not written is a page the WAL, and its checkpoints (which copy it into the database file under the write lock
of the transaction that triggers them), do not carry. Packs stored before are plain JSON text, an entry a list.
"""

from __future__ import annotations

import json
import zlib
from operator import itemgetter
from typing import Any, NamedTuple

from ..spec import new_tuple


class PackEntry(NamedTuple):
    """One request in a pack: a `requests` row without its instance, times and state."""

    message_id: str
    index: int  # among its message's requests to the instance
    user_key: str
    method: str
    url: str  # as stored: a path under the instance's base URL, or a whole URL elsewhere
    params: str  # JSON text, credentials left out
    headers: str  # JSON text, credentials left out
    body: str  # JSON text
    batchable: int
    batch_key: str
    size: int


try:
    import orjson

    _utf8 = orjson.dumps  # TypeError for a lone surrogate
    _value = orjson.loads
except ImportError:  # pragma: no cover - orjson comes with the server extra

    def _utf8(value: Any) -> bytes:
        # UnicodeEncodeError (a ValueError) for a lone surrogate
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    _value = json.loads


def entries_stored(entries: list[tuple[Any, ...]], *, first: int = 0) -> bytes:
    """A pack's entries (each a PackEntry's fields, in order, from position `first` on: the outbox passes its
    `requests` rows as they are) as zlib-compressed JSON: `[envelopes, messageIds, indexes, user keys, bodies, sizes,
    envelope numbers]`. TypeError for text no UTF-8 can carry (a lone surrogate), as SQLite refuses it in a row, so
    the message it came from is set aside the same way."""
    envelopes: dict[tuple[Any, ...], int] = {}
    # setdefault's default is worked out first: a new envelope gets the next number.
    numbers = [envelopes.setdefault(e, len(envelopes))
               for e in map(itemgetter(*(first + i for i in (3, 4, 5, 6, 8, 9))), entries)]  # fmt: skip
    columns = [list(map(itemgetter(first + i), entries)) for i in (0, 1, 2, 7, 10)]
    return zlib.compress(_utf8([list(envelopes), *columns, numbers]), 1)


class Envelope(NamedTuple):
    """What a pack's requests to one endpoint share (stored once a pack)."""

    method: str
    url: str
    params: str
    headers: str
    batchable: int
    batch_key: str


class Stored(NamedTuple):
    """A pack as stored: its envelopes, and its entries a column a field (a claim makes a pack's rows from these,
    without an entry object a request)."""

    envelopes: list[Envelope]
    message_ids: list[str]
    indexes: list[int]
    users: list[str]
    bodies: list[str]
    sizes: list[int]
    numbers: list[int]  # each entry's envelope

    def entry(self, i: int) -> PackEntry:
        m, url, params, headers, batchable, key = self.envelopes[self.numbers[i]]
        return new_tuple(PackEntry, (self.message_ids[i], self.indexes[i], self.users[i], m, url, params, headers,
                                     self.bodies[i], batchable, key, self.sizes[i]))  # fmt: skip


def stored_pack(stored: bytes | str) -> Stored:
    """What `entries_stored` made, or a pack stored before as plain text (`[envelopes, [[messageId, index, user key,
    body, size, envelope number], …]]`), read back."""
    if isinstance(stored, bytes):
        envelopes, *columns = _value(zlib.decompress(stored))
    else:
        envelopes, own = _value(stored)
        columns = [list(column) for column in zip(*own, strict=True)] if own else [[] for _ in range(6)]
    return Stored([Envelope(*e) for e in envelopes], *columns)


def entries_of(stored: bytes | str) -> list[PackEntry]:
    """A pack's entries from what `entries_stored` made (or the plain text packs were stored as before)."""
    pack = stored_pack(stored)
    return [pack.entry(i) for i in range(len(pack.message_ids))]
