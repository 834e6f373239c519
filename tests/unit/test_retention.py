"""Memory follows canaries, not polls: what stays for the result TTL and what goes quickly.

fakeredis runs the same Lua (CLAIM, FINISH, TRANSITION, KEEP) as Redis.
"""

from __future__ import annotations

import asyncio
import time

import fakeredis
import pytest

from analysis.policy import PolicySet
from worker.followup import Followup
from worker.store import AsyncStore, Retention, Store
from worker.task_names import ACT_TASK

RESULT_TTL, REPLACED_TTL = 86400, 60
IDENTITY = '{"service":"checkout","end":null}'


@pytest.fixture
def world():
    server = fakeredis.FakeServer()
    client = fakeredis.FakeRedis(server=server)
    store = Store(client, "ra:", Retention(RESULT_TTL, REPLACED_TTL))
    astore = AsyncStore(fakeredis.FakeAsyncRedis(server=server), "ra:")
    enqueued: list[tuple[str, list]] = []
    followup = Followup(
        redis=client,
        prefix="ra:",
        policies=PolicySet.load(None),
        targets={},
        enqueue=lambda task, args: enqueued.append((task, args)),
        result_ttl_seconds=RESULT_TTL,
    )
    return store, astore, followup, enqueued


def poll(store: Store, astore: AsyncStore, followup: Followup, verdict: str) -> str:
    """Argo's next poll after the reuse window: a fresh analysis of the same request."""
    claim = asyncio.run(
        astore.claim(
            IDENTITY, {"x": 1}, pending_seconds=60, result_ttl_seconds=RESULT_TTL, now=time.time()
        )
    )
    assert claim.is_new
    store.start(claim.analysis_id, "w", 5)
    result = {
        "analysis_id": claim.analysis_id,
        "verdict": verdict,
        "service": "checkout",
        "namespace": "shop",
        "rollout": "checkout",
        "revision": "7",
        "live": True,
        "timing": {"queued_at": time.time()},
        "window": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:05:00Z", "seconds": 300},
    }
    store.finish(claim.analysis_id, "w", status="done", payload=result, reuse_seconds=0)
    followup.on_verdict(result)
    return claim.analysis_id


def ttl(store: Store, analysis_id: str) -> int:
    return int(store.redis.ttl(store.keys.record(analysis_id)))


def test_only_the_latest_poll_and_the_verdict_changes_stay_for_the_result_ttl(world):
    store, astore, followup, _ = world
    first = poll(store, astore, followup, "pass")  # the first verdict: an event
    same = [poll(store, astore, followup, "pass") for _ in range(3)]  # nothing new
    changed = poll(store, astore, followup, "fail")  # a verdict change: an event
    latest = poll(store, astore, followup, "fail")

    assert ttl(store, first) > RESULT_TTL - 10
    assert ttl(store, changed) > RESULT_TTL - 10
    assert ttl(store, latest) > RESULT_TTL - 10
    for replaced in same:
        assert 0 < ttl(store, replaced) <= REPLACED_TTL
    # Still readable until then: someone holding the id from its reuse window finds it.
    assert store.record(same[-1])["result"]["verdict"] == "pass"


def test_memory_for_many_polls_is_bounded_by_canaries_once_replaced_ones_expire(world):
    store, astore, followup, _ = world
    ids = [poll(store, astore, followup, "pass") for _ in range(20)]
    short = [i for i in ids if ttl(store, i) <= REPLACED_TTL]
    assert len(short) == 18  # all but the first (its event) and the latest


def test_actions_live_as_long_as_their_analysis(world, monkeypatch):
    store, astore, followup, enqueued = world
    analysis_id = poll(store, astore, followup, "fail")
    (event_id,) = [args[0] for task, args in enqueued if task == ACT_TASK]
    action = {"type": "traffic.rollback", "status": "applied"}
    monkeypatch.setattr(followup, "_traffic", lambda result, pin: [action])
    assert followup.act(event_id) == [action]
    assert RESULT_TTL - 10 < store.redis.ttl(followup.actions_key(analysis_id)) <= RESULT_TTL
