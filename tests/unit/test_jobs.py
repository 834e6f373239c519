"""One analysis run by a worker (worker/jobs.py) on a real redis-server with the demo recording:
it records once and hands the verdict on; a worker that loses the analysis while computing it
records nothing and hands nothing on."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

import analysis
from analysis.durations import parse_time
from analysis.observation import Observation
from analysis.policy import PolicySet
from analysis.request import AnalysisSpec, parse_request, resolve
from analysis.sources.recording import RecordingSource
from worker.history import History, rollout_key
from worker.jobs import execute
from worker.store import AsyncStore, Store

RECORDING = Path(analysis.__file__).parent / "data" / "demo-recording.json"
POLICIES = PolicySet({})
REQUEST = {"service": "payments", "namespace": "shop", "canary": "6d4f8b7c9a",
           "baseline": "5c8d7e6f4b", "rollout": "payments", "revision": "4"}  # fmt: skip


class InterruptedSource:
    """The demo recording, with something happening elsewhere while this worker computes."""

    def __init__(self, meanwhile: Callable[[], None] = lambda: None) -> None:
        self.source = RecordingSource.from_file(RECORDING)
        self.name = self.source.name
        self.meanwhile = meanwhile

    def latest_time(self, spec: AnalysisSpec, now: float) -> float:
        return self.source.latest_time(spec, now)

    def observe(
        self,
        spec: AnalysisSpec,
        end: float,
        deadline: float | None = None,
        seconds: float | None = None,
    ) -> Observation:
        observation = self.source.observe(spec, end, deadline, seconds)
        self.meanwhile()
        return observation

    def observe_range(
        self,
        spec: AnalysisSpec,
        start: float,
        end: float,
        step: float,
        seconds: float | None = None,
    ) -> list[Observation]:
        return self.source.observe_range(spec, start, end, step, seconds)


@pytest.fixture
def world(redis_flushed) -> Iterator[tuple[Store, str]]:
    client = redis.Redis.from_url(redis_flushed.url)
    yield Store(client), redis_flushed.url
    client.close()


def claim(url: str) -> str:
    spec = resolve(parse_request(REQUEST), POLICIES)

    async def run() -> str:
        astore = AsyncStore(aioredis.from_url(url))
        try:
            found = await astore.claim(
                spec.identity(),
                spec.to_json(),
                pending_seconds=60,
                result_ttl_seconds=600,
                now=time.time(),
            )
        finally:
            await astore.redis.aclose()
        return found.analysis_id

    return asyncio.run(run())


def run(
    store: Store,
    analysis_id: str,
    worker: str,
    source: Any,
    handed_on: list[dict[str, Any]],
    lease_seconds: float = 5,
    history: History | None = None,
) -> str:
    return execute(
        store,
        analysis_id,
        worker=worker,
        source=source,
        policies=POLICIES,
        lease_seconds=lease_seconds,
        reuse_seconds=15,
        budget_seconds=10,
        after=handed_on.append,
        history=history,
    )


def test_a_worker_records_the_verdict_once_and_hands_it_on(world):
    store, url = world
    analysis_id = claim(url)
    handed_on: list[dict[str, Any]] = []
    assert run(store, analysis_id, "w1", InterruptedSource(), handed_on) == "done"
    record = store.record(analysis_id)
    assert record["status"] == "done"
    assert record["result"]["verdict"] == "fail" and record["result"]["live"] is True
    # Events are ordered by the end of the window analysed (not by when the task was queued).
    window_end = parse_time(record["result"]["window"]["end"])
    assert record["result"]["timing"]["window_end"] == pytest.approx(window_end, abs=0.001)
    assert [r["analysis_id"] for r in handed_on] == [analysis_id]
    # A redelivery finds it done and offers the same verdict to the (idempotent) follow-up.
    assert run(store, analysis_id, "w2", InterruptedSource(), handed_on) == "done"
    assert [r["verdict"] for r in handed_on] == ["fail", "fail"]
    assert store.record(analysis_id)["finished_at"] == record["finished_at"]


def test_a_worker_whose_analysis_was_taken_over_records_and_hands_on_nothing(world):
    store, url = world
    analysis_id = claim(url)

    def taken_over() -> None:  # w1 stalls past its lease; the redelivered task starts on w2
        store.redis.delete(store.keys.lease(analysis_id))
        assert store.start(analysis_id, "w2", 5) == "started"

    handed_on: list[dict[str, Any]] = []
    assert run(store, analysis_id, "w1", InterruptedSource(taken_over), handed_on) == "lost"
    record = store.record(analysis_id)
    assert record["status"] == "running" and record["worker"] == "w2" and "result" not in record
    assert handed_on == []
    # w2 (the redelivered task) finishes it: one result, one hand-on.
    assert run(store, analysis_id, "w2", InterruptedSource(), handed_on) == "done"
    assert [r["analysis_id"] for r in handed_on] == [analysis_id]


def test_a_worker_whose_analysis_was_superseded_records_and_hands_on_nothing(world):
    store, url = world
    analysis_id = claim(url)
    newer: list[str] = []

    def superseded() -> None:  # the lease lapses; Argo's next call supersedes the analysis
        store.redis.delete(store.keys.lease(analysis_id))
        newer.append(claim(url))

    handed_on: list[dict[str, Any]] = []
    assert run(store, analysis_id, "w1", InterruptedSource(superseded), handed_on) == "lost"
    assert store.record(analysis_id)["status"] == "superseded"
    assert "result" not in store.record(analysis_id)
    assert handed_on == []
    assert newer and newer[0] != analysis_id


def test_a_refused_renewal_stops_the_worker(world):
    """The renewal thread learns the lease is gone before FINISH would: the worker stops."""
    store, url = world
    analysis_id = claim(url)
    renewals: list[bool] = []  # those begun after w2 took the lease
    taken = threading.Event()
    original_renew = store.renew

    def renew(*args: Any) -> bool:
        after = taken.is_set()  # a renewal the body's pace let in before, is not counted
        answer = original_renew(*args)
        if after:
            renewals.append(answer)
        return answer

    store.renew = renew

    def lease_taken_and_wait() -> None:
        store.redis.set(store.keys.lease(analysis_id), "w2")
        taken.set()
        deadline = time.monotonic() + 5
        while not renewals and time.monotonic() < deadline:
            time.sleep(0.02)
        # w2 gone and w1's name back on the lease: FINISH alone would accept w1's result now.
        store.redis.set(store.keys.lease(analysis_id), "w1")

    handed_on: list[dict[str, Any]] = []
    source = InterruptedSource(lease_taken_and_wait)
    outcome = run(store, analysis_id, "w1", source, handed_on, lease_seconds=0.3)
    assert renewals and renewals[0] is False
    assert outcome == "lost"
    assert store.record(analysis_id)["status"] == "running"
    assert handed_on == []


def test_an_errored_analysis_is_final(world):
    store, url = world
    analysis_id = claim(url)
    store.redis.hset(store.keys.record(analysis_id), "status", "error")
    handed_on: list[dict[str, Any]] = []
    assert run(store, analysis_id, "w1", InterruptedSource(), handed_on) == "error"
    assert handed_on == []


def test_a_done_analysis_is_on_its_rollouts_timeline_once_written_with_its_result(world):
    """FINISH draws the poll's line on the timeline (the report pages) in the same script as
    the result, on one Redis; a redelivered task draws the same line, not a second one."""
    store, url = world
    history = History(store.redis, "ra:")
    analysis_id = claim(url)
    lines: list[int] = []
    source = InterruptedSource()
    finish = store.finish

    def finish_and_look(*args: Any, **kwargs: Any) -> str:
        outcome = finish(*args, **kwargs)
        lines.append(store.redis.zcard(polls))  # before anything else is written
        return outcome

    polls = f"ra:history:polls:{rollout_key({**REQUEST})}"
    store.finish = finish_and_look
    assert run(store, analysis_id, "w1", source, [], history=history) == "done"
    assert lines == [1]
    assert run(store, analysis_id, "w2", source, [], history=history) == "done"  # redelivered
    entries = store.redis.zrange(polls, 0, -1, withscores=True)
    assert len(entries) == 1
    summary = json.loads(entries[0][0])
    assert summary["analysis_id"] == analysis_id


def test_polls_of_one_live_canary_at_once_all_join_its_sequence(redis_flushed):
    """Many AnalysisRuns polling one canary in the same instant (a burst: each poll's
    compare-and-set races the others'): every poll gets its verdict, none is given up on
    (with three tries, 13 of these 16 failed)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from worker.jobs import run_live
    from worker.sequences import SequenceStore

    spec = resolve(parse_request(REQUEST), POLICIES)
    assert spec.live
    recording = RecordingSource.from_file(RECORDING)
    end = recording.latest_time(spec, time.time())
    together = threading.Barrier(16)

    class AllAtOnce(InterruptedSource):
        def observe(self, spec, end, deadline=None, seconds=None):
            observation = self.source.observe(spec, end, deadline)
            together.wait(5)  # every poll has its observation before any saves
            return observation

    def poll(n: int) -> dict[str, Any]:
        client = redis.Redis.from_url(redis_flushed.url)
        sequences = SequenceStore(client, "ra:test:", 3600)
        try:
            return run_live(spec, AllAtOnce(), sequences, end, time.monotonic() + 30)
        finally:
            client.close()

    with ThreadPoolExecutor(16) as pool:
        reports = list(pool.map(poll, range(together.parties)))
    assert len(reports) == 16 and all(
        r["verdict"] in ("pass", "fail", "inconclusive") for r in reports
    )
