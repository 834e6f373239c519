"""`worker.traffic.gateway_api` through the real `kubernetes` client against the API emulator:
what is the Gateway API's own (Istio's rights do not cover it, a backendRef without a weight
weighs 1, other backends and the rule's sum are kept, the policy YAML, a pinned step redone).

Every stored object is validated by the emulator against the Gateway API CRD schema. The cases
both routers share (conflicts, 403, 404, dry run, cap...) are in test_traffic_routers.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from pydantic import TypeAdapter

from tests.support.k8s_emulator import K8sEmulator, RbacRule
from tests.support.traffic_routers import GATEWAY_API, NS, kube_client
from worker.traffic import rollback, shift_traffic, step_up
from worker.traffic.policy import GatewayApiTraffic, TrafficPolicy

V1 = GATEWAY_API.api_version
STABLE = GATEWAY_API.stable
target, stored, rule, weights = (
    GATEWAY_API.target,
    GATEWAY_API.stored,
    GATEWAY_API.route,
    GATEWAY_API.weights,
)


@pytest.fixture
def emulator() -> Iterator[K8sEmulator]:
    with GATEWAY_API.emulator() as running:
        yield running


@pytest.fixture
def api(emulator: K8sEmulator, tmp_path: Path) -> Iterator[client.ApiClient]:
    with kube_client(emulator, tmp_path) as api_client:
        yield api_client


def test_istio_rights_do_not_cover_httproutes(emulator: K8sEmulator, api: client.ApiClient) -> None:
    emulator.rbac = [
        RbacRule(verbs=("get", "patch"), resources=("virtualservices",), namespaces=(NS,))
    ]

    record = rollback(api, target())

    assert record.status == "failed" and "may not get httproutes" in (record.reason or "")


def test_default_weights_are_one_and_get_written_explicitly(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    def unweighted(route: dict[str, Any]) -> None:
        for ref in rule(route, "primary")["backendRefs"]:
            del ref["weight"]  # 1 each: a 50/50 split

    emulator.modify_object(V1, "httproutes", NS, "reviews", unweighted)

    record = rollback(api, target())

    assert record.from_weights == {"primary": {"canary": 1, "stable": 1}}
    assert record.to_weights == {"primary": {"canary": 0, "stable": 2}}
    assert ("add", "/spec/rules/1/backendRefs/1/weight", 0) in {
        (op["op"], op["path"], op.get("value")) for op in record.patch
    }
    assert weights(stored(emulator), "primary") == {"canary": 0, "stable": 2}


def test_other_backends_keep_their_weight_and_the_sum_is_kept(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    def add_legacy(route: dict[str, Any]) -> None:
        refs = rule(route, "primary")["backendRefs"]
        refs[0]["weight"] = 800
        refs.append({"name": "reviews-legacy", "port": 9080, "weight": 100})

    emulator.modify_object(V1, "httproutes", NS, "reviews", add_legacy)

    assert rollback(api, target()).to_weights == {"primary": {"canary": 0, "stable": 900}}
    full = shift_traffic(api, target(), 100, action_type="traffic.step")

    refs = rule(stored(emulator), "primary")["backendRefs"]
    assert full.to_weights == {"primary": {"canary": 900, "stable": 0}}  # capped by legacy's 100
    assert [ref["weight"] for ref in refs] == [0, 900, 100]


def test_gateway_api_policy_yaml_picks_the_router() -> None:
    parsed = TypeAdapter(TrafficPolicy).validate_python(
        yaml.safe_load(
            """
kind: gateway-api
http_route: "{service}"
routes: [primary]
canary: {name: "{service}-canary", port: 9080}
stable: {name: "{service}-stable", port: 9080}
on_pass: {step: 10, max_weight: 50}
"""
        )
    )
    assert isinstance(parsed, GatewayApiTraffic)
    built = parsed.target({"service": "reviews", "namespace": NS})
    assert built == target()
    with pytest.raises(ValueError, match="api_version"):
        target(api_version="gateway.networking.k8s.io/v1alpha2")
    with pytest.raises(ValueError, match="different backends"):
        target(canary=STABLE)
    with pytest.raises(ValueError, match="does not match any of the expected tags"):
        TypeAdapter(TrafficPolicy).validate_python({"kind": "linkerd"})


def test_a_redone_step_aims_at_the_pinned_share(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    """The worker pins a step's goals per event; a redo after a crash must not step again."""
    stored_goals: dict[str, int] = {}

    def pin(goals: dict[str, int]) -> dict[str, int]:
        for key, value in goals.items():
            stored_goals.setdefault(key, value)
        return dict(stored_goals)

    first = step_up(api, target(), step=25, max_weight=80, pin=pin)
    redo = step_up(api, target(), step=25, max_weight=80, pin=pin)

    assert stored_goals == {"primary": 35}  # percent of the rule's 1000
    assert first.to_weights == {"primary": {"canary": 350, "stable": 650}}
    assert redo.status == "unchanged"
    assert weights(stored(emulator), "primary") == {"canary": 350, "stable": 650}
