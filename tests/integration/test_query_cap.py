"""The Prometheus query cap on a real redis-server: shared slots, leases, deadlines."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from analysis.observation import Observation, SideCounts
from analysis.sources import SourceError
from tests.support.procs import wait_for
from worker.query_cap import CappedSource, QueryCap, QueryCapReached, cap_key

URL = "http://prometheus.example:9090"


@pytest.fixture
def client(redis_flushed):
    return redis_flushed.url


def all_released(cap: QueryCap) -> None:
    """Slots go back from the cap's own thread, a moment after the body ends."""
    wait_for(lambda: cap.holders() == 0, 2, "the slots to be released")


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
    all_released(cap)


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
    all_released(cap)
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
    all_released(make_cap(client))


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
    observation = source.observe(None, 1000.0, time.monotonic() + 5)
    source.observe_range(None, 0.0, 60.0, 15.0)
    assert observation.time == 1000.0
    assert inner.seen_holders == [1, 1]
    all_released(cap)
    assert source.latest_time(None, 50.0) == 49.0
    assert source.name == "prometheus"


def test_capped_source_fails_the_query_when_no_slot_comes_free(client):
    cap = make_cap(client, limit=1)
    assert cap.try_acquire("someone-else")
    inner = _Slow(cap)
    with pytest.raises(SourceError, match="busy"):
        CappedSource(inner, cap).observe(None, 1000.0, time.monotonic() + 0.2)
    assert inner.seen_holders == []


def test_each_prometheus_has_its_own_cap():
    assert cap_key("ra:", URL) == cap_key("ra:", URL + "/")
    assert cap_key("ra:", URL) != cap_key("ra:", "http://other:9090")


def test_slots_freed_together_go_back_together_and_the_next_caller_gets_one(client):
    cap = make_cap(client, limit=20)
    slots = [cap.slot(deadline=None) for _ in range(20)]
    for slot in slots:
        slot.__enter__()
    assert cap.holders() == 20
    for slot in slots:
        slot.__exit__(None, None, None)
    all_released(cap)
    with cap.slot(deadline=time.monotonic() + 1):
        assert cap.holders() == 1
