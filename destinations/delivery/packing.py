"""How a pack's requests are written as one value (outbox.py stores it in `pack_entries`; debugger.py reads it).

An entry (`PackEntry`) is a `requests` row as the outbox makes it, from messageId to size. The requests of one
instance share a handful of envelopes (method, url, params, headers, batchable, batch key), so the text holds
each envelope once and each entry names its envelope: a sixth less to write, and to read back. The text is stored
zlib-compressed (the fastest level): a pack's bodies repeat each other's keys and values, so it shrinks several
times for a fraction of a millisecond, and every page not written is a page the WAL, and its checkpoints (which
copy it into the database file under the write lock of the transaction that triggers them), do not carry.
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
    `requests` rows as they are) as zlib-compressed JSON text: `[envelopes, [[messageId, index, user key, body,
    size, envelope number], …]]`. TypeError for text no UTF-8 can carry (a lone surrogate), as SQLite refuses it
    in a row, so the message it came from is set aside the same way."""
    envelope_of = itemgetter(*(first + i for i in (3, 4, 5, 6, 8, 9)))
    mid, idx, user, body, size = (first + i for i in (0, 1, 2, 7, 10))
    envelopes: dict[tuple[Any, ...], int] = {}
    own = []
    for e in entries:
        envelope = envelope_of(e)
        number = envelopes.get(envelope)
        if number is None:
            number = envelopes[envelope] = len(envelopes)
        own.append((e[mid], e[idx], e[user], e[body], e[size], number))
    return zlib.compress(_utf8([list(envelopes), own]), 1)


class Envelope(NamedTuple):
    """What a pack's requests to one endpoint share (stored once a pack)."""

    method: str
    url: str
    params: str
    headers: str
    batchable: int
    batch_key: str


class Stored(NamedTuple):
    """A pack as stored: its envelopes, and each entry's own part: [messageId, index, user key, body, size, envelope
    number]. A claim works from these (a pack's rows are made from them, without an entry object a request)."""

    envelopes: list[Envelope]
    own: list[list[Any]]

    def entry(self, i: int) -> PackEntry:
        mid, idx, user, body, size, number = self.own[i]
        m, url, params, headers, batchable, key = self.envelopes[number]
        return new_tuple(PackEntry, (mid, idx, user, m, url, params, headers, body, batchable, key, size))


def stored_pack(stored: bytes | str) -> Stored:
    """What `entries_stored` made (or the plain text packs were stored as before), read back."""
    envelopes, own = _value(zlib.decompress(stored) if isinstance(stored, bytes) else stored)
    return Stored([Envelope(*e) for e in envelopes], own)


def entries_of(stored: bytes | str) -> list[PackEntry]:
    """A pack's entries from what `entries_stored` made (or the plain text packs were stored as before)."""
    envelopes, own = _value(zlib.decompress(stored) if isinstance(stored, bytes) else stored)
    return [new_tuple(PackEntry, (mid, idx, user, m, url, params, headers, body, batchable, key, size))
            for mid, idx, user, body, size, number in own
            for m, url, params, headers, batchable, key in (envelopes[number],)]  # fmt: skip
