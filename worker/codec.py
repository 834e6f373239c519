"""The big JSON values kept in Redis, compressed: an analysis record's `result` and a live
canary's sequence state (worker/sequences.py). Every reader goes through `unpack`.

zlib level 1: a result (8 KB of JSON) packs to ~1.9 KB (level 6: ~1.8 KB, 40 % more worker CPU,
and both sit in Redis' same 2 KB allocation class). A packed value starts with a NUL byte, which
no JSON text and no error message does, so values written before (plain JSON) still read.
Lua scripts store and return these values but never look inside them.
"""

from __future__ import annotations

import zlib

MARK = b"\x00z"  # then the zlib stream
LEVEL = 1


class Unreadable(ValueError):
    """A stored value that is neither plain text nor a whole packed value."""


def pack(text: str) -> bytes:
    return MARK + zlib.compress(text.encode(), LEVEL)


def unpack(raw: bytes | str) -> str:
    """The text of a stored value, packed or plain."""
    if isinstance(raw, str):
        return raw
    try:
        if raw.startswith(MARK):
            return zlib.decompress(raw[len(MARK) :]).decode()
        return raw.decode()
    except (zlib.error, UnicodeDecodeError) as exc:
        raise Unreadable(f"stored value is corrupt ({type(exc).__name__}: {exc})") from None
