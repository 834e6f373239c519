"""Acting on verdicts through the Gateway API router, end to end like Istio's
(test_actions_e2e.py): Argo's call → verdict → HTTPRoute weights moved once → chat.

Real webhook, Redis and Celery workers; the Kubernetes API is the emulator (it validates every
stored HTTPRoute against the Gateway API CRD schema); chat services are local receivers.
"""

from __future__ import annotations

import time

import pytest

from tests.support.actions_world import HTTP_ROUTE, NS, argo_call, body, start_actions_world
from tests.support.argo import Phase
from tests.support.k8s_emulator import RbacRule
from tests.support.procs import wait_for
from worker.task_names import ACT_TASK


@pytest.fixture(scope="module")
def world(stack_factory, prometheus, tmp_path_factory):
    built = start_actions_world(
        stack_factory,
        prometheus.url,
        tmp_path_factory.mktemp("gateway"),
        "gateway",
        router="gateway-api",
    )
    yield built
    built.close()


def good(revision: str) -> dict:
    return body(revision) | {"service": "good"}  # a passing canary of the same rollout


def redeliver_act(world, event_id: str) -> None:
    for _ in range(2):  # the act task redelivered to two workers
        world.celery.send_task(ACT_TASK, args=[event_id], queue="ra-gateway")
    time.sleep(2)


def test_fail_rolls_the_http_route_back_to_stable_once(world):
    stack, emulator, receivers, _ = world.parts
    world.reset()

    assert argo_call(stack, body("1"))[0] == Phase.FAILED

    wait_for(lambda: world.weights() == {"stable": 1000, "canary": 0}, 10, "the rollback")
    wait_for(lambda: receivers.accepted("generic"), 10, "the message")
    rules = world.routing_object()["spec"]["rules"]
    assert rules[1] == HTTP_ROUTE["spec"]["rules"][1]  # the other rule is untouched
    assert rules[0]["timeouts"] == HTTP_ROUTE["spec"]["rules"][0]["timeouts"]
    action = receivers.accepted("generic")[0].body["actions"][0]
    assert (action["type"], action["status"], action["target"]) == (
        "traffic.rollback", "applied", f"{NS}/errors",
    )  # fmt: skip
    analysis_id = receivers.accepted("generic")[0].body["analysis_id"]
    with stack.client() as client:
        stored = client.get(f"/v1/analyses/{analysis_id}").json()["actions"][0]
    assert stored["from_weights"]["primary"] == {"canary": 300, "stable": 700}
    assert stored["to_weights"]["primary"] == {"canary": 0, "stable": 1000}

    time.sleep(1.2)  # past the reuse window: Argo's next poll is a new analysis, same verdict
    assert argo_call(stack, body("1"))[0] == Phase.FAILED
    redeliver_act(world, f"{NS}/errors@1#1")
    assert len(emulator.requests_for("patch")) == 1
    assert len(receivers.accepted("generic")) == 1


def test_pass_steps_the_canary_share_up_once_per_event_to_the_cap(world):
    stack, emulator, receivers, _ = world.parts
    world.reset()

    assert argo_call(stack, good("2"))[0] == Phase.SUCCESSFUL
    wait_for(lambda: world.weights() == {"stable": 600, "canary": 400}, 10, "30 % → 40 %")
    time.sleep(1.2)
    assert argo_call(stack, good("2"))[0] == Phase.SUCCESSFUL  # same verdict: no new event
    redeliver_act(world, f"{NS}/errors@2#1")
    assert world.weights() == {"stable": 600, "canary": 400}
    assert len(emulator.requests_for("patch")) == 1

    # The next steps of the rollout (new revisions) step again, up to max_weight 50 %.
    assert argo_call(stack, good("3"))[0] == Phase.SUCCESSFUL
    wait_for(lambda: world.weights() == {"stable": 500, "canary": 500}, 10, "40 % → 50 %")
    assert argo_call(stack, good("4"))[0] == Phase.SUCCESSFUL
    wait_for(lambda: len(receivers.accepted("generic")) == 3, 10, "three messages")
    last = receivers.accepted("generic")[2].body["actions"][0]
    assert (last["type"], last["status"]) == ("traffic.step", "unchanged")
    assert len(emulator.requests_for("patch")) == 2
    assert sum(world.weights().values()) == 1000  # the rule's sum is kept throughout


def test_rbac_without_httproutes_is_reported_not_raised(world):
    stack, _emulator, receivers, _ = world.parts
    world.reset()
    # Rights for the Istio router only.
    world.emulator.rbac = [RbacRule(verbs=("get", "patch"), resources=("virtualservices",))]
    try:
        assert argo_call(stack, body("5"))[0] == Phase.FAILED
        wait_for(lambda: receivers.accepted("generic"), 10, "message")
        action = receivers.accepted("generic")[0].body["actions"][0]
        assert action["status"] == "failed"
        assert "may not get httproutes" in action["reason"]
        assert world.weights() == {"stable": 700, "canary": 300}
    finally:
        world.emulator.rbac = None


def test_a_request_may_name_its_http_route_and_ask_for_a_dry_run(world):
    stack, emulator, receivers, _ = world.parts
    world.reset()
    dry = body("6") | {"traffic": {"http_route": "errors", "dry_run": True}}
    with stack.client() as client:
        assert client.post("/v1/analyze", json=dry).json()["verdict"] == "fail"
        wrong = client.post(
            "/v1/analyze", json=body("7") | {"traffic": {"virtual_service": "errors"}}
        )
    assert wrong.status_code == 422
    assert wrong.json()["field"] == "traffic.virtual_service"
    assert "gateway-api" in wrong.json()["message"]
    wait_for(lambda: receivers.accepted("generic"), 10, "the message")
    action = receivers.accepted("generic")[0].body["actions"][0]
    assert action["status"] == "dry_run"
    assert action["to_weights"] == {"primary canary": 0, "primary stable": 1000}
    assert emulator.requests_for("patch") == []
