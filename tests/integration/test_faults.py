"""Faults injected into real components; each test asserts what Argo and the team would see.

Worker SIGKILLed mid-analysis, all workers gone, Redis restarted or stalling, Prometheus down /
slow / erring / partial, Kubernetes API conflicts and errors, chat receivers slow, and load while
a worker dies.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import httpx
import pytest
import redis

from tests.integration.conftest import AUTH, TOKEN, start_stack
from tests.support.actions_world import body, start_actions_world
from tests.support.argo import Metric, Phase, WebProvider, run_metric
from tests.support.chat_receivers import Answer
from tests.support.procs import RedisServer, free_port, wait_for
from tests.support.proxy import FaultyProxy
from tests.support.redis_proxy import LossyRedisProxy, command_name

FAST = {"ROLLOUT_ANALYZER_HEARTBEAT_SECONDS": "1"}


def argo_metric(url: str, payload: dict) -> Metric:
    """One measurement as Argo's web provider takes it, with Argo's error retries (10 s)."""
    web = WebProvider(
        url=f"{url}/v1/analyze",
        method="POST",
        headers=[("Authorization", f"Bearer {TOKEN}")],
        json_body=payload,
        json_path="{$.verdict}",
        timeout_seconds=10,
    )
    return Metric(
        name="verdict",
        web=web,
        success_condition='result == "pass"',
        failure_condition='result == "fail"',
    )


@contextlib.contextmanager
def behind_a_proxy(
    redis_server: RedisServer, prometheus: Any, tmp_path: Any, name: str, wait_seconds: str
) -> Iterator[tuple[LossyRedisProxy, Any]]:
    """A stack of one worker whose Redis is behind a proxy that holds replies, loses none."""
    with LossyRedisProxy(redis_server.port) as proxy:
        proxy.enabled = False
        stack = start_stack(
            proxy.url, tmp_path, name, prometheus_url=prometheus.url, workers=1,
            settings={**FAST, "ROLLOUT_ANALYZER_WAIT_SECONDS": wait_seconds},
        )  # fmt: skip
        try:
            yield proxy, stack
        finally:
            stack.stop()


def lease_holder(stack, analysis_id_prefix: str = "") -> str | None:
    client = redis.Redis.from_url(stack.env["ROLLOUT_ANALYZER_REDIS_URL"])
    prefix = stack.env["ROLLOUT_ANALYZER_KEY_PREFIX"]
    for key in client.scan_iter(f"{prefix}{{*}}lease:{analysis_id_prefix}*"):
        holder = cast(bytes | None, client.get(key))  # `client` decodes no responses
        if holder:
            return holder.decode()
    return None


def test_worker_killed_mid_analysis_argo_still_gets_the_verdict_and_one_action(
    stack_factory, prometheus, tmp_path_factory
):
    with FaultyProxy(prometheus.url) as proxy:
        world = start_actions_world(
            stack_factory, proxy.url, tmp_path_factory.mktemp("kill"), "faults-kill",
            settings={"ROLLOUT_ANALYZER_WAIT_SECONDS": "3"},
        )  # fmt: skip
        try:
            proxy.faults.delay_seconds = 8.0  # the first analysis hangs in its PromQL call
            killed: list[str] = []

            def kill_the_holder() -> None:
                wait_for(lambda: lease_holder(world.stack) is not None, 10, "an analysis to start")
                holder = lease_holder(world.stack)
                assert holder is not None
                pid = int(holder.rsplit(":", 1)[1])
                victim = next(w for w in world.stack.workers if w.pid == pid)
                victim.kill()  # SIGKILL, the whole worker
                killed.append(victim.name)
                proxy.faults.delay_seconds = 0.0

            killer = threading.Thread(target=kill_the_holder)
            killer.start()
            began = time.monotonic()
            with httpx.Client() as client:
                run = run_metric(argo_metric(world.stack.url, body("7")), client)
            elapsed = time.monotonic() - began
            killer.join()
            assert killed, "no worker was killed"
            assert run.phase == Phase.FAILED, run.message
            assert next(m.phase for m in run.measurements) == Phase.ERROR
            # Argo gives up at its 5th consecutive error, ~40 s after the first call.
            assert elapsed < 40, elapsed
            wait_for(lambda: len(world.receivers.accepted("generic")) == 1, 10, "the message")
            time.sleep(2)
            assert len(world.emulator.requests_for("patch")) == 1
            for path in ("slack", "dingtalk", "feishu", "generic"):
                assert len(world.receivers.accepted(path)) == 1, path
            assert world.weights() == {"stable": 100, "canary": 0}
        finally:
            world.close()


def test_all_workers_down_answers_503_then_the_queued_analysis_completes(stack_factory, prometheus):
    stack = stack_factory(
        "faults-noworkers", prometheus_url=prometheus.url, workers=1,
        settings={**FAST, "ROLLOUT_ANALYZER_WAIT_SECONDS": "2"},
    )  # fmt: skip
    stack.workers[0].stop()
    wait_for(lambda: httpx.get(f"{stack.url}/readyz").status_code == 503, 10, "readyz to fail")
    payload = {"service": "errors", "namespace": "shop", "canary": "6d4f8b7c9a",
               "baseline": "5c8d7e6f4b"}  # fmt: skip
    with stack.client() as client:
        began = time.monotonic()
        first = client.post("/v1/analyze", json=payload)
        assert first.status_code == 503
        assert time.monotonic() - began < 3.0
        stack.add_worker("back")
        wait_for(lambda: httpx.get(f"{stack.url}/readyz").status_code == 200, 20, "readyz")
        second = client.post("/v1/analyze", json=payload)
    assert second.status_code == 200
    assert second.json()["analysis_id"] == first.json()["analysis_id"]
    assert second.json()["verdict"] == "fail"


GOOD = {"service": "good", "namespace": "shop", "canary": "6d4f8b7c9a", "baseline": "5c8d7e6f4b"}


def test_a_redis_that_stalls_as_the_wait_ends_does_not_hold_the_answer(
    redis_server, prometheus, tmp_path
):
    """No worker finishes the analysis, and Redis holds the webhook's last read of its record
    2 s (a proxy in front of it): the answer (503, not finished) still comes half a second after
    `wait_seconds`, inside a caller's timeout of 1.5 s more, not when Redis answers (2 s more)."""
    stall = threading.Event()  # never set: a held reply waits the proxy's 2 s
    with behind_a_proxy(redis_server, prometheus, tmp_path, "faults-stall", "2") as (proxy, stack):
        stack.workers[0].stop()
        began = time.monotonic()
        reads: list[float] = []  # when each read of a record reached Redis

        def hold(batch: list[bytes]) -> threading.Event | None:
            if any(command_name(c) == b"HGETALL" for c in batch):
                reads.append(time.monotonic() - began)
                return stall
            return None

        proxy.hold = hold
        with stack.client(timeout=3.5) as client:  # Argo's timeoutSeconds: wait_seconds + 1.5
            answer = client.post("/v1/analyze", json=GOOD)
        elapsed = time.monotonic() - began
    assert (answer.status_code, answer.json()["field"]) == (503, "analysis"), answer.text
    assert len(reads) == 1 and reads[0] >= 2.0  # the one read, at the deadline, was held
    assert elapsed < 3.5


def test_a_claim_that_outlasts_the_wait_is_answered_at_the_deadline_and_still_runs(
    redis_server, prometheus, tmp_path
):
    """Redis holds the reply to the claim (the script that also enqueues the task) 1.5 s, past
    `wait_seconds` (1 s): the answer (503) comes at the deadline, not when Redis answers; the
    claim is not cut short, so its analysis runs, and the next call gets it: one analysis."""
    held: list[float] = []
    late_claim = "faults-late-claim"
    with behind_a_proxy(redis_server, prometheus, tmp_path, late_claim, "1") as (proxy, stack):
        began = time.monotonic()

        def hold(batch: list[bytes]) -> threading.Event | None:
            claim = any(command_name(c) == b"EVALSHA" and b"6d4f8b7c9a" in c for c in batch)
            if not claim or held:
                return None
            held.append(time.monotonic() - began)
            released = threading.Event()
            threading.Timer(1.5, released.set).start()
            return released

        proxy.hold = hold
        with stack.client(timeout=5) as client:
            late = client.post("/v1/analyze", json=GOOD)
            elapsed = time.monotonic() - began
            done: list[httpx.Response] = []

            def answered() -> bool:
                done.append(client.post("/v1/analyze", json=GOOD))
                return done[-1].status_code == 200

            wait_for(answered, 20, "the held claim's analysis", interval=0.5)
            scraped = client.get("/metrics").text
        kv = redis.Redis.from_url(redis_server.url)
        prefix = stack.env["ROLLOUT_ANALYZER_KEY_PREFIX"]
        records = [k.decode() for k in kv.scan_iter(f"{prefix}{{*}}analysis:*")]
    assert (late.status_code, late.json()["field"]) == (503, "store"), late.text
    assert held and held[0] < 0.5  # it was the claim that was held
    assert elapsed < 1.35  # the deadline (1 s), not the held reply (1.5 s)
    assert len(records) == 1, records  # one analysis: the later calls joined the held claim
    assert records[0].endswith(done[-1].headers["X-Analysis-Id"])
    assert "rollout_analyzer_late_claims_total 1.0" in scraped
    assert "rollout_analyzer_store_errors_total 0.0" in scraped  # Redis was never unreachable


def test_redis_restart_fast_503s_then_recovery_and_no_task_dropped(prometheus, tmp_path):
    redis_server = RedisServer(work_dir=tmp_path / "redis", appendonly=True).start()
    stack = start_stack(
        redis_server.url, tmp_path, "faults-redis", prometheus_url=prometheus.url, workers=1,
        settings={**FAST, "ROLLOUT_ANALYZER_WAIT_SECONDS": "2"},
    )  # fmt: skip
    payload = {"service": "good", "namespace": "shop", "canary": "6d4f8b7c9a",
               "baseline": "5c8d7e6f4b"}  # fmt: skip
    try:
        with stack.client() as client:
            assert client.post("/v1/analyze", json=payload).status_code == 200
            redis_server.stop()
            # (An exact repeat of the call just answered would still get that answer from the
            # webhook's memory within its reuse window; a new question needs Redis.)
            for window in ("6m", "7m", "8m"):
                began = time.monotonic()
                answer = client.post("/v1/analyze", json=payload | {"window": window})
                assert answer.status_code == 503, answer.text
                assert time.monotonic() - began < 2.0
            assert client.get("/readyz").status_code == 503
            redis_server.start()

            def answered() -> bool:
                return client.post("/v1/analyze", json=payload).status_code == 200

            wait_for(answered, 30, "the service to recover without a restart", interval=0.5)

            # A task queued while no worker runs survives a Redis restart (AOF).
            stack.workers[0].stop()
            queued = client.post("/v1/analyze", json=payload | {"service": "errors"})
            assert queued.status_code == 503
            time.sleep(1.5)  # appendfsync everysec
            redis_server.stop()
            redis_server.start()
            stack.add_worker("after-restart")

            def done() -> bool:
                answer = client.post("/v1/analyze", json=payload | {"service": "errors"})
                return answer.status_code == 200 and answer.json()["verdict"] == "fail"

            wait_for(done, 30, "the queued analysis", interval=0.5)
            final = client.post("/v1/analyze", json=payload | {"service": "errors"}).json()
            assert final["analysis_id"] == queued.json()["analysis_id"]
    finally:
        stack.stop()
        redis_server.kill()


def _drop(selector: str | None = None, buckets: bool = False):
    def transform(raw: bytes) -> bytes:
        data = json.loads(raw)
        kept = [
            s for s in data["data"]["result"]
            if not (selector and s["metric"].get("rollouts_pod_template_hash") == selector)
            and not (buckets and "le" in s["metric"])
        ]  # fmt: skip
        data["data"]["result"] = kept
        return json.dumps(data).encode()

    return transform


def test_prometheus_faults_never_pass(stack_factory, prometheus):
    with FaultyProxy(prometheus.url) as proxy:
        stack = stack_factory("faults-prom", prometheus_url=proxy.url, workers=1,
                              settings={"ROLLOUT_ANALYZER_WAIT_SECONDS": "4"})  # fmt: skip
        good = {"service": "good", "namespace": "shop", "canary": "6d4f8b7c9a",
                "baseline": "5c8d7e6f4b"}  # fmt: skip
        with stack.client() as client:

            def ask(**changes):
                # A look 90 s back (older than the live skew): each ask is its own fixed window
                # and asks Prometheus; a live poll a second after another would add no time.
                return client.post(
                    "/v1/analyze", json=good | {"end": str(time.time() - 90)} | changes
                )

            assert ask().json()["verdict"] == "pass"
            proxy.faults.status = 500
            began = time.monotonic()
            answer = ask()
            assert answer.status_code == 502 and "analysis query" in answer.json()["message"]
            assert time.monotonic() - began < 4.0  # retries stay inside the wait budget
            proxy.faults.status = None
            proxy.faults.transform = _drop(selector="6d4f8b7c9a")
            dropped = ask()
            assert dropped.json()["verdict"] == "inconclusive"
            proxy.faults.transform = _drop(buckets=True)
            no_latency = ask()
            assert no_latency.json()["verdict"] == "inconclusive"
            assert "latency observations" in no_latency.json()["reasons"][0]
            proxy.faults.transform = None
    down = stack_factory("faults-prom-down", prometheus_url=f"http://127.0.0.1:{free_port()}",
                         workers=1)  # fmt: skip
    with down.client() as client:
        answer = client.post("/v1/analyze", json=good)
    assert answer.status_code == 502
    assert "ConnectionError" in answer.json()["message"]


@pytest.mark.parametrize(
    ("status", "word"),
    [(409, "409"), (500, "500"), (403, "forbidden"), ("timeout", "time")],
)
def test_kubernetes_api_faults_give_a_failed_action_and_the_verdict(
    stack_factory, prometheus, tmp_path_factory, status, word
):
    world = start_actions_world(
        stack_factory, prometheus.url, tmp_path_factory.mktemp("k8s"), f"faults-k8s-{status}",
        settings={"ROLLOUT_ANALYZER_KUBE_TIMEOUT_SECONDS": "0.5"},
    )  # fmt: skip
    try:
        if status == "timeout":  # the API server stops answering in time
            world.emulator.delay_next("get", "*", seconds=1.0, times=None)
            world.emulator.delay_next("patch", "*", seconds=1.0, times=None)
        else:
            world.emulator.fail_next("patch", "*", status=status, times=None)
        with world.stack.client() as client:
            answer = client.post("/v1/analyze", json=body("11"))
        assert answer.json()["verdict"] == "fail"
        wait_for(lambda: world.receivers.accepted("generic"), 20, "the message")
        action = world.receivers.accepted("generic")[0].body["actions"][0]
        assert action["status"] == "failed"
        assert word in action["reason"].lower()
        assert len(world.emulator.requests_for("patch")) <= 5  # bounded retries
        assert world.weights() == {"stable": 70, "canary": 30}
    finally:
        world.close()


def test_slow_chat_receivers_are_retried_then_dead_lettered(
    stack_factory, prometheus, tmp_path_factory
):
    world = start_actions_world(
        stack_factory, prometheus.url, tmp_path_factory.mktemp("slowchat"), "faults-chat",
        settings={"ROLLOUT_ANALYZER_NOTIFY_TIMEOUT_SECONDS": "0.5"},
    )  # fmt: skip
    try:
        world.receivers.always("wecom", Answer.slow(2.0))
        world.receivers.always("generic", Answer.slow(2.0))
        with world.stack.client() as client:
            began = time.monotonic()
            answer = client.post("/v1/analyze", json=body("12"))
            assert answer.json()["verdict"] == "fail"
            assert time.monotonic() - began < 3
            wait_for(lambda: world.weights() == {"stable": 100, "canary": 0}, 10, "rollback")
            wait_for(lambda: world.receivers.accepted("slack"), 10, "slack")

            def dead() -> bool:
                letters = client.get("/v1/dead-letters").json()["dead_letters"]
                return any(entry["target"] == "audit" for entry in letters)

            wait_for(dead, 60, "the audit delivery to be dead-lettered", interval=0.5)
        assert world.receivers.hits("generic") >= 2  # retried before giving up
    finally:
        world.close()


def test_a_hung_chat_service_never_delays_a_rollback(stack_factory, prometheus, tmp_path_factory):
    world = start_actions_world(
        stack_factory, prometheus.url, tmp_path_factory.mktemp("hungchat"), "faults-hung-chat",
        settings={"ROLLOUT_ANALYZER_NOTIFY_TIMEOUT_SECONDS": "6"},
    )  # fmt: skip
    kinds = ("slack", "dingtalk", "feishu", "generic")
    try:
        for kind in kinds:
            world.receivers.always(kind, Answer.slow(4.0))
        with world.stack.client() as client:
            # A first event's four messages: two hang, one in each worker's only follow-up
            # slot (two workers, concurrency 2), two wait on the follow-up queue.
            good = body("31") | {"service": "good", "rollout": "good"}
            assert client.post("/v1/analyze", json=good).json()["verdict"] == "pass"
            wait_for(lambda: sum(world.receivers.hits(k) for k in kinds) == 2, 10, "two hangs")
            time.sleep(0.3)
            assert world.weights() == {"stable": 70, "canary": 30}

            # The fail's traffic action is read past the waiting messages and runs in the
            # slot kept for analyses: the rollback does not wait for chat.
            assert client.post("/v1/analyze", json=body("32")).json()["verdict"] == "fail"
            began = time.monotonic()
            wait_for(lambda: world.weights() == {"stable": 100, "canary": 0}, 10, "rollback")
            assert time.monotonic() - began < 2, "the rollback waited behind chat deliveries"
            assert sum(world.receivers.hits(k) for k in kinds) == 2  # chat: one slot a worker
        for kind in kinds:
            world.receivers.always(kind, None)
        wait_for(
            lambda: all(len(world.receivers.accepted(k)) == 2 for k in kinds), 30,
            "every message of both events",
        )  # fmt: skip
    finally:
        world.close()


def test_load_while_a_worker_dies_gets_verdicts_or_503_never_500(stack_factory, prometheus):
    stack = stack_factory("faults-load", prometheus_url=prometheus.url, workers=2,
                          settings={"ROLLOUT_ANALYZER_WAIT_SECONDS": "4",
                                    "ROLLOUT_ANALYZER_LEASE_SECONDS": "2"})  # fmt: skip
    expected = {"good": "pass", "errors": "fail", "latency": "fail", "low-traffic": "inconclusive"}
    now = time.time()

    def call(i: int) -> tuple[str, httpx.Response]:
        service = list(expected)[i % len(expected)]
        payload = {"service": service, "namespace": "shop", "canary": "6d4f8b7c9a",
                   "baseline": "5c8d7e6f4b", "end": str(now - 60 - i)}  # fmt: skip
        with httpx.Client(base_url=stack.url, headers=AUTH, timeout=15) as client:
            return service, client.post("/v1/analyze", json=payload)

    with concurrent.futures.ThreadPoolExecutor(200) as pool:
        futures = [pool.submit(call, i) for i in range(200)]
        time.sleep(0.3)
        stack.workers[0].kill()
        answers = [f.result() for f in futures]
    statuses = [a.status_code for _, a in answers]
    assert set(statuses) <= {200, 503}, statuses
    for service, answer in answers:
        if answer.status_code == 200:
            assert answer.json()["verdict"] == expected[service]
    assert statuses.count(200) > 0
