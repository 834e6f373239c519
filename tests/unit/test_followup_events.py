"""Which verdicts become events (the TRANSITION script, on a real redis-server): only live ones,
in the order of their windows, whatever order the workers finish in."""

from __future__ import annotations

from typing import Any

import pytest
import redis

from analysis.durations import format_time
from analysis.policy import PolicySet
from worker.followup import Followup
from worker.notify.providers import ChatTarget
from worker.task_names import ACT_TASK

T = 1_800_000_000.0


@pytest.fixture
def followup(redis_flushed):
    enqueued: list[tuple[str, list[Any]]] = []
    client = redis.Redis.from_url(redis_flushed.url)
    built = Followup(
        redis=client,
        prefix="t:",
        policies=PolicySet({}),
        targets={"audit": ChatTarget(name="audit", kind="generic", url="http://127.0.0.1:9/")},
        enqueue=lambda task, args: enqueued.append((task, args)),
    )
    built.enqueued = enqueued  # type: ignore[attr-defined]
    yield built
    client.close()


def result(n: int, verdict: str, *, window_end: float, queued_at: float, live: bool = True):
    return {
        "analysis_id": f"a{n}",
        "verdict": verdict,
        "live": live,
        "service": "checkout",
        "namespace": "shop",
        "canary": "c1",
        "rollout": "checkout",
        "revision": "7",
        "window": {"end": format_time(window_end), "seconds": 300.0},
        "timing": {"window_end": window_end, "queued_at": queued_at},
    }


def test_a_replay_is_never_an_event(followup):
    assert (
        followup.on_verdict(result(1, "fail", window_end=T - 3600, queued_at=T, live=False)) is None
    )
    # Not even the first verdict of the rollout, and not once a live verdict exists.
    assert followup.on_verdict(result(2, "pass", window_end=T, queued_at=T)) is not None
    assert (
        followup.on_verdict(result(3, "fail", window_end=T - 3600, queued_at=T + 5, live=False))
        is None
    )
    assert [args for _, args in followup.enqueued] == [["shop/checkout@7#1"]]


def test_an_older_window_finishing_after_a_newer_verdict_is_stale(followup):
    # Two live polls: the one queued first (window ending at T) finishes last.
    assert followup.on_verdict(result(1, "pass", window_end=T + 30, queued_at=T + 30)) is not None
    assert followup.on_verdict(result(2, "fail", window_end=T, queued_at=T + 31)) is None
    # A newer window with a new verdict is an event again.
    assert followup.on_verdict(result(3, "fail", window_end=T + 60, queued_at=T + 60)) is not None
    assert followup.enqueued == [
        (ACT_TASK, ["shop/checkout@7#1"]),
        (ACT_TASK, ["shop/checkout@7#2"]),
    ]


def test_an_event_of_a_replayed_analysis_does_not_act(followup):
    """Defence in depth: an act task for an analysis that is not live moves nothing."""
    followup.redis.hset("t:analysis:a9", "result", '{"verdict": "fail", "live": false}')
    followup.redis.set("t:event:e9", '{"event_id": "e9", "analysis_id": "a9", "verdict": "fail"}')
    assert followup.act("e9") == []
    assert followup.enqueued == []
