"""Celery's messages read with orjson: the envelope kombu's Redis transport pops, and the body.

kombu reads both with Python's json and an object hook (a new decoder per call, a Python call
per object): ~10 % of an analysis worker's CPU samples (docs/performance.md, seventeenth pass).
orjson reads the same text to the same values, except three kinds, which still go to kombu's own
`loads`: values kombu tags as `{"__type__": ..., "__value__": ...}` (datetimes, UUIDs, decimals,
bytes), found by the marker in the text; integers of 19 digits or more, found the same way
(orjson reads one past 64 bits as a float, Python's json as an int); and text orjson refuses
(NaN, lone surrogates), found by its error.
"""

from __future__ import annotations

from typing import Any

import orjson
from kombu import serialization
from kombu.utils import json as kombu_json

CONTENT_TYPE = "application/json"
# Text that orjson would read to other values than kombu's `loads`: a tag of kombu's in it, or
# 19 digits in a row (found in the text with its digits mapped to b"1" and the rest to b"0":
# bytes.translate and a find are two C passes, a regex for either took ~40 us a message).
_TAGGED = b"__type__"
_DIGIT_RUN = b"1" * 19
_DIGIT_MARKS = bytes(0x31 if 0x30 <= c <= 0x39 else 0x30 for c in range(256))


def loads(text: str | bytes | bytearray | memoryview) -> Any:
    """What kombu's `loads` returns for `text`."""
    try:
        data = text.encode() if isinstance(text, str) else bytes(text)
    except UnicodeEncodeError:  # a lone surrogate in a str: only Python's json takes it
        return kombu_json.loads(text)  # type: ignore[no-untyped-call]
    if _TAGGED not in data and _DIGIT_RUN not in data.translate(_DIGIT_MARKS):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return kombu_json.loads(data)  # type: ignore[no-untyped-call]


def install() -> None:
    """Task bodies of content type JSON decode with `loads` in this process (encoding stays
    kombu's, so what we send is unchanged)."""
    serialization.registry.register(  # type: ignore[no-untyped-call]
        "json", kombu_json.dumps, loads, content_type=CONTENT_TYPE, content_encoding="utf-8"
    )
