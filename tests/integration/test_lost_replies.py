"""Every write runs twice: a proxy in front of Redis loses the first reply of each write after
Redis ran it, and the client sends it again (tests/support/redis_proxy.py). That is what a
timeout, a reset connection or a Redis Cluster fail-over does to a call; redis-py retries it
(the cluster client always, ours as set in worker/redis_clients.py and webhooks/runtime.py).

The core and action tests run again with the state store behind that proxy (the Celery broker
is the plain redis-server, as in the cluster split), then two tests look at what the losses
hit: every script of the analysis and its follow-up, and each of our Redis helpers alone.
"""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest
import redis

from tests.integration import test_actions_e2e as actions_e2e
from tests.integration import test_core_e2e as core_e2e
from tests.integration.conftest import AUTH, split_stacks
from tests.integration.test_core_e2e import core_stack
from tests.support.actions_world import argo_call, body, start_split_actions_world
from tests.support.argo import Phase
from tests.support.procs import wait_for
from tests.support.redis_proxy import LossyRedisProxy
from tests.support.redis_proxy import label as label_of
from worker import chat, followup, query_cap, sequences, store
from worker.lua import Script
from worker.notify import dead_letter
from worker.notify.dead_letter import DeadLetters, RateLimiter
from worker.notify.delivery import DeliveryResult
from worker.notify.message import Notification
from worker.query_cap import QueryCap
from worker.redis_clients import sync_client

test_every_scenario_gets_its_verdict = core_e2e.test_every_scenario_gets_its_verdict
test_fifty_concurrent_identical_calls_share_one_computation = (
    core_e2e.test_fifty_concurrent_identical_calls_share_one_computation
)
test_a_repeat_within_the_reuse_window_is_the_same_analysis_then_a_fresh_one = (
    core_e2e.test_a_repeat_within_the_reuse_window_is_the_same_analysis_then_a_fresh_one
)
test_five_live_polls_without_end_follow_one_sequence = (
    core_e2e.test_five_live_polls_without_end_follow_one_sequence
)
test_fail_rolls_back_traffic_and_tells_every_chat_once = (
    actions_e2e.test_fail_rolls_back_traffic_and_tells_every_chat_once
)
test_a_verdict_change_is_a_new_event = actions_e2e.test_a_verdict_change_is_a_new_event
test_retried_delivery_then_dead_letter_never_touch_the_verdict = (
    actions_e2e.test_retried_delivery_then_dead_letter_never_touch_the_verdict
)
test_argo_rollouts_events_reach_chat_once = actions_e2e.test_argo_rollouts_events_reach_chat_once

# The scripts by the SHA1 that EVALSHA names them with.
SCRIPTS = {
    hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest(): name
    for name, source in {
        "CLAIM": store.CLAIM,
        "START": store.START,
        "START_WITH_SLOT": store.START_WITH_SLOT,
        "FINISH": store.FINISH,
        "FINISH_WITH_POLL": store.FINISH_WITH_POLL,
        "SAVE": sequences.SAVE,
        "TRANSITION": followup.TRANSITION,
        "SET_ONCE": followup.SET_ONCE,
        "STEP_DONE": followup.STEP_DONE,
        "WRITE_LIST": followup.WRITE_LIST,
        "CHAT_BEGIN": chat._BEGIN,
        "ACQUIRE": query_cap.ACQUIRE,
        "DROP": dead_letter.DROP,
    }.items()
}


def lost_scripts(proxy: LossyRedisProxy) -> dict[str, int]:
    named: dict[str, int] = {}
    for label, count in proxy.lost.items():
        kind, _, sha = label.partition(":")
        if kind in ("EVAL", "EVALSHA"):  # EVAL: a node's first run of the script
            name = SCRIPTS.get(sha, label)
            named[name] = named.get(name, 0) + count
    return named


@pytest.fixture(scope="module")
def proxy(redis_server):
    with LossyRedisProxy(redis_server.port) as running:
        yield running


@pytest.fixture(scope="module")
def lossy_stacks(proxy, redis_server, tmp_path_factory):
    """Stacks whose state store is behind the proxy and whose queue is the plain redis-server."""
    with split_stacks(proxy.url, redis_server.url, tmp_path_factory, prefix="lossy-") as make:
        yield make


@pytest.fixture(scope="module")
def stack(lossy_stacks, prometheus, tmp_path_factory):
    return core_stack(lossy_stacks, prometheus, tmp_path_factory)


@pytest.fixture(scope="module")
def world(lossy_stacks, prometheus, redis_server, tmp_path_factory):
    built = start_split_actions_world(
        lossy_stacks, prometheus.url, redis_server.url, tmp_path_factory.mktemp("actions")
    )
    yield built
    built.close()


def test_a_fail_verdict_acts_once_though_every_script_ran_twice(world, proxy):
    """One failing canary, its every write run twice: one verdict, one rollback, one message
    per chat target, one action on the stored analysis."""
    stack, emulator, receivers, _ = world.parts
    world.reset()
    proxy.lost.clear()
    assert argo_call(stack, body("21"))[0] == Phase.FAILED
    services = ("slack", "dingtalk", "feishu", "generic")
    wait_for(lambda: all(receivers.accepted(s) for s in services), 15, "every message")
    time.sleep(2)  # a duplicate would arrive by now
    assert {s: len(receivers.accepted(s)) for s in services} == dict.fromkeys(services, 1)
    assert world.weights() == {"stable": 100, "canary": 0}
    assert len(emulator.requests_for("patch")) == 1
    generic = receivers.accepted("generic")[0].body
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=10) as client:
        stored = client.get(f"/v1/analyses/{generic['analysis_id']}").json()
    assert [a["type"] for a in stored["actions"]] == ["traffic.rollback"]
    # The losses hit every script on the way, so each of them really ran twice.
    hit = lost_scripts(proxy)
    for name in ("CLAIM", "TRANSITION", "SET_ONCE", "STEP_DONE", "WRITE_LIST", "CHAT_BEGIN"):
        assert hit.get(name, 0) >= 1, (name, hit)
    assert hit.get("START", 0) + hit.get("START_WITH_SLOT", 0) >= 1, hit
    assert hit.get("FINISH", 0) + hit.get("FINISH_WITH_POLL", 0) >= 1, hit
    assert hit.get("SAVE", 0) >= 1, hit  # the live poll's sequence


def test_each_helper_answers_a_retried_call_as_it_answered_the_first(proxy):
    """Redis helpers that are not on the path above, each called once through the proxy (its
    reply lost, the call retried by the worker's own client)."""
    proxy.lost.clear()
    client = sync_client(proxy.url, cluster=False, socket_timeout=5)
    prefix = f"ra:lossy-helpers-{time.time_ns()}:"

    # A dead letter stored (and later put back) once, not twice.
    letters = DeadLetters(client, key=f"{prefix}dead-letters")
    failed = DeliveryResult("audit", "failed", 3, 500, "server error")
    note = Notification(analysis_id="a" * 32, service="svc", namespace="ns", rollout="r",
                        revision="1", verdict="fail")  # fmt: skip
    entry_id = letters.push(failed, note)
    assert [e["id"] for e in letters.list()] == [entry_id]
    taken = letters.take(entry_id)
    assert taken is not None and letters.list() == []
    letters.restore(taken, failed)
    assert [(e["id"], e["retries"]) for e in letters.list()] == [(entry_id, 1)]

    # A message counted once against its rate limit (one fixed minute: the three calls, slowed
    # by lost replies, could otherwise straddle a minute's end and count in two windows).
    limiter = RateLimiter(client, prefix=f"{prefix}rate", clock=lambda: 1_767_225_600.0)
    assert [limiter.allow("r|slack", 2, f"m{i}") for i in range(3)] == [True, True, False]
    assert limiter.allow("r|slack", 2, "m0") is True  # asked again: the same answer

    # A query slot taken once: the second holder still finds one free of two.
    cap = QueryCap(client, f"{prefix}cap", 2, 30)
    assert cap.try_acquire("holder-1") and cap.try_acquire("holder-2")
    assert not cap.try_acquire("holder-3")

    # A sequence's state saved once: its version moved by one.
    key = f"{prefix}seq:{{s1}}"
    client.hset(key, mapping={"version": 4, "state": "before"})
    save = client.register_script(sequences.SAVE)
    assert save(keys=[key], args=[4, "after", 60000, "1767225600.000"]) == 1
    assert client.hmget(key, "version", "state", "last_end") == [b"5", b"after", b"1767225600.000"]

    lost = dict(proxy.lost)
    assert lost.get("MULTI", 0) == 0  # labels name a transaction by its commands
    assert any("LPUSH" in label for label in lost), lost  # the letter's writes were lost once
    assert sum(n for label, n in lost.items() if label.startswith("EVAL")) >= 6, lost


def test_a_dead_letter_dropped_over_http_says_dropped_though_its_reply_was_lost(
    stack, proxy, redis_server
):
    """The webhook's client retries once: the retried drop must find its own drop done, not
    answer 404 for the letter it has just removed. A second DELETE still gets 404."""
    prefix = stack.env["ROLLOUT_ANALYZER_KEY_PREFIX"]
    letters = DeadLetters(redis.Redis.from_url(redis_server.url), key=f"{prefix}dead-letters")
    failed = DeliveryResult("audit", "failed", 3, 500, "server error")
    note = Notification(analysis_id="b" * 32, service="svc", namespace="ns", rollout="r",
                        revision="1", verdict="fail")  # fmt: skip
    entry_id = letters.push(failed, note)
    kept = letters.push(failed, note)
    proxy.lost.clear()
    with stack.client() as client:
        answer = client.delete(f"/v1/dead-letters/{entry_id}")
        assert (answer.status_code, answer.json()) == (200, {"dropped": entry_id})
        assert lost_scripts(proxy) == {"DROP": 1}, proxy.lost  # its first reply was lost
        assert client.delete(f"/v1/dead-letters/{entry_id}").status_code == 404
    assert [e["id"] for e in letters.list()] == [kept]
    assert letters.drop(kept) and letters.list() == []  # the command line's drop, the same script


def test_a_claim_whose_reply_and_undo_were_lost_still_gets_its_task(
    stack, proxy, prometheus, monkeypatch
):
    """CLAIM ran but its reply was lost, and Redis stays out of reach for the retry and the
    undo (ABANDON) too: the claim may stand, queued. Its task goes to the broker (a Redis of its
    own here), so the next polls get the verdict once the store is back, not after the claim's
    `pending_seconds` (120 s) of answers saying it is not finished."""
    sha = hashlib.sha1(store.CLAIM.encode(), usedforsecurity=False).hexdigest()
    claim = {f"EVALSHA:{sha}", f"EVAL:{sha}"}  # EVAL: the node's first run of it

    def lose(batch: list[bytes]) -> bool:
        if proxy.down_until == 0 and any(label_of(c) in claim for c in batch):
            proxy.down_until = time.monotonic() + 1.5  # and Redis gone for 1.5 s
            return True
        return False

    monkeypatch.setattr(proxy, "_lose", lose)
    monkeypatch.setattr(proxy, "down_until", 0.0)
    # A look at the past: no follow-up runs after it, to lose replies in the next test.
    request = core_e2e.body_for(prometheus, "good", end=core_e2e.pinned_end())
    with stack.client() as client:
        first = client.post("/v1/analyze", json=request)
        assert (first.status_code, first.json()["field"]) == (503, "store")
        assert proxy.down_until > 0  # the claim's reply was lost, and it ran
        give_up = time.monotonic() + 20
        while (answer := client.post("/v1/analyze", json=request)).status_code != 200:
            assert time.monotonic() < give_up, answer.json()
            time.sleep(0.5)
    assert answer.json()["verdict"] == "pass"


def test_what_the_proxy_lost_is_what_a_caller_without_retries_sees(proxy):
    """The proxy itself: a lost reply is a dropped connection after Redis ran the command."""
    proxy.lost.clear()
    bare = redis.Redis.from_url(proxy.url)  # from_url alone: no retries
    key = f"ra:lossy-bare-{time.time_ns()}"
    with pytest.raises(redis.ConnectionError):
        bare.incr(key)
    assert bare.get(key) == b"1"  # it ran
    # Only this client's INCR: the module's stacks may still be writing (a poll's line on the
    # report pages after an earlier test's answer) and lose replies of their own meanwhile.
    assert proxy.lost["INCRBY"] == 1


def test_a_script_the_node_lacks_is_sent_whole_where_redis_py_would_fail(proxy):
    """A fail-over can send SCRIPT LOAD to the old master and the call to the promoted replica
    (the proxy answers the load without loading): redis-py's own Script then fails with
    NOSCRIPT, ours sends the script itself (EVAL) and goes on."""
    source = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])"
    key = f"ra:lossy-noscript-{time.time_ns()}"
    client = sync_client(proxy.url, cluster=False, socket_timeout=5)
    proxy.enabled, proxy.script_loads_elsewhere = False, True
    try:
        client.script_flush()
        with pytest.raises(redis.exceptions.NoScriptError):
            client.register_script(source)(keys=[key], args=["redis-py"])
        assert Script(client, source)(keys=[key], args=["ours"]) == b"ours"
        client.script_flush()
        assert Script(client, source)(keys=[key], args=["again"]) == b"again"
    finally:
        proxy.enabled, proxy.script_loads_elsewhere = True, False
