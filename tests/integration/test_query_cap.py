"""The Prometheus query cap on a real redis-server: shared slots, leases, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import cast

import pytest
import redis
import redis.asyncio as aioredis

from analysis.observation import Observation, SideCounts
from analysis.request import AnalysisSpec
from analysis.sources import SourceError
from worker.lua import Script
from worker.query_cap import CappedSource, QueryCap, QueryCapReached, cap_key
from worker.store import AsyncStore, Store

URL = "http://prometheus.example:9090"
# The spec the fake source (_Slow) is asked about: it never reads it.
NO_SPEC = cast(AnalysisSpec, None)


@pytest.fixture
def client(redis_flushed):
    return redis_flushed.url


def make_cap(url: str, limit: int = 2, lease_seconds: float = 30.0) -> QueryCap:
    # Its own connection per cap: as if each cap lived in its own worker process.
    return QueryCap(redis.Redis.from_url(url), cap_key("ra:test:", URL), limit, lease_seconds)


def test_no_more_holders_than_the_limit_across_caps(client):
    first, second = make_cap(client), make_cap(client)
    assert first.try_acquire("a")
    assert second.try_acquire("b")
    assert not first.try_acquire("c")
    assert not second.try_acquire("d")
    second.release("a")
    assert second.try_acquire("d")
    assert first.holders() == 2


def test_a_dead_holders_slot_comes_back_when_its_lease_expires(client):
    cap = make_cap(client, limit=1, lease_seconds=0.3)
    assert cap.try_acquire("died-holding-it")  # never released
    assert not cap.try_acquire("next")
    with cap.slot(deadline=time.monotonic() + 5):
        assert cap.holders() == 1
    assert cap.holders() == 0


def test_waiting_gives_up_at_the_deadline(client):
    cap = make_cap(client, limit=1)
    assert cap.try_acquire("busy")
    started = time.monotonic()
    with pytest.raises(QueryCapReached) as caught, cap.slot(deadline=started + 0.3):
        pytest.fail("the body must not run without a slot")
    assert isinstance(caught.value, SourceError)  # an analysis error, never a verdict
    assert time.monotonic() - started < 5


def test_a_slot_is_released_when_the_body_raises(client):
    cap = make_cap(client, limit=1)
    with pytest.raises(RuntimeError), cap.slot(deadline=None):
        raise RuntimeError("query failed")
    assert cap.holders() == 0
    assert cap.try_acquire("next")


def test_concurrent_threads_never_exceed_the_cap(client):
    limit, threads, rounds = 3, 12, 5
    in_flight, peak, lock = 0, 0, threading.Lock()
    failures: list[BaseException] = []

    def hold() -> None:
        nonlocal in_flight, peak
        cap = make_cap(client, limit=limit)
        try:
            for _ in range(rounds):
                with cap.slot(deadline=time.monotonic() + 20):
                    with lock:
                        in_flight += 1
                        peak = max(peak, in_flight)
                    time.sleep(0.01)
                    with lock:
                        in_flight -= 1
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    workers = [threading.Thread(target=hold) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not failures
    assert peak == limit  # the cap was reached and never passed
    assert make_cap(client).holders() == 0


class _Slow:
    name = "prometheus"

    def __init__(self, cap: QueryCap) -> None:
        self.cap = cap
        self.seen_holders: list[int] = []

    def observe(self, spec, end, deadline=None, seconds=None):
        self.seen_holders.append(self.cap.holders())
        return Observation(end, 300, SideCounts(), SideCounts())

    def observe_range(self, spec, start, end, step, seconds=None):
        self.seen_holders.append(self.cap.holders())
        return []

    def latest_time(self, spec, now):
        return now - 1


def test_capped_source_holds_a_slot_only_while_querying(client):
    cap = make_cap(client, limit=1)
    inner = _Slow(cap)
    source = CappedSource(inner, cap)
    observation = source.observe(NO_SPEC, 1000.0, time.monotonic() + 5)
    source.observe_range(NO_SPEC, 0.0, 60.0, 15.0)
    assert observation.time == 1000.0
    assert inner.seen_holders == [1, 1]
    assert cap.holders() == 0
    assert source.latest_time(NO_SPEC, 50.0) == 49.0
    assert source.name == "prometheus"


def test_capped_source_fails_the_query_when_no_slot_comes_free(client):
    cap = make_cap(client, limit=1)
    assert cap.try_acquire("someone-else")
    inner = _Slow(cap)
    with pytest.raises(SourceError, match="busy"):
        CappedSource(inner, cap).observe(NO_SPEC, 1000.0, time.monotonic() + 0.2)
    assert inner.seen_holders == []


def test_each_prometheus_has_its_own_cap():
    assert cap_key("ra:", URL) == cap_key("ra:", URL + "/")
    assert cap_key("ra:", URL) != cap_key("ra:", "http://other:9090")


def test_slots_go_back_as_each_body_ends_and_the_next_caller_gets_one(client):
    cap = make_cap(client, limit=20)
    slots = [cap.slot(deadline=None) for _ in range(20)]
    for slot in slots:
        slot.__enter__()
    assert cap.holders() == 20
    for given_back, slot in enumerate(slots, start=1):
        slot.__exit__(None, None, None)
        assert cap.holders() == 20 - given_back
    with cap.slot(deadline=time.monotonic() + 1):
        assert cap.holders() == 1


def queued_analysis(url: str) -> tuple[Store, str]:
    """A store on the test Redis and the id of a new, queued analysis."""

    async def claimed() -> str:
        client = aioredis.Redis.from_url(url)
        claim = await AsyncStore(client, "ra:test:").claim(
            "some-identity", {"x": 1}, pending_seconds=60, result_ttl_seconds=600, now=time.time()
        )  # fmt: skip
        await client.aclose()
        return claim.analysis_id

    return Store(redis.Redis.from_url(url), "ra:test:"), asyncio.run(claimed())


def test_start_takes_the_query_slot_in_the_same_script_and_the_query_uses_it(client):
    cap = make_cap(client, limit=1)
    store, analysis_id = queued_analysis(client)
    state, record, held = store.begin(analysis_id, "w1", 30, cap.request())
    assert state == "started" and record is not None and held is not None
    assert cap.holders() == 1  # the slot is the analysis' own from START on
    inner = _Slow(cap)
    with CappedSource(inner, cap).holding(held) as source:
        source.observe(NO_SPEC, 1000.0, time.monotonic() + 5)  # no second slot: the cap is 1
        assert cap.holders() == 0  # given back when the query answered, as always
        source.observe(NO_SPEC, 1001.0, time.monotonic() + 5)  # a second query takes its own
    assert inner.seen_holders == [1, 1]
    assert cap.holders() == 0


def test_a_slot_start_took_goes_back_when_no_query_uses_it(client):
    cap = make_cap(client, limit=1)
    store, analysis_id = queued_analysis(client)
    _, _, held = store.begin(analysis_id, "w1", 30, cap.request())
    with CappedSource(_Slow(cap), cap).holding(held):
        assert cap.holders() == 1
    assert cap.holders() == 0


def test_start_takes_no_slot_when_the_cap_is_full_or_the_analysis_does_not_start(client):
    cap = make_cap(client, limit=1)
    assert cap.try_acquire("someone-else")
    store, analysis_id = queued_analysis(client)
    state, _, held = store.begin(analysis_id, "w1", 30, cap.request())
    assert (state, held) == ("started", None)  # the query will wait for a slot as usual
    assert cap.holders() == 1
    # An analysis START does not start (held by a live worker, done, missing) takes no slot.
    cap.release("someone-else")
    assert store.begin(analysis_id, "w2", 30, cap.request())[0] == "taken"
    assert store.begin("f" * 32, "w2", 30, cap.request())[0] == "missing"
    assert cap.holders() == 0


def test_the_slot_start_took_is_free_when_the_query_answers_without_waiting_for_redis(client):
    """The release goes out as the query answers; its reply is read at the analysis' end, on
    the thread's own socket, where every later command still gets its own reply."""
    cap = make_cap(client, limit=1)
    store, analysis_id = queued_analysis(client)
    _, _, held = store.begin(analysis_id, "w1", 30, cap.request())
    echo = Script(cap.redis, "return ARGV[1]")
    with CappedSource(_Slow(cap), cap).holding(held) as source:
        source.observe(NO_SPEC, 1000.0, time.monotonic() + 5)
        assert make_cap(client, limit=1).try_acquire("the-next-analysis")  # its slot is free
        assert echo(args=["before the release's reply is read"]) == (
            b"before the release's reply is read"
        )
    for n in range(5):  # the socket and the pool: each command answered with its own reply
        assert echo(args=[n]) == str(n).encode()
        cap.redis.set("ra:test:probe", n)
        assert cap.redis.get("ra:test:probe") == str(n).encode()
    assert cap.holders() == 1  # the next analysis's slot; the released one is gone


def test_a_holder_taking_its_slot_again_keeps_one_slot_for_a_new_lease(client):
    """START taking the slot the claim took for its analysis (worker/hints.py), or a call run
    again after a lost reply: still one slot, now leased from the second take."""
    cap = make_cap(client, limit=1, lease_seconds=30)
    assert cap.try_acquire("the-analysis")
    first = cap.redis.zscore(cap.key, "the-analysis")
    assert first is not None
    time.sleep(0.01)
    assert cap.try_acquire("the-analysis")  # the cap is full, but the slot is its own
    assert cap.holders() == 1
    second = cap.redis.zscore(cap.key, "the-analysis")
    assert second is not None and second > first
    assert not cap.try_acquire("someone-else")
