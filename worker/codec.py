"""The big JSON values kept in Redis, compressed: an analysis record's `result` and a live
canary's sequence state (worker/sequences.py). Every reader goes through `unpack`.

JSON text itself is written and read with orjson (`dumps`, `loads`): a result (~7 KB) dumps in
0.006 ms instead of json's 0.074 and loads in 0.017 instead of 0.054, both on the way to Argo's
answer.

zlib level 1: a result (8 KB of JSON) packs to ~1.9 KB (level 6: ~1.8 KB, 40 % more worker CPU,
and both sit in Redis' same 2 KB allocation class). A packed value starts with a NUL byte, which
no JSON text and no error message does, so values written before (plain JSON) still read.
Lua scripts store and return these values but never look inside them.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

import orjson

MARK = b"\x00z"  # then the zlib stream
LEVEL = 1


class Unreadable(ValueError):
    """A stored value that is neither plain text nor a whole packed value."""


def pack(text: str | bytes) -> bytes:
    """The value packed; JSON given as bytes (`dump_bytes`) is packed as it is."""
    data = text.encode() if isinstance(text, str) else text
    return MARK + zlib.compress(data, LEVEL)


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


def dumps(value: Any) -> str:
    """Compact JSON text (non-string keys as strings, as json.dumps writes them)."""
    return dump_bytes(value).decode()


def dump_bytes(value: Any) -> bytes:
    """`dumps` as UTF-8 bytes, for values that go on to Redis or HTTP: a result's reasons hold
    "≤" and "α", which make its text a 2-byte-per-character str, costly to decode and encode
    again (~3 % of a worker's instructions per analysis went to that round trip)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


def loads(text: str | bytes) -> Any:
    """A JSON value; text that only Python's json reads (NaN, written by an older version)
    still reads. Raises ValueError on anything else."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
