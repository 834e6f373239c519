"""`worker.traffic.istio` through the real `kubernetes` client against the API emulator.

The emulator (tests/support/k8s_emulator.py) keeps the API server's semantics that matter here:
resourceVersion, JSON Patch `test` (422), 409, RBAC (403), 404 and the CRD schema.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from tests.support.crd_schema import validator_for
from tests.support.k8s_emulator import (
    VIRTUAL_SERVICE_CRD,
    K8sEmulator,
    RbacRule,
    apply_json_patch,
    write_kubeconfig,
)
from worker.traffic.istio import (
    ActionRecord,
    Destination,
    TrafficTarget,
    api_client_from_settings,
    rollback,
    shift_traffic,
    step_up,
)

NS = "shop"
V1 = "networking.istio.io/v1"
VS_PATH = f"/apis/networking.istio.io/*/namespaces/{NS}/virtualservices/reviews"
CANARY = Destination(host="reviews", subset="canary")
STABLE = Destination(host="reviews", subset="stable")

# A VirtualService mid-canary: a header route pinned to the canary (with a stable entry at 0),
# the weighted primary route, a route to another service, a header route as Argo's
# setHeaderRoute writes it (canary only), and a TCP route.
REVIEWS_VS = yaml.safe_load(
    """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: shop
  labels: {app.kubernetes.io/name: reviews}
  annotations: {team: shop-backend}
spec:
  hosts: [reviews, reviews.example.com]
  gateways: [mesh, shop/public-gateway]
  http:
  - name: canary-by-header
    match:
    - headers:
        x-canary: {exact: always}
      uri: {prefix: /api}
    route:
    - destination: {host: reviews, subset: canary, port: {number: 9080}}
      weight: 100
    - destination: {host: reviews, subset: stable, port: {number: 9080}}
      weight: 0
    timeout: 5s
  - name: primary
    match:
    - uri: {prefix: /api}
    route:
    - destination: {host: reviews, subset: stable, port: {number: 9080}}
      weight: 80
      headers:
        response: {set: {x-served-by: stable}}
    - destination: {host: reviews, subset: canary, port: {number: 9080}}
      weight: 20
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: "5xx,reset,connect-failure"}
    timeout: 10s
    corsPolicy:
      allowOrigins: [{exact: "https://shop.example.com"}]
      allowMethods: [GET, POST]
  - name: admin
    match:
    - uri: {prefix: /admin}
    route:
    - destination: {host: reviews-admin, port: {number: 8080}}
    timeout: 30s
  - name: argo-header-canary
    match:
    - headers:
        x-argo-canary: {exact: "true"}
    route:
    - destination: {host: reviews, subset: canary}
      weight: 100
  tcp:
  - match: [{port: 9000}]
    route:
    - destination: {host: reviews, subset: stable, port: {number: 9000}}
      weight: 90
    - destination: {host: reviews, subset: canary, port: {number: 9000}}
      weight: 10
"""
)


@pytest.fixture
def emulator() -> Iterator[K8sEmulator]:
    with K8sEmulator() as running:
        running.create_object(V1, "virtualservices", NS, copy.deepcopy(REVIEWS_VS))
        yield running


@pytest.fixture
def api(emulator: K8sEmulator, tmp_path: Path) -> Iterator[client.ApiClient]:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator.url, emulator.token)
    api_client = api_client_from_settings(str(kubeconfig), in_cluster=False, context=None)
    yield api_client
    api_client.close()  # type: ignore[no-untyped-call]


def target(**overrides: Any) -> TrafficTarget:
    fields: dict[str, Any] = {
        "virtual_service": "reviews",
        "namespace": NS,
        "routes": ["primary"],
        "canary": CANARY,
        "stable": STABLE,
    }
    return TrafficTarget(**{**fields, **overrides})


def stored(emulator: K8sEmulator) -> dict[str, Any]:
    return emulator.get_object(V1, "virtualservices", NS, "reviews")


def http_route(vs: dict[str, Any], name: str) -> dict[str, Any]:
    return next(route for route in vs["spec"]["http"] if route.get("name") == name)


def weights(vs: dict[str, Any], name: str) -> dict[str, int]:
    by_subset = {e["destination"]["subset"]: e["weight"] for e in http_route(vs, name)["route"]}
    return {"canary": by_subset["canary"], "stable": by_subset["stable"]}


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def without_versioning(vs: dict[str, Any]) -> dict[str, Any]:
    copied = copy.deepcopy(vs)
    del copied["metadata"]["resourceVersion"], copied["metadata"]["generation"]
    return copied


def patches(emulator: K8sEmulator) -> list[Any]:
    return emulator.requests_for("patch")


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


def test_a_named_route_without_a_stable_destination_fails(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    record = rollback(api, target(routes=["argo-header-canary"]))

    assert record.status == "failed"
    assert record.reason == (
        "route 'argo-header-canary' has no stable destination reviews/stable in VirtualService "
        "shop/reviews"
    )
    assert patches(emulator) == []


def test_a_concurrent_writer_between_our_read_and_write_is_kept_and_we_retry(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    def operator_edits_admin_timeout(running: K8sEmulator) -> None:
        running.modify_object(
            V1,
            "virtualservices",
            NS,
            "reviews",
            lambda vs: http_route(vs, "admin").update(timeout="45s"),
        )

    emulator.run_before("patch", VS_PATH, operator_edits_admin_timeout)

    record = rollback(api, target())

    after = stored(emulator)
    assert record.status == "applied", record.reason
    assert record.attempts == 2
    assert [r.status for r in patches(emulator)] == [422, 200]  # the stale patch was refused
    assert weights(after, "primary") == {"canary": 0, "stable": 100}
    assert http_route(after, "admin")["timeout"] == "45s"


def test_a_concurrent_weight_change_is_re_read_before_rolling_back(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    def argo_steps_to_40(running: K8sEmulator) -> None:
        def edit(vs: dict[str, Any]) -> None:
            route = http_route(vs, "primary")["route"]
            route[0]["weight"], route[1]["weight"] = 60, 40

        running.modify_object(V1, "virtualservices", NS, "reviews", edit)

    emulator.run_before("patch", VS_PATH, argo_steps_to_40)

    record = rollback(api, target())

    assert record.status == "applied", record.reason
    assert record.from_weights == {"primary": {"canary": 40, "stable": 60}}
    assert weights(stored(emulator), "primary") == {"canary": 0, "stable": 100}


def test_conflicts_forever_fail_after_max_attempts(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = stored(emulator)
    emulator.fail_next("patch", VS_PATH, status=409, times=None)

    record = shift_traffic(api, target(), 0, action_type="traffic.rollback", max_attempts=3)

    assert record.status == "failed"
    assert record.attempts == 3
    assert "gave up after 3 attempts" in (record.reason or "")
    assert "409" in (record.reason or "")
    assert len(patches(emulator)) == 3
    assert canonical(stored(emulator)) == canonical(before)


def test_forbidden_patch_is_a_failed_record_naming_rbac(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.rbac = [RbacRule(verbs=("get", "list"), resources=("virtualservices",))]

    record = rollback(api, target())

    assert record.status == "failed"
    assert (record.reason or "").startswith(
        "forbidden: the service account may not patch virtualservices in shop (RBAC)"
    )
    assert "cannot patch resource" in (record.reason or "")  # the API server's own words
    assert record.from_weights == {"primary": {"canary": 20, "stable": 80}}
    assert weights(stored(emulator), "primary") == {"canary": 20, "stable": 80}


def test_forbidden_namespace_fails_on_the_read(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.rbac = [
        RbacRule(verbs=("get", "patch"), resources=("virtualservices",), namespaces=("other",))
    ]

    record = rollback(api, target())

    assert record.status == "failed"
    assert "may not get virtualservices in shop (RBAC)" in (record.reason or "")
    assert patches(emulator) == []


def test_minimal_rbac_get_and_patch_is_enough(emulator: K8sEmulator, api: client.ApiClient) -> None:
    emulator.rbac = [
        RbacRule(
            verbs=("get", "patch"),
            resources=("virtualservices",),
            namespaces=(NS,),
            api_groups=("networking.istio.io",),
        )
    ]

    assert rollback(api, target()).status == "applied"


def test_missing_virtual_service_is_a_failed_record(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    record = rollback(api, target(virtual_service="ratings"))

    assert record.status == "failed"
    assert (record.reason or "").startswith("not found: VirtualService shop/ratings")
    assert record.attempts == 1


def test_unknown_route_name_fails_without_patching(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    record = rollback(api, target(routes=["primary", "checkout"]))

    assert record.status == "failed"
    assert "'checkout' not found" in (record.reason or "")
    assert "canary-by-header, primary, admin" in (record.reason or "")
    assert patches(emulator) == []


def test_missing_canary_destination_fails(emulator: K8sEmulator, api: client.ApiClient) -> None:
    record = rollback(api, target(canary=Destination(host="reviews", subset="v3")))

    assert record.status == "failed"
    assert "no canary destination reviews/v3" in (record.reason or "")
    assert patches(emulator) == []


def test_dry_run_records_the_patch_and_sends_nothing(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = stored(emulator)

    record = rollback(api, target(), dry_run=True)

    assert record.status == "dry_run"
    assert record.to_weights == {"primary": {"canary": 0, "stable": 100}}
    assert patches(emulator) == []
    assert canonical(stored(emulator)) == canonical(before)
    # The recorded patch is the one that would have been sent: it applies and does the job.
    patched = apply_json_patch(before, record.patch)
    assert weights(patched, "primary") == {"canary": 0, "stable": 100}


def test_weights_already_at_target_send_no_patch(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    assert rollback(api, target()).status == "applied"
    revision = stored(emulator)["metadata"]["resourceVersion"]

    record = rollback(api, target())

    assert record.status == "unchanged"
    assert record.patch == []
    assert record.from_weights == record.to_weights == {"primary": {"canary": 0, "stable": 100}}
    assert len(patches(emulator)) == 1
    assert stored(emulator)["metadata"]["resourceVersion"] == revision


@pytest.mark.parametrize("version", ["v1beta1", "v1alpha3"])
def test_older_istio_api_versions_are_selectable(
    emulator: K8sEmulator, api: client.ApiClient, version: str
) -> None:
    record = rollback(api, target(api_version=f"networking.istio.io/{version}"))

    assert record.status == "applied", record.reason
    assert {r.path for r in emulator.requests} == {
        f"/apis/networking.istio.io/{version}/namespaces/shop/virtualservices/reviews"
    }
    assert weights(stored(emulator), "primary") == {"canary": 0, "stable": 100}


def test_step_up_raises_the_canary_weight_up_to_the_cap(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    first = step_up(api, target(), step=25, max_weight=50)
    second = step_up(api, target(), step=25, max_weight=50)

    assert first.type == "traffic.step"
    assert first.to_weights == {"primary": {"canary": 45, "stable": 55}}
    assert second.to_weights == {"primary": {"canary": 50, "stable": 50}}
    assert step_up(api, target(), step=25, max_weight=50).status == "unchanged"
    # A route already above the cap is not lowered by a step up.
    header = step_up(api, target(routes=["canary-by-header"]), step=10, max_weight=50)
    assert header.status == "unchanged"


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


def test_stored_object_still_validates_against_the_crd_schema(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    assert rollback(api, target(routes=None)).status == "applied"
    assert step_up(api, target(), step=10, max_weight=30).status == "applied"

    for version in ("v1", "v1beta1", "v1alpha3"):
        vs = emulator.get_object(f"networking.istio.io/{version}", "virtualservices", NS, "reviews")
        validator_for(VIRTUAL_SERVICE_CRD, version)(vs)  # raises when invalid


def test_a_refused_patch_without_concurrent_writes_fails_instead_of_looping(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.fail_next(
        "patch", VS_PATH, status=422, times=None, message="admission webhook says no"
    )

    record = rollback(api, target())

    assert record.status == "failed"
    assert record.reason == "invalid: the API server refused the patch: admission webhook says no"
    assert record.attempts == 2  # the re-read showed nobody else had written
    assert len(patches(emulator)) == 1


def test_a_transient_server_error_is_retried(emulator: K8sEmulator, api: client.ApiClient) -> None:
    emulator.fail_next("patch", VS_PATH, status=503)

    record = rollback(api, target())

    assert record.status == "applied", record.reason
    assert record.attempts == 2
    assert weights(stored(emulator), "primary") == {"canary": 0, "stable": 100}


def test_a_patch_answered_too_late_is_retried_and_the_late_one_refused(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.delay_next("patch", VS_PATH, seconds=1.5)

    record = shift_traffic(api, target(), 0, action_type="traffic.rollback", request_timeout=0.3)

    assert record.status == "applied", record.reason
    assert record.attempts == 2
    late = patches(emulator)[0]
    deadline = time.monotonic() + 10
    while late.status is None and time.monotonic() < deadline:  # the delayed handler finishes
        time.sleep(0.05)
    # The late patch tested a resourceVersion that our retry had already moved past.
    assert late.status == 422
    assert weights(stored(emulator), "primary") == {"canary": 0, "stable": 100}


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
