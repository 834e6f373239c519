"""State transitions of an analysis (fakeredis runs the same Lua scripts as Redis)."""

from __future__ import annotations

import asyncio
import time

import fakeredis
import pytest

from worker.history import HISTORY_TTL_SECONDS, MAX_POLLS, PollEntry
from worker.store import AsyncStore, Store


@pytest.fixture
def stores():
    server = fakeredis.FakeServer()
    return Store(fakeredis.FakeRedis(server=server)), AsyncStore(
        fakeredis.FakeAsyncRedis(server=server)
    )


def claim(astore: AsyncStore, identity: str = "abc"):
    return asyncio.run(
        astore.claim(
            identity, {"x": 1}, pending_seconds=60, result_ttl_seconds=600, now=time.time()
        )
    )


def test_identical_claims_share_one_analysis_until_the_reuse_window_ends(stores):
    store, astore = stores
    first = claim(astore)
    assert first.is_new
    again = claim(astore)
    assert (again.analysis_id, again.state) == (first.analysis_id, "queued")
    assert store.start(first.analysis_id, "w1", 5) == "started"
    assert claim(astore).state == "running"
    assert (
        store.finish(
            first.analysis_id, "w1", status="done", payload={"verdict": "pass"}, reuse_seconds=0.2
        )
        == "ok"
    )
    done = claim(astore)
    assert (done.analysis_id, done.state) == (first.analysis_id, "done")
    assert store.record(first.analysis_id)["result"] == {"verdict": "pass"}
    time.sleep(0.3)
    later = claim(astore)
    assert later.is_new and later.analysis_id != first.analysis_id


def test_a_running_analysis_whose_lease_lapsed_is_superseded(stores):
    store, astore = stores
    first = claim(astore)
    store.start(first.analysis_id, "dead-worker", 0.2)
    time.sleep(0.3)
    second = claim(astore)
    assert second.is_new and second.analysis_id != first.analysis_id
    assert store.record(first.analysis_id)["status"] == "superseded"
    # the dead worker's task, redelivered later, does not run it again
    assert store.start(first.analysis_id, "w2", 5) == "superseded"


def test_a_second_delivery_never_runs_twice(stores):
    store, astore = stores
    first = claim(astore)
    assert store.start(first.analysis_id, "w1", 5) == "started"
    assert store.start(first.analysis_id, "w2", 5) == "taken"
    store.finish(first.analysis_id, "w1", status="done", payload={}, reuse_seconds=10)
    assert store.start(first.analysis_id, "w2", 5) == "done"
    assert (
        store.finish(first.analysis_id, "w2", status="done", payload={}, reuse_seconds=10)
        == "already"
    )


def test_renewing_keeps_the_lease_alive(stores):
    store, astore = stores
    first = claim(astore)
    store.start(first.analysis_id, "w1", 0.3)
    for _ in range(4):
        time.sleep(0.1)
        assert store.renew(first.analysis_id, "w1", 0.3)
    assert claim(astore).state == "running"
    assert not store.renew(first.analysis_id, "intruder", 0.3)


def test_an_error_is_not_reused(stores):
    store, astore = stores
    first = claim(astore)
    store.start(first.analysis_id, "w1", 5)
    store.finish(
        first.analysis_id, "w1", status="error", payload={"error": "down"}, reuse_seconds=10
    )
    assert store.record(first.analysis_id)["error"] == {"error": "down"}
    assert claim(astore).is_new


def test_abandoned_claim_frees_the_identity(stores):
    store, astore = stores
    first = claim(astore)
    asyncio.run(astore.abandon("abc", first.analysis_id, "enqueue failed"))
    assert store.record(first.analysis_id)["status"] == "error"
    assert claim(astore).is_new


def test_finish_draws_the_polls_line_only_for_a_done_result_it_records(stores):
    """FINISH with a poll's line (worker/history.py): written in the same script as a done
    result; never for an error, never by a worker whose FINISH is refused."""
    store, astore = stores
    polls = "ra:history:polls:shop/checkout@7"

    def line(n: int) -> PollEntry:
        return PollEntry(polls, f'{{"poll":{n}}}', 1000.0 + n)

    refused = claim(astore, "refused")
    store.start(refused.analysis_id, "w1", 5)
    outcome = store.finish(
        refused.analysis_id, "w2", status="done", payload={"verdict": "pass"}, reuse_seconds=1,
        poll=line(1),
    )  # fmt: skip
    assert outcome == "not_holder" and store.redis.zcard(polls) == 0
    failed = claim(astore, "failed")
    store.start(failed.analysis_id, "w1", 5)
    store.finish(failed.analysis_id, "w1", status="error", payload="no data", reuse_seconds=1,
                 poll=line(2))  # fmt: skip
    assert store.redis.zcard(polls) == 0
    done = claim(astore, "done")
    store.start(done.analysis_id, "w1", 5)
    store.finish(done.analysis_id, "w1", status="done", payload={"verdict": "fail"},
                 reuse_seconds=1, poll=line(3))  # fmt: skip
    assert store.redis.zrange(polls, 0, -1, withscores=True) == [(b'{"poll":3}', 1003.0)]
    assert 0 < store.redis.ttl(polls) <= HISTORY_TTL_SECONDS


def test_finish_keeps_the_newest_polls_of_a_timeline_as_the_pages_history_does(stores):
    store, astore = stores
    polls = "ra:history:polls:shop/checkout@8"
    for n in range(MAX_POLLS + 3):
        analysis = claim(astore, f"poll-{n}")
        store.start(analysis.analysis_id, "w1", 5)
        line = PollEntry(polls, f'{{"poll":{n}}}', 1000.0 + n)
        store.finish(analysis.analysis_id, "w1", status="done", payload={"verdict": "pass"},
                     reuse_seconds=1, poll=line)  # fmt: skip
    kept = store.redis.zrange(polls, 0, -1)
    assert len(kept) == MAX_POLLS
    assert kept[0] == b'{"poll":3}' and kept[-1] == f'{{"poll":{MAX_POLLS + 2}}}'.encode()
