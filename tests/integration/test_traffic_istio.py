"""`worker.traffic.istio` through the real `kubernetes` client against the API emulator: what
is Istio's own (which entries a patch tests, routes always totalling 100, the kubeconfig).

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
from tests.support.traffic_routers import (
    ISTIO,
    NS,
    canonical,
    kube_client,
    patches,
    without_versioning,
)
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


def test_rollback_of_a_named_route_moves_only_its_weights(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = stored(emulator)

    record = rollback(api, target())

    after = stored(emulator)
    assert record.status == "applied", record.reason
    assert record.type == "traffic.rollback"
    assert record.target == "shop/reviews"
    assert record.routes == ["primary"]
    assert record.from_weights == {"primary": {"canary": 20, "stable": 80}}
    assert record.to_weights == {"primary": {"canary": 0, "stable": 100}}
    assert record.attempts == 1
    assert record.time.endswith("Z")
    assert weights(after, "primary") == {"canary": 0, "stable": 100}
    # The header route Argo pins to the canary is not ours when routes are named.
    assert weights(after, "canary-by-header") == {"canary": 100, "stable": 0}
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1

    [request] = patches(emulator)
    assert request.content_type == "application/json-patch+json"
    assert request.json() == record.patch
    ops = record.patch
    assert ops[0] == {
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": before["metadata"]["resourceVersion"],
    }
    first_write = next(i for i, op in enumerate(ops) if op["op"] != "test")
    assert all(op["op"] == "test" for op in ops[:first_write])
    assert {(op["op"], op["path"], op["value"]) for op in ops[first_write:]} == {
        ("replace", "/spec/http/1/route/0/weight", 100),
        ("replace", "/spec/http/1/route/1/weight", 0),
    }
    assert {"op": "test", "path": "/spec/http/1/route/1/weight", "value": 20} in ops
    assert {"op": "test", "path": "/spec/http/1/route/0/weight", "value": 80} in ops


def test_everything_but_the_weights_stays_byte_for_byte_identical(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = stored(emulator)
    untouched_json = {
        "header": canonical(http_route(before, "canary-by-header")),
        "admin": canonical(http_route(before, "admin")),
        "argo": canonical(http_route(before, "argo-header-canary")),
        "tcp": canonical(before["spec"]["tcp"]),
    }

    assert rollback(api, target()).status == "applied"

    after = stored(emulator)
    assert canonical(http_route(after, "canary-by-header")) == untouched_json["header"]
    assert canonical(http_route(after, "admin")) == untouched_json["admin"]
    assert canonical(http_route(after, "argo-header-canary")) == untouched_json["argo"]
    assert canonical(after["spec"]["tcp"]) == untouched_json["tcp"]
    expected = without_versioning(before)
    primary = http_route(expected, "primary")
    primary["route"][0]["weight"], primary["route"][1]["weight"] = 100, 0
    assert canonical(without_versioning(after)) == canonical(expected)


def test_rollback_of_all_routes_covers_every_route_to_canary_or_stable(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = stored(emulator)

    record = rollback(api, target(routes=None))

    after = stored(emulator)
    assert record.status == "applied", record.reason
    assert record.routes == ["canary-by-header", "primary"]
    assert record.to_weights == {
        "canary-by-header": {"canary": 0, "stable": 100},
        "primary": {"canary": 0, "stable": 100},
    }
    assert weights(after, "canary-by-header") == {"canary": 0, "stable": 100}
    assert weights(after, "primary") == {"canary": 0, "stable": 100}
    # A route to another service and the TCP route are not part of the canary's http traffic.
    assert canonical(http_route(after, "admin")) == canonical(http_route(before, "admin"))
    assert canonical(after["spec"]["tcp"]) == canonical(before["spec"]["tcp"])
    assert len(patches(emulator)) == 1  # both routes in one atomic patch
    # A canary-only route has no weights to move: left alone, and said so.
    assert record.reason == (
        "left alone: route 'argo-header-canary' has no stable destination reviews/stable"
    )
    argo_route = http_route(after, "argo-header-canary")
    assert canonical(argo_route) == canonical(http_route(before, "argo-header-canary"))


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
