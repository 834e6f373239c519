"""Redis Cluster as the state store, the Celery broker on a separate plain Redis (the supported
split): the core and action tests again, the settings check, and a master fail-over in the
middle of a burst.

The cluster is real (tests/support/redis_cluster.py: 3 masters + 3 replicas from redis-server,
joined with `redis-cli --cluster create`, once per session); the broker is the session's
redis-server. The core and action tests below are the same functions as in test_core_e2e.py and
test_actions_e2e.py, collected here with this module's `stack` and `world` fixtures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from tests.integration import test_actions_e2e as actions_e2e
from tests.integration import test_core_e2e as core_e2e
from tests.integration.conftest import AUTH, split_stacks
from tests.integration.test_core_e2e import body_for, core_stack, pinned_end
from tests.support.actions_world import argo_measure, body, start_split_actions_world
from tests.support.argo import Phase
from tests.support.procs import wait_for
from worker.notify.dead_letter import DeadLetters
from worker.notify.delivery import DeliveryResult
from worker.notify.message import Notification
from worker.redis_clients import sync_client

REPO = Path(__file__).resolve().parents[2]

# The core and action tests, collected again here (in their own order) with this module's
# `stack` and `world`, whose state lives in the cluster.
test_every_scenario_gets_its_verdict = core_e2e.test_every_scenario_gets_its_verdict
test_one_promql_round_trip_per_analysis = core_e2e.test_one_promql_round_trip_per_analysis
test_fifty_concurrent_identical_calls_share_one_computation = (
    core_e2e.test_fifty_concurrent_identical_calls_share_one_computation
)
test_a_repeat_within_the_reuse_window_is_the_same_analysis_then_a_fresh_one = (
    core_e2e.test_a_repeat_within_the_reuse_window_is_the_same_analysis_then_a_fresh_one
)
test_stored_result_is_readable_by_id = core_e2e.test_stored_result_is_readable_by_id
test_fail_rolls_back_traffic_and_tells_every_chat_once = (
    actions_e2e.test_fail_rolls_back_traffic_and_tells_every_chat_once
)
test_a_verdict_change_is_a_new_event = actions_e2e.test_a_verdict_change_is_a_new_event


@pytest.fixture(scope="module")
def cluster_stacks(redis_cluster, redis_server, tmp_path_factory):
    """Stacks whose state lives in the cluster and whose queue is on the plain redis-server."""
    cluster = {"ROLLOUT_ANALYZER_REDIS_CLUSTER": "true"}
    with split_stacks(
        redis_cluster.url, redis_server.url, tmp_path_factory, settings=cluster
    ) as make:
        yield make


@pytest.fixture(scope="module")
def stack(cluster_stacks, prometheus, tmp_path_factory):
    return core_stack(cluster_stacks, prometheus, tmp_path_factory)


@pytest.fixture(scope="module")
def world(cluster_stacks, prometheus, redis_server, tmp_path_factory):
    built = start_split_actions_world(
        cluster_stacks, prometheus.url, redis_server.url, tmp_path_factory.mktemp("actions")
    )
    yield built
    built.close()


def test_state_is_spread_over_the_masters_and_the_queue_stays_off_the_cluster(
    stack, prometheus, redis_cluster, redis_server
):
    rollouts = [f"spread-{i}" for i in range(12)]
    with stack.client() as client:
        for rollout in rollouts:
            payload = body_for(prometheus, "good", rollout=rollout, end=pinned_end())
            answer = client.post("/v1/analyze", json=payload)
            assert answer.status_code == 200, answer.text
    records = redis_cluster.keys_per_master("ra:core:{*}analysis:*")
    assert sum(records.values()) >= len(rollouts)
    assert sum(1 for n in records.values() if n) >= 2, records  # really sharded
    # Celery's own keys are on the broker only.
    broker = redis.Redis.from_url(redis_server.url)
    assert broker.exists("_kombu.binding.ra-core")
    assert not any(redis_cluster.keys_per_master("_kombu*").values())
    # Results live in our store: Celery writes none anywhere.
    assert not list(broker.scan_iter("celery-task-meta-*"))
    assert not any(redis_cluster.keys_per_master("celery-task-meta-*").values())


def test_a_cluster_without_a_separate_broker_is_refused_naming_the_setting(redis_cluster):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_ANALYZER_")}
    env |= {
        "ROLLOUT_ANALYZER_REDIS_URL": redis_cluster.url,
        "ROLLOUT_ANALYZER_REDIS_CLUSTER": "true",
    }
    done = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode != 0
    assert "ROLLOUT_ANALYZER_BROKER_URL" in done.stderr
    assert "Traceback" not in done.stderr


BURST = 48


def test_a_master_failover_mid_burst_loses_no_analysis_and_repeats_no_action(
    world, redis_cluster, record_property
):
    stack, _emulator, receivers, _ = world.parts
    world.reset()
    rollouts = [f"burst-{i}" for i in range(BURST)]
    answered: dict[str, list[Phase]] = {r: [] for r in rollouts}
    errors: list[str] = []  # what each Error said, for the failure message
    lock = threading.Lock()

    def argo(rollout: str) -> Phase:
        """One AnalysisRun's measurement, retried as Argo retries an Error (up to 5 times)."""
        # Each rollout its own canary (a live sequence per canary): the data has one canary
        # pair, so a never-reached latency limit tells them apart.
        limit = {"max_latency_p50": 100 + int(rollout.rpartition("-")[2])}
        for _ in range(5):
            taken = argo_measure(stack, body("1") | {"rollout": rollout, "overrides": limit})
            phase = taken.phase
            with lock:
                answered[rollout].append(phase)
                if phase == Phase.ERROR:
                    errors.append(f"{rollout} +{time.monotonic() - began:.1f}s: {taken.message}")
            if phase != Phase.ERROR:
                return phase
            time.sleep(1)
        return phase

    def answers() -> int:
        with lock:
            return sum(1 for phases in answered.values() if Phase.FAILED in phases)

    victim = redis_cluster.masters()[0]
    began = time.monotonic()
    with ThreadPoolExecutor(BURST) as pool:
        phases = pool.map(argo, rollouts)
        # At the first answer: most calls are still in flight, even on a loaded machine.
        wait_for(lambda: answers() >= 1, 30, "the burst to be under way", 0.01)
        in_flight_at_failover = BURST - answers()  # when the fail-over begins
        promoted = redis_cluster.failover(victim)
        in_flight_after = BURST - answers()
        final = list(phases)

    retried = sum(seen.count(Phase.ERROR) for seen in answered.values())
    record_property(
        "summary",
        f"[failover] {in_flight_at_failover}/{BURST} calls unanswered when the fail-over "
        f"began, {in_flight_after} when it ended; {retried} answered Error and were retried",
    )
    assert victim not in redis_cluster.masters() and promoted in redis_cluster.masters()
    assert in_flight_at_failover > 0, "the burst was over before the fail-over began"
    # 0 lost: every rollout got its verdict (after Argo's retries, if a call answered Error).
    assert final == [Phase.FAILED] * BURST, "\n".join(errors)
    # ... and no analysis is left queued or running in the cluster.
    statuses: dict[str, int] = {}
    for port in redis_cluster.masters():
        node = redis_cluster.client(port)
        for key in node.scan_iter("ra:actions:{*}analysis:*"):
            status = node.hget(key, "status").decode()
            statuses[status] = statuses.get(status, 0) + 1
    assert set(statuses) <= {"done"}, statuses

    # 0 duplicates: one event per rollout, one message per event and target, one traffic
    # action per event, however the fail-over and any redelivery fell.
    wait_for(lambda: len(receivers.accepted("generic")) >= BURST, 30, "every message")
    time.sleep(2)  # any late duplicate would arrive by now
    for service in ("slack", "dingtalk", "feishu", "generic"):
        # Only this burst's (a message of the previous test may still arrive after the reset).
        ours = [m for m in receivers.accepted(service) if "burst-" in json.dumps(m.body)]
        assert len(ours) == BURST, service
    generic = [m.body for m in receivers.accepted("generic") if "burst-" in json.dumps(m.body)]
    assert sorted(m["rollout"] for m in generic) == sorted(rollouts)
    with httpx.Client(base_url=stack.url, headers=AUTH, timeout=10) as client:
        for message in generic:
            stored = client.get(f"/v1/analyses/{message['analysis_id']}").json()
            assert len(stored["actions"]) == 1, stored["actions"]


def test_a_dead_letter_is_taken_and_put_back_on_a_cluster(redis_cluster):
    """Retrying a dead letter moves it between the list and the retrying hash in one step:
    both keys must share a slot, or the cluster refuses the script and the transaction."""
    client = sync_client(redis_cluster.url, cluster=True)
    letters = DeadLetters(client, key=f"ra:cluster-letters-{time.time_ns()}:dead-letters")
    failed = DeliveryResult("audit", "failed", 3, 500, "server error")
    note = Notification(analysis_id="b" * 32, service="svc", namespace="ns", rollout="r",
                        revision="1", verdict="fail")  # fmt: skip
    entry_id = letters.push(failed, note)
    taken = letters.take(entry_id)
    assert taken is not None and letters.list() == []
    letters.restore(taken, failed)  # its retry failed again
    assert [(e["id"], e["retries"]) for e in letters.list()] == [(entry_id, 1)]
    assert letters.take(entry_id) is not None
    letters.release(entry_id)  # delivered this time
    assert letters.list() == [] and letters.take(entry_id) is None
