"""Follow-up steps belong to the worker running them: a redone step-up lands on the weight its
event chose, and a worker whose step lease lapsed records nothing over the one that took over.

The follow-up runs in-process against a real redis-server and, through the real `kubernetes`
client, the API emulator holding the `errors` VirtualService (canary 30, stable 70).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from analysis.policy import PolicySet
from tests.support.actions_world import NS, VIRTUAL_SERVICE
from tests.support.k8s_emulator import K8sEmulator, write_kubeconfig
from worker.followup import Followup
from worker.traffic.istio import api_client_from_settings

pytestmark = pytest.mark.integration

VS = ("networking.istio.io/v1", "virtualservices", NS, "errors")
EVENT = "shop/errors@5#1"
POLICIES = PolicySet.from_yaml(
    """
policies:
  default:
    actions:
      traffic:
        virtual_service: "{service}"
        routes: [primary]
        canary: {host: "{service}", subset: canary}
        stable: {host: "{service}", subset: stable}
        on_pass: {step: 10, max_weight: 50}
"""
)


@pytest.fixture
def followup(redis_flushed, tmp_path: Path) -> Iterator[Followup]:
    with K8sEmulator() as emulator:
        emulator.create_object(*VS[:3], copy.deepcopy(VIRTUAL_SERVICE))
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator.url, emulator.token)
        api = api_client_from_settings(str(kubeconfig), in_cluster=False, context=None)
        client = redis.Redis.from_url(redis_flushed.url)
        built = Followup(
            redis=client,
            prefix="t:",
            policies=POLICIES,
            targets={},
            enqueue=lambda task, args: None,
            kube=lambda: api,
        )
        built.emulator = emulator  # type: ignore[attr-defined]
        # A live pass of revision 5, and its event (as on_verdict stores them).
        result = {
            "analysis_id": "a1",
            "verdict": "pass",
            "live": True,
            "service": "errors",
            "namespace": NS,
            "rollout": "errors",
            "revision": "5",
            "policy": "default",
        }
        client.hset(built.keys.record("a1"), "result", json.dumps(result))
        event = {"event_id": EVENT, "kind": "verdict", "analysis_id": "a1", "verdict": "pass"}
        client.set(built.keys.event(EVENT), json.dumps(event))
        yield built
        client.close()
        api.close()


def canary_weight(followup: Followup) -> int:
    vs = followup.emulator.get_object(*VS)  # type: ignore[attr-defined]
    route = vs["spec"]["http"][0]["route"]
    return next(r["weight"] for r in route if r["destination"]["subset"] == "canary")


def test_a_redone_step_up_lands_on_the_weight_its_event_chose(followup):
    first = followup.act(EVENT)
    assert [(a["type"], a["status"]) for a in first] == [("traffic.step", "applied")]
    assert canary_weight(followup) == 40
    followup.redis.delete(f"t:step:{EVENT}:traffic")  # as if the done-mark never came
    followup.redis.delete("t:actions:a1")
    redo = followup.act(EVENT)
    assert canary_weight(followup) == 40  # not 50: the step is not taken twice
    assert redo[0]["status"] == "unchanged"
    assert redo[0]["to_weights"]["primary"] == {"canary": 40, "stable": 60}
    assert len(followup.emulator.requests_for("patch")) == 1


def test_a_step_up_redone_after_someone_moved_the_weights_still_aims_at_the_events_weight(
    followup,
):
    followup.act(EVENT)
    followup.redis.delete(f"t:step:{EVENT}:traffic")
    # Someone set 35 meanwhile; the redo of *this* event's step still means 40, not 45.

    def set_35(vs: dict) -> None:
        vs["spec"]["http"][0]["route"][0]["weight"] = 65
        vs["spec"]["http"][0]["route"][1]["weight"] = 35

    followup.emulator.modify_object(*VS, set_35)
    followup.act(EVENT)
    assert canary_weight(followup) == 40


def test_a_worker_whose_step_lease_lapsed_records_nothing(followup):
    token = followup._begin(EVENT, "traffic")
    assert token
    followup.redis.delete(f"t:step:{EVENT}:traffic")  # the lease lapsed
    other = followup._begin(EVENT, "traffic")
    assert other and other != token
    records = ("t:actions:a1", [{"type": "traffic.step", "status": "applied"}])
    assert followup._done(EVENT, "traffic", token, {"actions": []}, records) is False
    assert followup.redis.get(f"t:step:{EVENT}:traffic").decode() == other
    assert followup.redis.lrange("t:actions:a1", 0, -1) == []
    assert followup._done(EVENT, "traffic", other, {"actions": []}, records) is True
    assert len(followup.redis.lrange("t:actions:a1", 0, -1)) == 1
