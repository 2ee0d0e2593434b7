"""What an outbox holds on disk, in every form a secret could hide in, for the never-stored checks.

Pack entries are stored zlib-compressed, so a search of the raw bytes alone cannot see inside them: every zlib
stream found in the file, its WAL and their free pages is inflated too, and every pack still kept is read back as
the outbox reads it."""

from __future__ import annotations

import contextlib
import sqlite3
import zlib
from pathlib import Path

from destinations.delivery.packing import entries_of

# The second byte of a zlib header, for each compression level (the first is 0x78: deflate, a 32 KiB window).
_LEVELS = (0x01, 0x5E, 0x9C, 0xDA)


def _inflated(data: bytes) -> list[bytes]:
    """Every zlib stream's text, as far as it reads: a stream that runs onto another page (SQLite's overflow
    pointers cut into it) still gives what came before the cut."""
    out = []
    start = data.find(b"\x78")
    while start != -1:
        if start + 1 < len(data) and data[start + 1] in _LEVELS:
            stream, got = zlib.decompressobj(), []
            for at in range(start, len(data), 512):
                try:
                    got.append(stream.decompress(data[at : at + 512]))
                except zlib.error:
                    break
                if stream.eof:
                    break
            if any(got):
                out.append(b"".join(got))
        start = data.find(b"\x78", start + 1)
    return out


def inflated(database: Path) -> bytes:
    """The text of every zlib stream in the database file and its WAL, live or on a free page."""
    return b"\n".join(
        text for f in sorted(database.parent.glob(database.name + "*")) for text in _inflated(f.read_bytes())
    )


def on_disk(database: Path) -> bytes:
    """The database file and its WAL as bytes, the zlib streams in them inflated, and its kept packs' entries."""
    files = sorted(database.parent.glob(database.name + "*"))
    raw = [f.read_bytes() for f in files]
    parts = [*raw, inflated(database)]
    with contextlib.closing(sqlite3.connect(database)) as db:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'pack_entries'").fetchone():
            parts += [repr(entries_of(v)).encode() for (v,) in db.execute("SELECT entries FROM pack_entries")]
    return b"\n".join(parts)
