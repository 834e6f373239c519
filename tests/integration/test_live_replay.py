"""Live or replay, end to end: a look at a past window answers, but never acts on the present.

The `recovers` canary was bad until half an hour ago and is good now. Argo's live poll answers
`pass`; a replay of its bad past (the same request with an explicit `end`) answers `fail` and must
not move the live VirtualService nor send a message. Real webhook, Redis, Celery workers,
Kubernetes API emulator and chat receivers, as in test_actions_e2e.py.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time

import pytest

from analysis.durations import format_time
from tests.support.actions_world import NS, VIRTUAL_SERVICE, start_actions_world
from tests.support.procs import wait_for

pytestmark = pytest.mark.integration

SERVICE = "recovers"
CHATS = ("slack", "dingtalk", "feishu", "generic")
VS_API = ("networking.istio.io/v1", "virtualservices", NS, SERVICE)


@pytest.fixture(scope="module")
def world(stack_factory, prometheus, tmp_path_factory):
    built = start_actions_world(
        stack_factory, prometheus.url, tmp_path_factory.mktemp("live"), "live-replay"
    )
    yield built
    built.close()


def reset(world) -> None:
    """The `errors` world reset, plus a VirtualService of our own service at 30/70."""
    world.reset()
    vs = json.loads(json.dumps(VIRTUAL_SERVICE).replace('"errors', f'"{SERVICE}'))
    with contextlib.suppress(Exception):  # absent before the first test
        world.emulator.delete_object(*VS_API)
    world.emulator.create_object(*VS_API[:3], copy.deepcopy(vs))
    world.emulator.requests.clear()


def weights(world) -> dict[str, int]:
    route = world.emulator.get_object(*VS_API)["spec"]["http"][0]["route"]
    return {r["destination"]["subset"]: r["weight"] for r in route}


def request(revision: str, **extra: object) -> dict:
    return {
        "service": SERVICE,
        "namespace": NS,
        "canary": "6d4f8b7c9a",
        "baseline": "5c8d7e6f4b",
        "rollout": SERVICE,
        "revision": revision,
        **extra,
    }


def message_counts(world) -> dict[str, int]:
    return {chat: len(world.receivers.accepted(chat)) for chat in CHATS}


def test_a_replay_of_the_bad_past_after_a_live_pass_answers_fail_and_does_nothing(
    world, prometheus
):
    reset(world)
    changes_at = prometheus.scenarios[SERVICE].changes_at
    with world.stack.client() as client:
        live = client.post("/v1/analyze", json=request("1")).json()
        assert (live["verdict"], live["live"]) == ("pass", True), live["reasons"]
        # The first live verdict is an event: one message per target.
        wait_for(lambda: all(message_counts(world).values()), 10, "the pass messages")
        assert message_counts(world) == dict.fromkeys(CHATS, 1)

        past = request("1", end=format_time(changes_at - 10 * 60))
        replay = client.post("/v1/analyze", json=past).json()
        assert (replay["verdict"], replay["live"]) == ("fail", False), replay["reasons"]
        time.sleep(2)  # a follow-up, were there one, lands well within this (see test_actions)
        stored = client.get(f"/v1/analyses/{replay['analysis_id']}").json()

    assert world.emulator.requests_for("patch") == []
    assert weights(world) == {"stable": 70, "canary": 30}
    assert message_counts(world) == dict.fromkeys(CHATS, 1)
    assert [m.body["verdict"] for m in world.receivers.accepted("generic")] == ["pass"]
    assert stored["actions"] == []
