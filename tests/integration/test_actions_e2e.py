"""Acting on verdicts, end to end: Argo's call → fail → VirtualService back to stable → chat.

Real webhook, Redis and Celery workers; the Kubernetes API is the emulator (reached by the real
`kubernetes` client through a kubeconfig); chat services are local receivers that check payloads
and signatures.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.integration.conftest import AUTH
from tests.support.actions_world import NS, VIRTUAL_SERVICE, argo_call, body, start_actions_world
from tests.support.argo import Phase
from tests.support.chat_receivers import Answer
from tests.support.k8s_emulator import K8sEmulator, RbacRule
from tests.support.procs import wait_for
from worker.task_names import ACT_TASK, NOTIFY_TASK


@pytest.fixture(scope="module")
def world(stack_factory, prometheus, tmp_path_factory):
    built = start_actions_world(
        stack_factory, prometheus.url, tmp_path_factory.mktemp("actions"), "actions"
    )
    yield built
    built.close()


def patches(emulator: K8sEmulator) -> list:
    return emulator.requests_for("patch")


def test_fail_rolls_back_traffic_and_tells_every_chat_once(world, record_property):
    stack, emulator, receivers, celery = world.parts
    world.reset()
    phase, began = argo_call(stack, body("1"))
    verdict_at = time.monotonic()
    assert phase == Phase.FAILED

    wait_for(lambda: world.weights() == {"stable": 100, "canary": 0}, 10, "the rollback")
    patched_at = time.monotonic()
    wait_for(
        lambda: all(receivers.accepted(p) for p in ("slack", "dingtalk", "feishu", "generic")),
        10,
        "messages",
    )
    messaged_at = time.monotonic()
    record_property(
        "summary",
        f"[actions] verdict answered {verdict_at - began:.3f}s after the call; "
        f"VirtualService patched +{patched_at - verdict_at:.3f}s; "
        f"all 4 messages received +{messaged_at - verdict_at:.3f}s",
    )

    # Untouched: the other route and every field we do not own.
    vs = emulator.get_object("networking.istio.io/v1", "virtualservices", NS, "errors")
    assert vs["spec"]["http"][1] == VIRTUAL_SERVICE["spec"]["http"][1]
    assert vs["spec"]["http"][0]["retries"] == VIRTUAL_SERVICE["spec"]["http"][0]["retries"]
    # What the messages say.
    slack = json.dumps(receivers.accepted("slack")[0].body)
    assert "errors" in slack and "fail" in slack.lower()
    assert "primary" in slack  # the traffic action, with its route
    assert "grafana.example.com" in slack
    generic = receivers.accepted("generic")[0].body
    assert generic["verdict"] == "fail" and generic["actions"][0]["status"] == "applied"
    # The stored analysis shows the action.
    analysis_id = generic["analysis_id"]
    with stack.client() as client:
        stored = client.get(f"/v1/analyses/{analysis_id}").json()
    action = stored["actions"][0]
    assert action["type"] == "traffic.rollback" and action["status"] == "applied"
    assert action["from_weights"]["primary"] == {"canary": 30, "stable": 70}
    assert action["to_weights"]["primary"] == {"canary": 0, "stable": 100}

    # The same verdict again — Argo's next poll after the reuse window, and the act and notify
    # tasks redelivered to two workers — changes nothing and says nothing twice.
    time.sleep(1.2)
    assert argo_call(stack, body("1"))[0] == Phase.FAILED
    event_id = f"{NS}/errors@1#1"
    for _ in range(2):
        celery.send_task(ACT_TASK, args=[event_id], queue="ra-actions")
        celery.send_task(NOTIFY_TASK, args=[event_id, "team-slack"], queue="ra-actions")
    time.sleep(3)
    assert len(patches(emulator)) == 1
    for path in ("slack", "dingtalk", "feishu", "generic"):
        assert len(receivers.accepted(path)) == 1, path


def test_a_verdict_change_is_a_new_event(world):
    stack, _emulator, receivers, _ = world.parts
    world.reset()
    assert argo_call(stack, body("2"))[0] == Phase.FAILED
    wait_for(lambda: len(receivers.accepted("generic")) == 1, 10, "first message")
    good = body("2") | {"service": "good"}
    # A different service is a different rollout key only if the rollout differs: same rollout
    # and revision, new verdict → one more event.
    assert argo_call(stack, good)[0] == Phase.SUCCESSFUL
    wait_for(lambda: len(receivers.accepted("generic")) == 2, 10, "second message")
    assert [m.body["verdict"] for m in receivers.accepted("generic")] == ["fail", "pass"]
    assert receivers.accepted("generic")[1].body["previous_verdict"] == "fail"


def test_retried_delivery_then_dead_letter_never_touch_the_verdict(world):
    stack, _emulator, receivers, _ = world.parts
    world.reset()
    receivers.script("slack", Answer.status_only(500), Answer.status_only(500))
    receivers.always("generic", Answer.status_only(500))
    assert argo_call(stack, body("3"))[0] == Phase.FAILED
    wait_for(lambda: len(receivers.accepted("slack")) == 1, 20, "slack after two 500s")
    assert receivers.hits("slack") == 3

    def dead_lettered() -> bool:
        with stack.client() as client:
            letters = client.get("/v1/dead-letters").json()["dead_letters"]
        return any(
            entry["target"] == "audit" and entry["notification"]["revision"] == "3"
            for entry in letters
        )

    wait_for(dead_lettered, 60, "the audit delivery to be dead-lettered")
    assert receivers.accepted("generic") == []
    with stack.client() as client:
        letters = client.get("/v1/dead-letters").json()["dead_letters"]
    assert receivers.url("generic") not in json.dumps(letters)


def test_rbac_denial_is_reported_not_raised(world):
    stack, emulator, receivers, _ = world.parts
    world.reset()
    emulator.rbac = [RbacRule(verbs=("get",), resources=("virtualservices",))]
    try:
        assert argo_call(stack, body("4"))[0] == Phase.FAILED
        wait_for(lambda: len(receivers.accepted("generic")) == 1, 10, "message")
        action = receivers.accepted("generic")[0].body["actions"][0]
        assert action["status"] == "failed"
        assert "forbidden" in action["reason"].lower()
        assert world.weights() == {"stable": 70, "canary": 30}
    finally:
        emulator.rbac = None


def test_argo_rollouts_events_reach_chat_once(world):
    stack, _emulator, receivers, _ = world.parts
    world.reset()
    event = {"event": "rollout-aborted", "rollout": "errors", "namespace": NS, "revision": "9",
             "phase": "Degraded"}  # fmt: skip
    with stack.client() as client:
        for _ in range(3):
            assert client.post("/v1/events/argo-rollouts", json=event).status_code == 202
        assert (
            client.post("/v1/events/argo-rollouts", json=event | {"rollout": 'x"}'}).status_code
            == 422
        )
    assert httpx.post(f"{stack.url}/v1/events/argo-rollouts", json=event).status_code == 401
    wait_for(lambda: len(receivers.accepted("slack")) >= 1, 10, "the aborted message")
    time.sleep(1.5)
    assert len(receivers.accepted("slack")) == 1
    assert "aborted" in json.dumps(receivers.accepted("slack")[0].body).lower()
    assert AUTH["Authorization"] not in json.dumps(receivers.accepted("generic")[0].body)


def test_a_request_may_ask_for_a_dry_run_where_the_policy_allows(world):
    stack, emulator, receivers, _ = world.parts
    world.reset()
    dry = body("13") | {"traffic": {"routes": ["primary"], "dry_run": True}}
    with stack.client() as client:
        assert client.post("/v1/analyze", json=dry).json()["verdict"] == "fail"
    wait_for(lambda: receivers.accepted("generic"), 10, "the message")
    action = receivers.accepted("generic")[0].body["actions"][0]
    assert action["status"] == "dry_run"
    assert emulator.requests_for("patch") == []
    assert world.weights() == {"stable": 70, "canary": 30}
