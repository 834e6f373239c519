"""Every state transition of an analysis (the Lua scripts of worker/store.py) on a real
redis-server: only the worker holding an analysis may keep it, finish it or record anything."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
import redis
import redis.asyncio as aioredis

from worker.store import AsyncStore, Store

IDENTITY = "identity-1"
T = TypeVar("T")


@pytest.fixture
def stores(redis_flushed) -> Iterator[tuple[Store, str]]:
    """The worker's store, and the URL the webhook's (asyncio) store connects to."""
    sync = redis.Redis.from_url(redis_flushed.url)
    yield Store(sync), redis_flushed.url
    sync.close()


def webhook(url: str, call: Callable[[AsyncStore], Awaitable[T]]) -> T:
    """Run one webhook-side call with its own asyncio store (one event loop per call)."""

    async def run() -> T:
        astore = AsyncStore(aioredis.from_url(url))
        try:
            return await call(astore)
        finally:
            await astore.redis.aclose()

    return asyncio.run(run())


def claim_state(url: str) -> tuple[str, str]:
    found = webhook(
        url,
        lambda astore: astore.claim(
            IDENTITY, {"x": 1}, pending_seconds=60, result_ttl_seconds=600, now=time.time()
        ),
    )
    return found.analysis_id, found.state


def claim(url: str) -> str:
    analysis_id, state = claim_state(url)
    assert state == "new"
    return analysis_id


def lapse(store: Store, analysis_id: str) -> None:
    """The lease expires (a worker stalled longer than its lease)."""
    store.redis.delete(store.keys.lease(analysis_id))


def status(store: Store, analysis_id: str) -> str | None:
    record = store.record(analysis_id)
    return None if record is None else record["status"]


def finish(store: Store, analysis_id: str, worker: str, verdict: str = "fail") -> str:
    payload = {"verdict": verdict, "by": worker}
    return store.finish(analysis_id, worker, status="done", payload=payload, reuse_seconds=15)


# --- START ------------------------------------------------------------------------------------


def test_start_takes_a_queued_analysis_and_holds_it(stores):
    store, url = stores
    analysis_id = claim(url)
    assert store.start(analysis_id, "w1", 5) == "started"
    assert store.redis.get(store.keys.lease(analysis_id)) == b"w1"
    assert store.record(analysis_id)["worker"] == "w1"
    assert store.start(analysis_id, "w2", 5) == "taken"
    assert store.record(analysis_id)["worker"] == "w1"


def test_start_takes_over_only_a_lapsed_lease(stores):
    store, url = stores
    analysis_id = claim(url)
    store.start(analysis_id, "w1", 5)
    lapse(store, analysis_id)
    assert store.start(analysis_id, "w2", 5) == "started"
    assert store.redis.get(store.keys.lease(analysis_id)) == b"w2"


@pytest.mark.parametrize("final", ["done", "error", "superseded"])
def test_start_never_reopens_a_final_analysis(stores, final):
    store, url = stores
    analysis_id = claim(url)
    store.redis.hset(store.keys.record(analysis_id), "status", final)
    assert store.start(analysis_id, "w1", 5) == final
    assert status(store, analysis_id) == final
    assert not store.redis.exists(store.keys.lease(analysis_id))


def test_start_of_an_unknown_analysis(stores):
    store, _url = stores
    assert store.start("0" * 32, "w1", 5) == "missing"


# --- RENEW ------------------------------------------------------------------------------------


def test_only_the_holder_renews(stores):
    store, url = stores
    analysis_id = claim(url)
    store.start(analysis_id, "w1", 0.5)
    assert store.renew(analysis_id, "w1", 30) is True
    assert store.redis.pttl(store.keys.lease(analysis_id)) > 10_000
    assert store.renew(analysis_id, "w2", 30) is False


def test_a_lapsed_or_superseded_lease_is_not_renewed(stores):
    store, url = stores
    analysis_id = claim(url)
    store.start(analysis_id, "w1", 5)
    lapse(store, analysis_id)
    assert store.renew(analysis_id, "w1", 5) is False
    # The next call supersedes it; the old worker cannot bring it back to life.
    newer, state = claim_state(url)
    assert state == "new" and newer != analysis_id
    assert status(store, analysis_id) == "superseded"
    assert store.renew(analysis_id, "w1", 5) is False
    assert not store.redis.exists(store.keys.lease(analysis_id))


# --- FINISH -----------------------------------------------------------------------------------


def test_the_holder_finishes_records_and_keeps_the_answer_for_reuse(stores):
    store, url = stores
    analysis_id = claim(url)
    store.start(analysis_id, "w1", 5)
    assert finish(store, analysis_id, "w1") == "ok"
    record = store.record(analysis_id)
    assert record["status"] == "done" and record["result"] == {"verdict": "fail", "by": "w1"}
    assert not store.redis.exists(store.keys.lease(analysis_id))
    assert 0 < store.redis.pttl(store.keys.claim(IDENTITY)) <= 15_000
    assert finish(store, analysis_id, "w1") == "already"


def test_a_worker_that_lost_its_lease_records_nothing_over_a_superseded_analysis(stores):
    """The issue's case: the lease lapsed, a new call superseded the analysis; the old worker
    finishes late and must not turn it into `done` (which would also run its follow-up)."""
    store, url = stores
    analysis_id = claim(url)
    store.start(analysis_id, "w1", 5)
    lapse(store, analysis_id)
    newer, state = claim_state(url)
    assert state == "new"
    assert finish(store, analysis_id, "w1") == "not_holder"
    record = store.record(analysis_id)
    assert record["status"] == "superseded" and "result" not in record
    # The claim still points at the newer analysis.
    assert store.redis.get(store.keys.claim(IDENTITY)).decode() == newer


def test_a_worker_whose_analysis_was_taken_over_records_nothing(stores):
    store, url = stores
    analysis_id = claim(url)
    store.start(analysis_id, "w1", 5)
    lapse(store, analysis_id)
    assert store.start(analysis_id, "w2", 5) == "started"
    assert finish(store, analysis_id, "w1", verdict="pass") == "not_holder"
    assert status(store, analysis_id) == "running"
    assert store.redis.get(store.keys.lease(analysis_id)) == b"w2"
    assert finish(store, analysis_id, "w2") == "ok"
    assert store.record(analysis_id)["result"]["by"] == "w2"


def test_a_lapsed_lease_is_not_finished_even_when_nobody_took_over(stores):
    store, url = stores
    analysis_id = claim(url)
    store.start(analysis_id, "w1", 5)
    lapse(store, analysis_id)
    assert finish(store, analysis_id, "w1") == "not_holder"
    assert status(store, analysis_id) == "running"


def test_finish_publishes_only_what_it_recorded(stores):
    store, url = stores
    analysis_id = claim(url)
    store.start(analysis_id, "w1", 5)
    pubsub = store.redis.pubsub()
    pubsub.subscribe(store.keys.done_channel(analysis_id))
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    assert finish(store, analysis_id, "w2") == "not_holder"
    assert pubsub.get_message(timeout=0.2) is None
    assert finish(store, analysis_id, "w1") == "ok"
    assert pubsub.get_message(timeout=1)["data"]  # the completion message (it carries the result)
    pubsub.close()


def test_finish_of_an_unknown_analysis(stores):
    store, _url = stores
    assert finish(store, "0" * 32, "w1") == "missing"


# --- ABANDON (the webhook's undo when enqueueing failed) ----------------------------------------


def abandon(url: str, analysis_id: str) -> str:
    return webhook(url, lambda astore: astore.abandon(IDENTITY, analysis_id, "enqueue failed"))


def test_abandon_undoes_a_claim_nobody_started(stores):
    store, url = stores
    analysis_id = claim(url)
    assert abandon(url, analysis_id) == "ok"
    assert status(store, analysis_id) == "error"
    assert not store.redis.exists(store.keys.claim(IDENTITY))
    assert store.start(analysis_id, "w1", 5) == "error"  # a late delivery does not run it


def test_abandon_leaves_an_analysis_a_worker_already_holds(stores):
    """The enqueue timed out on the webhook's side but happened: the worker's analysis stands."""
    store, url = stores
    analysis_id = claim(url)
    store.start(analysis_id, "w1", 5)
    assert abandon(url, analysis_id) == "started"
    assert status(store, analysis_id) == "running"
    assert store.redis.get(store.keys.claim(IDENTITY)).decode() == analysis_id
    assert finish(store, analysis_id, "w1") == "ok"
