"""The completion message carries the outcome: a waiting webhook answers without reading again."""

from __future__ import annotations

import asyncio
import json
import time

import fakeredis

from webhooks.analyze import answer_body
from webhooks.waiting import CompletionWaiter
from worker.store import RESULT_TEXT, AsyncStore, Store, completion_message, decode_completion


def test_the_message_is_the_final_record():
    record = decode_completion(completion_message("done", '{"verdict": "pass"}'))
    assert record == {
        "status": "done",
        "result": {"verdict": "pass"},
        RESULT_TEXT: b'{"verdict": "pass"}',  # as the worker wrote it, answered as it is
    }
    error = decode_completion(completion_message("error", "no data"))
    assert error == {"status": "error", "error": "no data"}
    assert decode_completion(b"done") is None  # an older worker: the waiter reads the record


def test_a_waiter_answers_from_the_message_with_no_second_read():
    async def scenario() -> tuple[dict | None, int]:
        server = fakeredis.FakeServer()
        client = fakeredis.FakeAsyncRedis(server=server)
        astore = AsyncStore(client)
        store = Store(fakeredis.FakeRedis(server=server))
        reads = 0
        read = astore.record

        async def counted(analysis_id: str):
            nonlocal reads
            reads += 1
            return await read(analysis_id)

        astore.record = counted  # type: ignore[method-assign]
        waiter = CompletionWaiter(client, astore)
        await waiter.start()
        await asyncio.sleep(0.1)  # subscribed
        claim = await astore.claim(
            "id", {"x": 1}, pending_seconds=60, result_ttl_seconds=600, now=time.time()
        )
        waiting = asyncio.create_task(waiter.wait(claim.analysis_id, 5))
        await asyncio.sleep(0.1)  # registered, first read done, now waiting
        store.start(claim.analysis_id, "w", 5)
        payload = {"verdict": "fail"}
        store.finish(claim.analysis_id, "w", status="done", payload=payload, reuse_seconds=1)
        record = await asyncio.wait_for(waiting, 2)
        await waiter.stop()
        return record, reads

    record, reads = asyncio.run(scenario())
    assert record is not None and record["status"] == "done"
    assert record["result"] == {"verdict": "fail"}
    assert reads == 1  # the check before waiting; none after the wake-up


def test_the_answer_from_the_workers_text_is_the_one_dumped_from_the_result():
    """The webhook answers with the result's text from the completion message: byte for byte
    what dumping the parsed result would give (a worker's real payload: floats, nulls,
    nesting, non-ASCII)."""
    server = fakeredis.FakeServer()
    store = Store(fakeredis.FakeRedis(server=server))
    pubsub = fakeredis.FakeRedis(server=server).pubsub()
    claim = asyncio.run(
        AsyncStore(fakeredis.FakeAsyncRedis(server=server)).claim(
            "id", {"x": 1}, pending_seconds=60, result_ttl_seconds=600, now=time.time()
        )
    )
    pubsub.subscribe(store.keys.done_channel(claim.analysis_id))
    store.start(claim.analysis_id, "w", 5)
    payload = {
        "verdict": "fail",
        "score": 42.5,
        "reasons": ["p99 latency 1.2 s (canary) vs 0.3 s — slower"],
        "canary": {"p50": 0.012345678901234, "p99": None, "requests": 1e21},
        "checks": [{"p_value": 1.5e-300, "passed": False}],
    }
    store.finish(claim.analysis_id, "w", status="done", payload=payload, reuse_seconds=1)
    message = next(
        m for m in iter(lambda: pubsub.get_message(timeout=1), None) if m["type"] == "message"
    )
    record = decode_completion(message["data"])
    assert record is not None and RESULT_TEXT in record
    page = "https://analyzer.example/ui/analyses/" + claim.analysis_id
    passed_through = answer_body(record["result"], page, record[RESULT_TEXT])
    dumped = answer_body(record["result"], page)
    assert passed_through == dumped
    assert json.loads(passed_through) == {**payload, "report_url": page}
