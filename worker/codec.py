"""The big JSON values kept in Redis, compressed: an analysis record's `result` and a live
canary's sequence state (worker/sequences.py). Every reader goes through `unpack`.

JSON text itself is written and read with orjson (`dumps`, `loads`): a result (~7 KB) dumps in
0.006 ms instead of json's 0.074 and loads in 0.017 instead of 0.054, both on the way to Argo's
answer.

zstd level 1 (python-zstandard, a compressor kept per thread): a result of 6.6 KB packs to
~1.77 KB, as zlib level 1 did (~1.79 KB), in 189,000 instructions instead of zlib's 403,000, and
reads back in 84,000 instead of 134,000 (callgrind, the bench's results; zlib also zeroed
a fresh 256 KB state per value). Each value carries its length and a checksum, so a corrupt one
is named, not read. Values packed with zlib before (mark `\0z`) and plain JSON (written before
that) still read: a value starts with a NUL byte only when packed, which no JSON text and no
error message does. Lua scripts store and return these values but never look inside them.
"""

from __future__ import annotations

import json
import threading
import zlib
from typing import Any

import orjson
import zstandard

MARK = b"\x00s"  # then a zstd frame
ZLIB_MARK = b"\x00z"  # then a zlib stream: values packed before zstd
LEVEL = 1
LARGEST = 64 << 20  # bytes a stored value may unpack to: a corrupt length is not an allocation


class Unreadable(ValueError):
    """A stored value that is neither plain text nor a whole packed value."""


def pack(text: str | bytes) -> bytes:
    """The value packed; JSON given as bytes (`dump_bytes`) is packed as it is."""
    data = text.encode() if isinstance(text, str) else text
    return MARK + _CODERS.compressor.compress(data)


def unpack(raw: bytes | str) -> str:
    """The text of a stored value, packed or plain."""
    if isinstance(raw, str):
        return raw
    try:
        if raw.startswith(MARK):
            frame = raw[len(MARK) :]
            if zstandard.frame_content_size(frame) > LARGEST:  # -1 (unknown) is refused below
                raise zstandard.ZstdError(f"a frame that says it holds over {LARGEST} bytes")
            return _CODERS.decompressor.decompress(frame).decode()
        if raw.startswith(ZLIB_MARK):
            return zlib.decompress(raw[len(ZLIB_MARK) :]).decode()
        return raw.decode()
    except (zstandard.ZstdError, zlib.error, UnicodeDecodeError) as exc:
        raise Unreadable(f"stored value is corrupt ({type(exc).__name__}: {exc})") from None


class _Coders(threading.local):
    """A zstd compressor and decompressor per thread: one may not serve two threads at once,
    and a fresh compressor per value took 269,000 instructions where a kept one takes 194,000."""

    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=LEVEL, write_checksum=True)
        self.decompressor = zstandard.ZstdDecompressor()


_CODERS = _Coders()


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
