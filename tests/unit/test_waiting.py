"""Waiting for an analysis (webhooks/waiting.py) on a real redis-server: a finished record comes
back at once, a completion while waiting wakes every waiter, a live subscription spares the
re-reads, a lost message costs at most a re-read, and time running out gives the record then."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis
import redis.asyncio as aioredis

from tests.support.procs import RedisServer
from tests.support.redis_proxy import LossyRedisProxy, command_name
from webhooks import waiting
from webhooks.waiting import READ_GRACE_SECONDS, CompletionWaiter
from worker.store import RESULT_TEXT, AsyncStore, Store, completion_message

T = TypeVar("T")


@pytest.fixture
def url(redis_flushed) -> str:
    return redis_flushed.url


def with_waiter(url: str, body: Callable[[CompletionWaiter, AsyncStore], Awaitable[T]], *,
                listen: bool = True, listen_url: str | None = None) -> T:  # fmt: skip
    """`listen_url`: subscribe on another Redis than the store's (one that hears nothing)."""

    async def run() -> T:
        client = aioredis.from_url(url)
        listener = aioredis.from_url(listen_url) if listen_url else client
        store = AsyncStore(client)
        waiter = CompletionWaiter(listener, store)
        if listen:
            await waiter.start()
            await asyncio.sleep(0.1)  # the subscription is in place
        try:
            return await body(waiter, store)
        finally:
            await waiter.stop()
            await client.aclose()
            await listener.aclose()

    return asyncio.run(run())


def running_analysis(url: str) -> tuple[Store, str]:
    """A claimed analysis a worker (w1) is running."""
    return running_analysis_of(url, "identity")


def running_analysis_of(url: str, identity: str) -> tuple[Store, str]:
    async def claim() -> str:
        client = aioredis.from_url(url)
        try:
            found = await AsyncStore(client).claim(
                identity, {"x": 1}, pending_seconds=60, result_ttl_seconds=600, now=time.time()
            )
        finally:
            await client.aclose()
        return found.analysis_id

    analysis_id = asyncio.run(claim())
    store = Store(redis.Redis.from_url(url))
    assert store.start(analysis_id, "w1", 30) == "started"
    return store, analysis_id


def hgetalls(kv: redis.Redis) -> int:
    """Records read since the last CONFIG RESETSTAT (FINISH reads none)."""
    return int(kv.info("commandstats").get("cmdstat_hgetall", {}).get("calls", 0))


def finish_later(store: Store, analysis_id: str, after: float) -> threading.Thread:
    def finish() -> None:
        time.sleep(after)
        payload: dict[str, Any] = {"verdict": "pass"}
        store.finish(analysis_id, "w1", status="done", payload=payload, reuse_seconds=15)

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_a_finished_analysis_comes_back_at_once(url):
    store, analysis_id = running_analysis(url)
    store.finish(analysis_id, "w1", status="done", payload={"verdict": "fail"}, reuse_seconds=15)
    record = with_waiter(url, lambda waiter, _: waiter.wait(analysis_id, 5))
    assert record is not None
    assert record["status"] == "done" and record["result"] == {"verdict": "fail"}


def test_an_error_is_final_too(url):
    store, analysis_id = running_analysis(url)
    store.finish(analysis_id, "w1", status="error", payload={"error": "boom"}, reuse_seconds=15)
    record = with_waiter(url, lambda waiter, _: waiter.wait(analysis_id, 5))
    assert record is not None
    assert record["status"] == "error" and record["error"] == {"error": "boom"}


def test_an_unknown_analysis_is_none(url):
    assert with_waiter(url, lambda waiter, _: waiter.wait("0" * 32, 5)) is None


def test_when_time_runs_out_the_last_record_seen_comes_back(url):
    _store, analysis_id = running_analysis(url)
    record = with_waiter(url, lambda waiter, _: waiter.wait(analysis_id, 0.3))
    assert record is not None
    assert record["status"] == "running"


def test_a_completion_while_waiting_reaches_every_waiter_and_leaves_no_waiter_behind(url):
    store, analysis_id = running_analysis(url)

    async def body(waiter: CompletionWaiter, _: AsyncStore) -> list[Any]:
        thread = finish_later(store, analysis_id, 0.2)
        records = await asyncio.gather(*(waiter.wait(analysis_id, 10) for _ in range(5)))
        thread.join()
        assert waiter._waiters == {}  # nothing left registered after the answers
        return list(records)

    records = with_waiter(url, body)
    assert [r["status"] for r in records] == ["done"] * 5
    assert all(r["result"] == {"verdict": "pass"} for r in records)


def test_a_lost_completion_message_is_made_up_for_by_re_reading(url):
    """No subscription at all (as while Redis reconnects): the record is re-read anyway."""
    store, analysis_id = running_analysis(url)

    async def body(waiter: CompletionWaiter, _: AsyncStore) -> Any:
        thread = finish_later(store, analysis_id, 0.2)
        record = await waiter.wait(analysis_id, 10)
        thread.join()
        return record

    record = with_waiter(url, body, listen=False)
    assert record["status"] == "done"


def test_a_wait_begun_before_the_enqueue_reads_nothing(url):
    """The webhook starts listening for a new analysis before it enqueues it: the answer then
    comes from the completion message alone, with no read of the record."""
    store, analysis_id = running_analysis(url)
    kv = redis.Redis.from_url(url)
    kv.config_resetstat()

    async def body(waiter: CompletionWaiter, _: AsyncStore) -> dict[str, Any] | None:
        expected = waiter.expect(analysis_id)
        finish_later(store, analysis_id, 0.2)
        return await waiter.wait(analysis_id, 5, expected)

    record = with_waiter(url, body)
    # The outcome as announced, its result's text kept for the answer (webhooks/analyze.py).
    assert record == {
        "status": "done",
        "result": {"verdict": "pass"},
        RESULT_TEXT: b'{"verdict":"pass"}',
    }
    assert hgetalls(kv) == 0


def test_a_wait_begun_before_the_enqueue_still_reads_when_no_message_comes(url):
    """No listener (Redis reconnecting): after its first second the waiter reads the record."""
    store, analysis_id = running_analysis(url)

    async def body(waiter: CompletionWaiter, _: AsyncStore) -> dict[str, Any] | None:
        expected = waiter.expect(analysis_id)
        finish_later(store, analysis_id, 0.2)
        return await waiter.wait(analysis_id, 5, expected)

    record = with_waiter(url, body, listen=False)
    assert record is not None and record["status"] == "done"
    assert record["result"] == {"verdict": "pass"}


def test_a_live_subscription_spares_the_re_reads(url):
    """A wait of 2.5 s reads the record once, at its start: the subscription held, so no
    completion can have been missed (it used to read once a second)."""
    store, analysis_id = running_analysis(url)
    kv = redis.Redis.from_url(url)
    kv.config_resetstat()

    async def body(waiter: CompletionWaiter, _: AsyncStore) -> dict[str, Any] | None:
        thread = finish_later(store, analysis_id, 2.5)
        record = await waiter.wait(analysis_id, 10)
        thread.join()
        return record

    record = with_waiter(url, body)
    assert record is not None and record["status"] == "done"
    assert hgetalls(kv) == 1


def test_a_subscription_lost_mid_wait_makes_the_waiter_look_again(url):
    """The listener's connection is killed and the analysis finishes before it subscribes again:
    its message reached no one. The new subscription tells the waiter to read, and it answers
    long before its deadline."""
    store, analysis_id = running_analysis(url)
    kv = redis.Redis.from_url(url)

    async def body(waiter: CompletionWaiter, _: AsyncStore) -> tuple[dict[str, Any] | None, float]:
        expected = waiter.expect(analysis_id)
        began = time.monotonic()
        waiting = asyncio.create_task(waiter.wait(analysis_id, 20, expected))
        await asyncio.sleep(0.3)
        assert kv.client_kill_filter(_type="pubsub") == 1
        listeners = kv.pubsub_numpat()
        store.finish(
            analysis_id, "w1", status="done", payload={"verdict": "fail"}, reuse_seconds=15
        )
        record = await waiting
        assert listeners == 0  # the message was published to no one
        return record, time.monotonic() - began

    record, seconds = with_waiter(url, body)
    assert record is not None and record["status"] == "done"
    assert record["result"] == {"verdict": "fail"}
    assert seconds < 10  # found by a read after the new subscription, not at the deadline


def test_a_message_lost_unseen_is_found_when_time_runs_out(url, tmp_path):
    """A subscription that looks live but hears nothing (here: on another Redis; in life a
    half-open connection): the waiter reads once more at its deadline and answers the outcome."""
    store, analysis_id = running_analysis(url)
    kv = redis.Redis.from_url(url)
    deaf = RedisServer(work_dir=tmp_path / "deaf").start()
    try:
        kv.config_resetstat()

        async def body(waiter: CompletionWaiter, _: AsyncStore) -> dict[str, Any] | None:
            expected = waiter.expect(analysis_id)
            thread = finish_later(store, analysis_id, 0.2)
            record = await waiter.wait(analysis_id, 2.5, expected)
            thread.join()
            return record

        record = with_waiter(url, body, listen_url=deaf.url)
    finally:
        deaf.kill()
    assert record is not None and record["status"] == "done"
    assert hgetalls(kv) == 1  # that one read, at the deadline


def test_a_read_the_deadline_overtakes_does_not_hold_the_answer(url, redis_server):
    """Redis stalls (here a proxy holds every HGETALL's reply 2 s) as the wait's time runs out:
    the answer goes READ_GRACE_SECONDS after the deadline with the record seen before, not when
    Redis answers. The connection of the abandoned read is not reused: the next read on the same
    client gets its own record, not the stale reply."""
    store, analysis_id = running_analysis(url)
    _, other_id = running_analysis_of(url, "other identity")
    store.finish(other_id, "w1", status="done", payload={"verdict": "fail"}, reuse_seconds=15)
    stall = threading.Event()  # never set: each held reply waits the proxy's 2 s
    with LossyRedisProxy(redis_server.port) as proxy:
        proxy.enabled = False  # nothing lost, only held
        proxy.hold = lambda batch: (
            stall if any(command_name(c) == b"HGETALL" for c in batch) else None
        )

        async def body(waiter: CompletionWaiter, store: AsyncStore) -> tuple[Any, float, Any]:
            expected = waiter.expect(analysis_id)
            began = time.monotonic()
            record = await waiter.wait(analysis_id, 1.0, expected)
            seconds = time.monotonic() - began
            proxy.hold = lambda batch: None
            return record, seconds, await store.record(other_id)

        record, seconds, other = with_waiter(proxy.url, body)
    assert record is None  # no read came back in time: the webhook answers 503, still pending
    # Without the bound: 1.0 + the 2 s hold. The margin is for a busy machine.
    assert 1.0 + READ_GRACE_SECONDS <= seconds < 1.0 + READ_GRACE_SECONDS + 0.9
    assert other is not None and other["id"] == other_id and other["status"] == "done"
    assert other["result"] == {"verdict": "fail"}


def test_a_completion_as_a_tick_ends_still_ends_the_wait_at_once(url, monkeypatch):
    """A wait's tick cancels its future; a completion read in the same turn of the loop, before
    the wait registers a new one, finds the cancelled future. The wait must hear of it (and
    read the record) then, not at its deadline. Completions land around each tick's end,
    40 waits, 50 us apart from 1 ms before it to 1 ms after."""
    monkeypatch.setattr(waiting, "TICK_SECONDS", 0.01)
    store, analysis_id = running_analysis(url)
    # Done in Redis: what a wait reads. Each wait's message is then handed over by the test.
    store.finish(analysis_id, "w1", status="done", payload={"verdict": "pass"}, reuse_seconds=15)
    done = completion_message("done", b'{"verdict":"pass"}')

    async def body(waiter: CompletionWaiter, _: AsyncStore) -> list[tuple[str | None, float]]:
        loop = asyncio.get_running_loop()
        outcomes = []
        for k in range(40):
            expected = waiter.expect(analysis_id)
            began = loop.time()
            loop.call_at(began + 0.009 + k * 0.00005, waiter._wake, analysis_id, done)
            record = await waiter.wait(analysis_id, 1.0, expected)
            outcomes.append(((record or {}).get("status"), loop.time() - began))
        return outcomes

    outcomes = with_waiter(url, body)
    assert [status for status, _ in outcomes] == ["done"] * 40
    assert max(seconds for _, seconds in outcomes) < 0.5, outcomes  # none at its deadline
