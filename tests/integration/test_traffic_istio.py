"""`worker.traffic.istio` through the real `kubernetes` client against the API emulator: what
is Istio's own (other destinations in routes that always total 100, the kubeconfig, the audit
record, the policy YAML).

The emulator (tests/support/k8s_emulator.py) keeps the API server's semantics that matter here:
resourceVersion, JSON Patch `test` (422), 409, RBAC (403), 404 and the CRD schema. The cases
both routers share (conflicts, 403, 404, dry run, cap...) are in test_traffic_routers.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.support.k8s_emulator import K8sEmulator, write_kubeconfig
from tests.support.traffic_routers import ISTIO, NS, kube_client
from worker.traffic.istio import (
    ActionRecord,
    TrafficTarget,
    api_client_from_settings,
    rollback,
    shift_traffic,
)

V1 = ISTIO.api_version
CANARY, STABLE = ISTIO.canary, ISTIO.stable
target, stored, http_route, weights = ISTIO.target, ISTIO.stored, ISTIO.route, ISTIO.weights


@pytest.fixture
def emulator() -> Iterator[K8sEmulator]:
    with ISTIO.emulator() as running:
        yield running


@pytest.fixture
def api(emulator: K8sEmulator, tmp_path: Path) -> Iterator[client.ApiClient]:
    with kube_client(emulator, tmp_path) as api_client:
        yield api_client


def test_other_destinations_keep_their_weight(emulator: K8sEmulator, api: client.ApiClient) -> None:
    def add_legacy(vs: dict[str, Any]) -> None:
        route = http_route(vs, "primary")["route"]
        route[0]["weight"] = 70
        route.append({"destination": {"host": "reviews-legacy"}, "weight": 10})

    emulator.modify_object(V1, "virtualservices", NS, "reviews", add_legacy)

    assert rollback(api, target()).to_weights == {"primary": {"canary": 0, "stable": 90}}
    full = shift_traffic(api, target(), 100, action_type="traffic.step")

    route = http_route(stored(emulator), "primary")["route"]
    assert full.to_weights == {"primary": {"canary": 90, "stable": 0}}  # capped by the legacy 10
    assert [entry["weight"] for entry in route] == [0, 90, 10]
    assert sum(entry["weight"] for entry in route) == 100


def test_bad_credentials_fail_with_unauthorized(emulator: K8sEmulator, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator.url, "wrong-token")
    api_client = api_client_from_settings(str(kubeconfig), in_cluster=False, context=None)

    record = rollback(api_client, target())

    assert record.status == "failed"
    assert (record.reason or "").startswith("unauthorized")


def test_kubeconfig_context_is_selectable(emulator: K8sEmulator, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(
        tmp_path / "kubeconfig", emulator.url, emulator.token, context="staging"
    )
    api_client = api_client_from_settings(str(kubeconfig), in_cluster=False, context="staging")

    assert rollback(api_client, target()).status == "applied"


def test_action_record_is_plain_json_for_the_audit_log(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    record = rollback(api, target())

    restored = ActionRecord.model_validate_json(record.model_dump_json())
    assert restored == record
    assert json.loads(record.model_dump_json())["patch"][0]["path"] == "/metadata/resourceVersion"


def test_traffic_target_comes_from_policy_yaml() -> None:
    parsed = TrafficTarget.model_validate(
        yaml.safe_load(
            """
virtual_service: reviews
namespace: shop
routes: [primary]
canary: {host: reviews, subset: canary}
stable: {host: reviews, subset: stable}
api_version: networking.istio.io/v1beta1
"""
        )
    )
    assert parsed.canary == CANARY
    assert parsed.version == "v1beta1"
    with pytest.raises(ValueError, match="api_version"):
        target(api_version="networking.istio.io/v2")
    with pytest.raises(ValueError, match="different destinations"):
        target(canary=STABLE)
    with pytest.raises(ValueError, match="non-empty"):
        target(routes=[])
