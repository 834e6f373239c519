"""`worker.traffic.gateway_api` through the real `kubernetes` client against the API emulator.

The same cases as the Istio router's (test_traffic_istio.py), on an HTTPRoute whose rules weigh
1000 in total: the sum is kept, shares are percent of it. Every stored object is validated by the
emulator against the Gateway API CRD schema; dry-run patches are validated here.
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
from pydantic import TypeAdapter

from tests.support.crd_schema import validator_for
from tests.support.k8s_emulator import (
    HTTP_ROUTE_CRD,
    K8sEmulator,
    RbacRule,
    apply_json_patch,
    write_kubeconfig,
)
from worker.traffic import Backend, HTTPRouteTarget, rollback, shift_traffic, step_up
from worker.traffic.policy import GatewayApiTraffic, TrafficPolicy

NS = "shop"
V1 = "gateway.networking.k8s.io/v1"
ROUTE_PATH = f"/apis/gateway.networking.k8s.io/*/namespaces/{NS}/httproutes/reviews"
CANARY = Backend(name="reviews-canary", port=9080)
STABLE = Backend(name="reviews-stable", port=9080)

# An HTTPRoute mid-canary: a header rule pinned to the canary (stable at 0), the weighted
# primary rule (900/100: weights are relative), a rule to another service, a canary-only
# header rule as Argo's Gateway API plugin writes it, and an unnamed rule with default weights.
REVIEWS_ROUTE = yaml.safe_load(
    """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: shop
  labels: {app.kubernetes.io/name: reviews}
  annotations: {team: shop-backend}
spec:
  parentRefs:
  - {name: public, namespace: infra, sectionName: https}
  hostnames: [reviews.example.com]
  rules:
  - name: canary-by-header
    matches:
    - headers: [{name: x-canary, value: always}]
      path: {type: PathPrefix, value: /api}
    backendRefs:
    - {name: reviews-canary, port: 9080, weight: 1000}
    - {name: reviews-stable, port: 9080, weight: 0}
    timeouts: {request: 5s}
  - name: primary
    matches:
    - path: {type: PathPrefix, value: /api}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-route, value: primary}]
    backendRefs:
    - name: reviews-stable
      port: 9080
      weight: 900
      filters:
      - type: ResponseHeaderModifier
        responseHeaderModifier:
          set: [{name: x-served-by, value: stable}]
    - {name: reviews-canary, port: 9080, weight: 100}
    timeouts: {request: 10s}
  - name: admin
    matches:
    - path: {type: PathPrefix, value: /admin}
    backendRefs:
    - {name: reviews-admin, port: 8080}
  - name: argo-header-canary
    matches:
    - headers: [{name: x-argo-canary, value: "true"}]
    backendRefs:
    - {name: reviews-canary, port: 9080, weight: 1}
"""
)


@pytest.fixture
def emulator() -> Iterator[K8sEmulator]:
    with K8sEmulator() as running:
        running.create_object(V1, "httproutes", NS, copy.deepcopy(REVIEWS_ROUTE))
        yield running


@pytest.fixture
def api(emulator: K8sEmulator, tmp_path: Path) -> Iterator[client.ApiClient]:
    from worker.traffic import api_client_from_settings

    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator.url, emulator.token)
    api_client = api_client_from_settings(str(kubeconfig), in_cluster=False, context=None)
    yield api_client
    api_client.close()  # type: ignore[no-untyped-call]


def target(**overrides: Any) -> HTTPRouteTarget:
    fields: dict[str, Any] = {
        "http_route": "reviews",
        "namespace": NS,
        "routes": ["primary"],
        "canary": CANARY,
        "stable": STABLE,
    }
    return HTTPRouteTarget(**{**fields, **overrides})


def stored(emulator: K8sEmulator) -> dict[str, Any]:
    return emulator.get_object(V1, "httproutes", NS, "reviews")


def rule(route: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in route["spec"]["rules"] if r.get("name") == name)


def weights(route: dict[str, Any], name: str) -> dict[str, int]:
    by_name = {ref["name"]: ref.get("weight", 1) for ref in rule(route, name)["backendRefs"]}
    return {"canary": by_name["reviews-canary"], "stable": by_name["reviews-stable"]}


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def without_versioning(route: dict[str, Any]) -> dict[str, Any]:
    copied = copy.deepcopy(route)
    del copied["metadata"]["resourceVersion"], copied["metadata"]["generation"]
    return copied


def patches(emulator: K8sEmulator) -> list[Any]:
    return emulator.requests_for("patch")


def test_rollback_of_a_named_rule_moves_only_its_weights_and_keeps_the_sum(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = stored(emulator)

    record = rollback(api, target())

    after = stored(emulator)
    assert record.status == "applied", record.reason
    assert (record.type, record.target, record.routes) == (
        "traffic.rollback",
        "shop/reviews",
        ["primary"],
    )
    assert record.from_weights == {"primary": {"canary": 100, "stable": 900}}
    assert record.to_weights == {"primary": {"canary": 0, "stable": 1000}}
    assert weights(after, "primary") == {"canary": 0, "stable": 1000}
    assert weights(after, "canary-by-header") == {"canary": 1000, "stable": 0}
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
        ("replace", "/spec/rules/1/backendRefs/0/weight", 1000),
        ("replace", "/spec/rules/1/backendRefs/1/weight", 0),
    }
    # Each entry is identified before it is written: a reordered list fails the patch.
    assert {
        "op": "test",
        "path": "/spec/rules/1/backendRefs/1/name",
        "value": "reviews-canary",
    } in ops
    assert {"op": "test", "path": "/spec/rules/1/backendRefs/1/weight", "value": 100} in ops
    assert {"op": "test", "path": "/spec/rules/1/backendRefs/0/weight", "value": 900} in ops


def test_everything_but_the_weights_stays_byte_for_byte_identical(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = stored(emulator)

    assert rollback(api, target()).status == "applied"

    expected = without_versioning(before)
    refs = rule(expected, "primary")["backendRefs"]
    refs[0]["weight"], refs[1]["weight"] = 1000, 0
    assert canonical(without_versioning(stored(emulator))) == canonical(expected)


def test_rollback_of_all_rules_covers_every_rule_with_both_backends(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = stored(emulator)

    record = rollback(api, target(routes=None))

    after = stored(emulator)
    assert record.status == "applied", record.reason
    assert record.routes == ["canary-by-header", "primary"]
    assert weights(after, "canary-by-header") == {"canary": 0, "stable": 1000}
    assert weights(after, "primary") == {"canary": 0, "stable": 1000}
    assert canonical(rule(after, "admin")) == canonical(rule(before, "admin"))
    assert canonical(rule(after, "argo-header-canary")) == canonical(
        rule(before, "argo-header-canary")
    )
    assert len(patches(emulator)) == 1  # both rules in one atomic patch
    assert record.reason == (
        "left alone: rule 'argo-header-canary' has no stable backend reviews-stable:9080"
    )


def test_a_named_rule_without_a_stable_backend_fails(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    record = rollback(api, target(routes=["argo-header-canary"]))

    assert record.status == "failed"
    assert record.reason == (
        "rule 'argo-header-canary' has no stable backend reviews-stable:9080 in HTTPRoute "
        "shop/reviews"
    )
    assert patches(emulator) == []


def test_a_concurrent_writer_between_our_read_and_write_is_kept_and_we_retry(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    def operator_edits_admin_timeout(running: K8sEmulator) -> None:
        running.modify_object(
            V1, "httproutes", NS, "reviews",
            lambda r: rule(r, "admin").update(timeouts={"request": "45s"}),
        )  # fmt: skip

    emulator.run_before("patch", ROUTE_PATH, operator_edits_admin_timeout)

    record = rollback(api, target())

    after = stored(emulator)
    assert record.status == "applied", record.reason
    assert record.attempts == 2
    assert [r.status for r in patches(emulator)] == [422, 200]  # the stale patch was refused
    assert weights(after, "primary") == {"canary": 0, "stable": 1000}
    assert rule(after, "admin")["timeouts"] == {"request": "45s"}


def test_a_concurrent_weight_change_is_re_read_before_rolling_back(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    def argo_steps_to_40_percent(running: K8sEmulator) -> None:
        def edit(route: dict[str, Any]) -> None:
            refs = rule(route, "primary")["backendRefs"]
            refs[0]["weight"], refs[1]["weight"] = 60, 40

        running.modify_object(V1, "httproutes", NS, "reviews", edit)

    emulator.run_before("patch", ROUTE_PATH, argo_steps_to_40_percent)

    record = rollback(api, target())

    assert record.status == "applied", record.reason
    assert record.from_weights == {"primary": {"canary": 40, "stable": 60}}
    assert weights(stored(emulator), "primary") == {"canary": 0, "stable": 100}


def test_conflicts_forever_fail_after_max_attempts(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = stored(emulator)
    emulator.fail_next("patch", ROUTE_PATH, status=409, times=None)

    record = shift_traffic(api, target(), 0, action_type="traffic.rollback", max_attempts=3)

    assert record.status == "failed"
    assert record.attempts == 3
    assert "gave up after 3 attempts: HTTPRoute shop/reviews" in (record.reason or "")
    assert "409" in (record.reason or "")
    assert len(patches(emulator)) == 3
    assert canonical(stored(emulator)) == canonical(before)


def test_forbidden_patch_is_a_failed_record_naming_rbac(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.rbac = [RbacRule(verbs=("get", "list"), resources=("httproutes",))]

    record = rollback(api, target())

    assert record.status == "failed"
    assert (record.reason or "").startswith(
        "forbidden: the service account may not patch httproutes in shop (RBAC)"
    )
    assert "cannot patch resource" in (record.reason or "")
    assert weights(stored(emulator), "primary") == {"canary": 100, "stable": 900}


def test_forbidden_namespace_fails_on_the_read(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.rbac = [
        RbacRule(verbs=("get", "patch"), resources=("httproutes",), namespaces=("other",))
    ]

    record = rollback(api, target())

    assert record.status == "failed"
    assert "may not get httproutes in shop (RBAC)" in (record.reason or "")
    assert patches(emulator) == []


def test_minimal_rbac_get_and_patch_is_enough(emulator: K8sEmulator, api: client.ApiClient) -> None:
    emulator.rbac = [
        RbacRule(
            verbs=("get", "patch"),
            resources=("httproutes",),
            namespaces=(NS,),
            api_groups=("gateway.networking.k8s.io",),
        )
    ]

    assert rollback(api, target()).status == "applied"


def test_istio_rights_do_not_cover_httproutes(emulator: K8sEmulator, api: client.ApiClient) -> None:
    emulator.rbac = [
        RbacRule(verbs=("get", "patch"), resources=("virtualservices",), namespaces=(NS,))
    ]

    record = rollback(api, target())

    assert record.status == "failed" and "may not get httproutes" in (record.reason or "")


def test_missing_http_route_is_a_failed_record(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    record = rollback(api, target(http_route="ratings"))

    assert record.status == "failed"
    assert (record.reason or "").startswith("not found: HTTPRoute shop/ratings does not exist")
    assert record.attempts == 1


def test_unknown_rule_name_fails_without_patching(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    record = rollback(api, target(routes=["primary", "checkout"]))

    assert record.status == "failed"
    assert "'checkout' not found" in (record.reason or "")
    assert "canary-by-header, primary, admin, argo-header-canary" in (record.reason or "")
    assert patches(emulator) == []


def test_a_backend_on_another_port_is_not_ours(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    record = rollback(api, target(canary=Backend(name="reviews-canary", port=8443)))

    assert record.status == "failed"
    assert "no canary backend reviews-canary:8443" in (record.reason or "")
    assert patches(emulator) == []


def test_dry_run_records_a_valid_patch_and_sends_nothing(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = stored(emulator)

    record = rollback(api, target(), dry_run=True)

    assert record.status == "dry_run"
    assert record.to_weights == {"primary": {"canary": 0, "stable": 1000}}
    assert patches(emulator) == []
    assert canonical(stored(emulator)) == canonical(before)
    patched = apply_json_patch(before, record.patch)
    assert weights(patched, "primary") == {"canary": 0, "stable": 1000}
    validator_for(HTTP_ROUTE_CRD, "v1")(patched)  # raises when invalid


def test_weights_already_at_target_send_no_patch(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    assert rollback(api, target()).status == "applied"
    revision = stored(emulator)["metadata"]["resourceVersion"]

    record = rollback(api, target())

    assert record.status == "unchanged"
    assert record.patch == []
    assert len(patches(emulator)) == 1
    assert stored(emulator)["metadata"]["resourceVersion"] == revision


def test_v1beta1_is_selectable(emulator: K8sEmulator, api: client.ApiClient) -> None:
    record = rollback(api, target(api_version="gateway.networking.k8s.io/v1beta1"))

    assert record.status == "applied", record.reason
    assert {r.path for r in emulator.requests} == {
        "/apis/gateway.networking.k8s.io/v1beta1/namespaces/shop/httproutes/reviews"
    }


def test_step_up_raises_the_canary_share_up_to_the_cap(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    first = step_up(api, target(), step=25, max_weight=50)
    second = step_up(api, target(), step=25, max_weight=50)

    assert first.type == "traffic.step"
    assert first.to_weights == {"primary": {"canary": 350, "stable": 650}}  # 10 % → 35 %
    assert second.to_weights == {"primary": {"canary": 500, "stable": 500}}  # capped at 50 %
    assert step_up(api, target(), step=25, max_weight=50).status == "unchanged"
    header = step_up(api, target(routes=["canary-by-header"]), step=10, max_weight=50)
    assert header.status == "unchanged"  # already above the cap: never lowered


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


def test_stored_object_still_validates_against_the_crd_schema(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    assert rollback(api, target(routes=None)).status == "applied"
    assert step_up(api, target(), step=10, max_weight=30).status == "applied"

    for version in ("v1", "v1beta1"):
        route = emulator.get_object(
            f"gateway.networking.k8s.io/{version}", "httproutes", NS, "reviews"
        )
        validator_for(HTTP_ROUTE_CRD, version)(route)


def test_a_refused_patch_without_concurrent_writes_fails_instead_of_looping(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.fail_next(
        "patch", ROUTE_PATH, status=422, times=None, message="admission webhook says no"
    )

    record = rollback(api, target())

    assert record.status == "failed"
    assert record.reason == "invalid: the API server refused the patch: admission webhook says no"
    assert record.attempts == 2
    assert len(patches(emulator)) == 1


def test_a_transient_server_error_is_retried(emulator: K8sEmulator, api: client.ApiClient) -> None:
    emulator.fail_next("patch", ROUTE_PATH, status=503)

    record = rollback(api, target())

    assert record.status == "applied", record.reason
    assert record.attempts == 2


def test_a_step_that_landed_unanswered_is_not_stepped_twice(
    emulator: K8sEmulator, api: client.ApiClient
) -> None:
    # The PATCH is applied, then its answer takes longer than our request timeout.
    emulator.run_after("patch", ROUTE_PATH, lambda _running: time.sleep(1.0))

    record = step_up(api, target(), step=20, max_weight=80, request_timeout=0.3)

    assert record.status == "applied", record.reason
    assert record.attempts == 2
    assert record.patch == []  # the re-read found the step done: nothing more sent
    assert len(patches(emulator)) == 1
    assert weights(stored(emulator), "primary") == {"canary": 300, "stable": 700}  # 10 % + 20 %


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
