"""What is big in Redis is packed (worker/codec.py): an analysis' result and a live sequence's
state. Values earlier versions wrote (plain JSON, zlib-packed) still read; a corrupt one is
named, never a crash. Store and sequences on a real redis-server: the Lua scripts carry the
packed bytes."""

from __future__ import annotations

import asyncio
import json
import math
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import fakeredis
import pytest
import redis
import redis.asyncio as aioredis
import zstandard

from analysis.observation import SideCounts
from analysis.policy import PolicySet
from analysis.sequential import Sequence
from webhooks.ui.data import UiData
from webhooks.ui.render import analysis_context, page
from worker import codec
from worker.followup import Followup
from worker.keyspace import Keys
from worker.sequences import SequenceStore
from worker.store import RESULT_TEXT, AsyncStore, Store, decode_completion, decode_record

RESULT = {
    "verdict": "pass",
    "reasons": ["ünïcode ✓", "canary no worse than baseline"] * 20,
    "metrics": {"success_rate": {"canary": 0.9991234567, "baseline": 0.999}},
}


@pytest.fixture
def kv(redis_flushed) -> redis.Redis:
    return redis.Redis.from_url(redis_flushed.url)


def finished(url: str, result: dict) -> tuple[str, list]:
    """A claimed analysis, finished by worker w1; the completion messages published."""

    async def claim() -> str:
        client = aioredis.from_url(url)
        try:
            found = await AsyncStore(client).claim(
                "id-1", {"x": 1}, pending_seconds=60, result_ttl_seconds=600, now=time.time()
            )
        finally:
            await client.aclose()
        return found.analysis_id

    analysis_id = asyncio.run(claim())
    store = Store(redis.Redis.from_url(url))
    listener = redis.Redis.from_url(url).pubsub()
    listener.subscribe(store.keys.done_channel(analysis_id))
    listener.get_message(timeout=1)
    assert store.start(analysis_id, "w1", 30) == "started"
    assert store.finish(analysis_id, "w1", status="done", payload=result, reuse_seconds=5) == "ok"
    return analysis_id, [listener.get_message(timeout=1)]


def test_pack_round_trips_text_and_reads_plain_values_as_they_are():
    text = json.dumps(RESULT, ensure_ascii=False)
    packed = codec.pack(text)
    assert packed.startswith(codec.MARK) and len(packed) < len(text.encode()) / 4
    assert codec.unpack(packed) == text
    assert codec.unpack(text.encode()) == text  # plain JSON, as an earlier version wrote it
    assert codec.unpack("enqueue failed") == "enqueue failed"


def test_a_value_packed_with_zlib_by_the_previous_version_still_reads():
    text = json.dumps(RESULT, ensure_ascii=False)
    assert codec.unpack(codec.ZLIB_MARK + zlib.compress(text.encode(), 1)) == text


def zstd_frame_claiming(size: int) -> bytes:
    """A zstd frame header that says the frame holds `size` bytes, and nothing after it: the
    magic number, then a descriptor (single segment, an 8-byte content size) and the size."""
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + size.to_bytes(8, "little")
    assert zstandard.frame_content_size(frame) == size
    return frame


@pytest.mark.parametrize(
    "raw",
    [
        codec.MARK + b"not zstd",
        codec.pack("{}")[:-3],
        codec.pack('{"a": 1}')[:-1] + b"\x00",  # the checksum no longer matches
        codec.ZLIB_MARK + b"not zlib",
        b"\xff\xfe not utf-8",
        codec.MARK + zstd_frame_claiming(1 << 40),  # never allocated
    ],
)
def test_a_corrupt_value_is_one_clear_error(raw):
    with pytest.raises(codec.Unreadable, match="stored value is corrupt"):
        codec.unpack(raw)


def test_threads_packing_at_once_each_get_their_own_value_back():
    texts = [json.dumps({**RESULT, "thread": n}) for n in range(16)]

    def round_trips(text: str) -> bool:
        return all(codec.unpack(codec.pack(text)) == text for _ in range(200))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(round_trips, texts))


def test_the_stored_result_is_packed_and_every_reader_gets_it_back(kv, redis_flushed):
    analysis_id, messages = finished(redis_flushed.url, RESULT)
    key = Keys("ra:").record(analysis_id)
    assert kv.hget(key, "result").startswith(codec.MARK)
    # The completion message is not kept: it stays plain JSON for the waiting webhook, which
    # answers with the result's text as it came.
    announced = decode_completion(messages[0]["data"])
    assert announced is not None
    assert (announced["status"], announced["result"]) == ("done", RESULT)
    assert json.loads(announced[RESULT_TEXT]) == RESULT
    stored = Store(kv).record(analysis_id)
    assert stored is not None and stored["result"] == RESULT

    async def webhook_reads() -> tuple:
        client = aioredis.from_url(redis_flushed.url)
        try:
            again = await AsyncStore(client).claim(  # in the reuse window: CLAIM's HGETALL
                "id-1", {"x": 1}, pending_seconds=60, result_ttl_seconds=600, now=time.time()
            )
            view = await UiData(client, "ra:").analysis(analysis_id)
        finally:
            await client.aclose()
        return again, view

    again, view = asyncio.run(webhook_reads())
    assert (again.state, again.record["result"]) == ("done", RESULT)
    assert view is not None and view.record["result"] == RESULT


def test_a_record_written_by_the_previous_version_still_reads(kv):
    key = Keys("ra:").record("a" * 32)
    kv.hset(key, mapping={"id": "a" * 32, "status": "done", "result": json.dumps(RESULT)})
    record = Store(kv).record("a" * 32)
    assert record is not None and record["result"] == RESULT


def test_a_corrupt_field_is_null_and_named_and_the_page_says_so(kv):
    key = Keys("ra:").record("b" * 32)
    spec = {"service": "checkout", "end": None}
    kv.hset(
        key,
        mapping={"id": "b" * 32, "status": "done", "spec": json.dumps(spec)}
        | {"result": codec.MARK + b"\x78\x01 truncated"},
    )
    record = Store(kv).record("b" * 32)
    assert record is not None
    assert record["result"] is None and record["spec"] == spec
    assert "stored value is corrupt" in record["unreadable"]["result"]
    html = page("analysis.html", **analysis_context(
        record, actions=[], event=None, polls=[], links=[], timeline_url=None))  # fmt: skip
    assert "Not shown: the stored result of this analysis cannot be read." in html
    broken_json = decode_record({b"status": b"done", b"result": b'{"verdict": "pa'})
    assert broken_json is not None and broken_json["result"] is None
    assert "JSON" in broken_json["unreadable"]["result"]


def test_the_sequence_state_is_packed_an_old_one_reads_and_a_corrupt_one_starts_over(kv):
    sequences = SequenceStore(kv, "ra:", ttl_seconds=60)
    state = Sequence(started_at=1.0, last_end=31.0, polls=1, canary=SideCounts({"200": 5.0}))
    assert sequences.save("s1", state, 0)
    assert kv.hget(sequences.key("s1"), "state").startswith(codec.MARK)
    assert sequences.load("s1") == (state, 1)
    kv.hset(sequences.key("s2"), mapping={"version": 3, "state": json.dumps(state.to_json())})
    assert sequences.load("s2") == (state, 3)  # saved by the previous version
    kv.hset(sequences.key("s2"), "state", codec.pack("{}")[:-2])
    assert sequences.load("s2") == (None, 3)  # evidence unreadable: a new sequence, saved over
    assert sequences.save("s2", state, 3) and sequences.load("s2") == (state, 4)


def test_a_sequence_state_holding_nan_is_refused_at_save_and_nothing_is_written(kv):
    """orjson writes NaN as null; the state would read back wrong, so the save refuses it, as
    json's allow_nan=False did, and the stored sequence stays as it was."""
    sequences = SequenceStore(kv, "ra:", ttl_seconds=60)
    good = Sequence(started_at=1.0, last_end=31.0, polls=1, canary=SideCounts({"200": 5.0}))
    assert sequences.save("s3", good, 0)
    for bad in (math.nan, math.inf):
        broken = Sequence(started_at=1.0, last_end=61.0, polls=2, canary=SideCounts({"200": bad}))
        with pytest.raises(ValueError, match="not finite"):
            sequences.save("s3", broken, 1)
    assert sequences.load("s3") == (good, 1)


def test_followups_read_the_packed_result_and_old_plain_ones():
    client = fakeredis.FakeRedis()
    reader = Followup(redis=client, prefix="ra:", policies=PolicySet({}), targets={},
                      enqueue=lambda task, args: None)  # fmt: skip
    client.hset(Keys("ra:").record("c" * 32), "result", codec.pack(json.dumps(RESULT)))
    client.hset(Keys("ra:").record("d" * 32), "result", json.dumps(RESULT))
    client.hset(Keys("ra:").record("e" * 32), "result", codec.MARK + b"junk")
    assert reader.analysis("c" * 32) == RESULT and reader.analysis("d" * 32) == RESULT
    assert reader.analysis("e" * 32) is None
