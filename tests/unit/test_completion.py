"""The completion message carries the outcome: a waiting webhook answers without reading again."""

from __future__ import annotations

import asyncio
import time

import fakeredis

from webhooks.waiting import CompletionWaiter
from worker.store import AsyncStore, Store, completion_message, decode_completion


def test_the_message_is_the_final_record():
    record = decode_completion(completion_message("done", '{"verdict": "pass"}'))
    assert record == {"status": "done", "result": {"verdict": "pass"}}
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
