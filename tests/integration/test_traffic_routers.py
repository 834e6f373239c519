"""What every router does the same, run on each (tests/support/traffic_routers.py): the patch of
a named route and what it leaves untouched, every route, conflicts, 409 forever, 403, 404, dry
run, the step-up cap, an unanswered or refused PATCH, schema validity.

Each case goes through the real `kubernetes` client against the API emulator, which validates
every stored object against the router's CRD schema. What differs between the routers (other
backends, default weights, the policy YAML) is in test_traffic_istio.py and
test_traffic_gateway_api.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.support.crd_schema import validator_for
from tests.support.k8s_emulator import K8sEmulator, RbacRule, apply_json_patch
from tests.support.traffic_routers import (
    NS,
    ROUTERS,
    RouterCase,
    canonical,
    kube_client,
    patches,
    without_versioning,
)
from worker.traffic import rollback, shift_traffic, step_up


@pytest.fixture(params=ROUTERS, ids=lambda case: case.router)
def router(request: pytest.FixtureRequest) -> RouterCase:
    case: RouterCase = request.param
    return case


@pytest.fixture
def emulator(router: RouterCase) -> Iterator[K8sEmulator]:
    with router.emulator() as running:
        yield running


@pytest.fixture
def api(emulator: K8sEmulator, tmp_path: Path) -> Iterator[client.ApiClient]:
    with kube_client(emulator, tmp_path) as api_client:
        yield api_client


def test_rollback_of_a_named_route_moves_only_its_weights_and_keeps_the_sum(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = router.stored(emulator)

    record = rollback(api, router.target())

    after = router.stored(emulator)
    assert record.status == "applied", record.reason
    assert (record.type, record.target, record.routes) == (
        "traffic.rollback",
        "shop/reviews",
        ["primary"],
    )
    assert record.from_weights == {"primary": router.share(router.primary_canary)}
    assert record.to_weights == {"primary": router.share(0)}
    assert record.attempts == 1
    assert record.time.endswith("Z")
    assert router.weights(after, "primary") == router.share(0)
    # The header route Argo pins to the canary is not ours when routes are named.
    assert router.weights(after, "canary-by-header") == router.share(100)
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
    primary = f"/spec/{router.spec_key}/1/{router.entries_key}"  # stable at 0, canary at 1
    assert {(op["op"], op["path"], op["value"]) for op in ops[first_write:]} == {
        ("replace", f"{primary}/0/weight", router.total),
        ("replace", f"{primary}/1/weight", 0),
    }
    # Each entry is identified before it is written: a reordered list fails the patch.
    assert router.canary_identity in ops
    start = router.share(router.primary_canary)
    assert {"op": "test", "path": f"{primary}/1/weight", "value": start["canary"]} in ops
    assert {"op": "test", "path": f"{primary}/0/weight", "value": start["stable"]} in ops


def test_everything_but_the_weights_stays_byte_for_byte_identical(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = router.stored(emulator)
    others = ("canary-by-header", "admin", "argo-header-canary")
    untouched = {name: canonical(router.route(before, name)) for name in others}

    assert rollback(api, router.target()).status == "applied"

    after = router.stored(emulator)
    assert {name: canonical(router.route(after, name)) for name in others} == untouched
    assert canonical(router.outside_routes(after)) == canonical(router.outside_routes(before))
    expected = without_versioning(before)
    entries = router.route(expected, "primary")[router.entries_key]
    entries[0]["weight"], entries[1]["weight"] = router.total, 0
    assert canonical(without_versioning(after)) == canonical(expected)


def test_rollback_of_all_routes_covers_every_route_with_the_canary_or_stable(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = router.stored(emulator)

    record = rollback(api, router.target(routes=None))

    after = router.stored(emulator)
    assert record.status == "applied", record.reason
    assert record.routes == ["canary-by-header", "primary"]
    assert record.to_weights == {"canary-by-header": router.share(0), "primary": router.share(0)}
    assert router.weights(after, "canary-by-header") == router.share(0)
    assert router.weights(after, "primary") == router.share(0)
    # A route to another service (and Istio's TCP routes) are not the canary's http traffic.
    assert canonical(router.route(after, "admin")) == canonical(router.route(before, "admin"))
    assert canonical(router.outside_routes(after)) == canonical(router.outside_routes(before))
    assert len(patches(emulator)) == 1  # both routes in one atomic patch
    # A canary-only route has no weights to move: left alone, and said so.
    assert record.reason == router.left_alone_reason
    argo_route = router.route(after, "argo-header-canary")
    assert canonical(argo_route) == canonical(router.route(before, "argo-header-canary"))


def test_a_named_route_without_a_stable_side_fails(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    record = rollback(api, router.target(routes=["argo-header-canary"]))

    assert record.status == "failed"
    assert record.reason == router.no_stable_reason
    assert patches(emulator) == []


def test_a_concurrent_writer_between_our_read_and_write_is_kept_and_we_retry(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    field, value = router.admin_edit

    def operator_edits_admin(running: K8sEmulator) -> None:
        router.modify(running, lambda obj: router.route(obj, "admin").update({field: value}))

    emulator.run_before("patch", router.path, operator_edits_admin)

    record = rollback(api, router.target())

    after = router.stored(emulator)
    assert record.status == "applied", record.reason
    assert record.attempts == 2
    assert [r.status for r in patches(emulator)] == [422, 200]  # the stale patch was refused
    assert router.weights(after, "primary") == router.share(0)
    assert router.route(after, "admin")[field] == value


def test_a_concurrent_weight_change_is_re_read_before_rolling_back(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    def argo_steps_to_40_percent(running: K8sEmulator) -> None:
        def edit(obj: dict[str, Any]) -> None:
            entries = router.route(obj, "primary")[router.entries_key]
            entries[0]["weight"], entries[1]["weight"] = 60, 40  # stable, canary

        router.modify(running, edit)

    emulator.run_before("patch", router.path, argo_steps_to_40_percent)

    record = rollback(api, router.target())

    assert record.status == "applied", record.reason
    assert record.from_weights == {"primary": {"canary": 40, "stable": 60}}
    assert router.weights(router.stored(emulator), "primary") == {"canary": 0, "stable": 100}


def test_conflicts_forever_fail_after_max_attempts(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = router.stored(emulator)
    emulator.fail_next("patch", router.path, status=409, times=None)

    record = shift_traffic(api, router.target(), 0, action_type="traffic.rollback", max_attempts=3)

    assert record.status == "failed"
    assert record.attempts == 3
    assert f"gave up after 3 attempts: {router.kind} shop/reviews" in (record.reason or "")
    assert "409" in (record.reason or "")
    assert len(patches(emulator)) == 3
    assert canonical(router.stored(emulator)) == canonical(before)


def test_forbidden_patch_is_a_failed_record_naming_rbac(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.rbac = [RbacRule(verbs=("get", "list"), resources=(router.plural,))]

    record = rollback(api, router.target())

    assert record.status == "failed"
    assert (record.reason or "").startswith(
        f"forbidden: the service account may not patch {router.plural} in shop (RBAC)"
    )
    assert "cannot patch resource" in (record.reason or "")  # the API server's own words
    start = router.share(router.primary_canary)
    assert record.from_weights == {"primary": start}
    assert router.weights(router.stored(emulator), "primary") == start


def test_forbidden_namespace_fails_on_the_read(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.rbac = [
        RbacRule(verbs=("get", "patch"), resources=(router.plural,), namespaces=("other",))
    ]

    record = rollback(api, router.target())

    assert record.status == "failed"
    assert f"may not get {router.plural} in shop (RBAC)" in (record.reason or "")
    assert patches(emulator) == []


def test_minimal_rbac_get_and_patch_is_enough(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.rbac = [
        RbacRule(
            verbs=("get", "patch"),
            resources=(router.plural,),
            namespaces=(NS,),
            api_groups=(router.group,),
        )
    ]

    assert rollback(api, router.target()).status == "applied"


def test_a_missing_object_is_a_failed_record(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    record = rollback(api, router.target(**{router.name_field: "ratings"}))

    assert record.status == "failed"
    assert (record.reason or "").startswith(f"not found: {router.kind} shop/ratings does not exist")
    assert record.attempts == 1


def test_unknown_route_name_fails_without_patching(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    record = rollback(api, router.target(routes=["primary", "checkout"]))

    assert record.status == "failed"
    assert "'checkout' not found" in (record.reason or "")
    assert "canary-by-header, primary, admin, argo-header-canary" in (record.reason or "")
    assert patches(emulator) == []


def test_a_canary_the_object_does_not_hold_fails(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    record = rollback(api, router.target(canary=router.absent_canary))

    assert record.status == "failed"
    assert router.absent_canary_words in (record.reason or "")
    assert patches(emulator) == []


def test_dry_run_records_a_valid_patch_and_sends_nothing(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    before = router.stored(emulator)

    record = rollback(api, router.target(), dry_run=True)

    assert record.status == "dry_run"
    assert record.to_weights == {"primary": router.share(0)}
    assert patches(emulator) == []
    assert canonical(router.stored(emulator)) == canonical(before)
    # The recorded patch is the one that would have been sent: it applies and does the job.
    patched = apply_json_patch(before, record.patch)
    assert router.weights(patched, "primary") == router.share(0)
    validator_for(router.crd, "v1")(patched)  # raises when invalid


def test_weights_already_at_target_send_no_patch(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    assert rollback(api, router.target()).status == "applied"
    revision = router.stored(emulator)["metadata"]["resourceVersion"]

    record = rollback(api, router.target())

    assert record.status == "unchanged"
    assert record.patch == []
    assert record.from_weights == record.to_weights == {"primary": router.share(0)}
    assert len(patches(emulator)) == 1
    assert router.stored(emulator)["metadata"]["resourceVersion"] == revision


@pytest.mark.parametrize(
    ("router", "version"),
    [(case, version) for case in ROUTERS for version in case.versions[1:]],
    ids=lambda value: value.router if isinstance(value, RouterCase) else value,
    indirect=["router"],
)
def test_older_api_versions_are_selectable(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient, version: str
) -> None:
    record = rollback(api, router.target(api_version=f"{router.group}/{version}"))

    assert record.status == "applied", record.reason
    assert {r.path for r in emulator.requests} == {
        f"/apis/{router.group}/{version}/namespaces/shop/{router.plural}/reviews"
    }
    assert router.weights(router.stored(emulator), "primary") == router.share(0)


def test_step_up_raises_the_canary_share_up_to_the_cap(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    first = step_up(api, router.target(), step=25, max_weight=50)
    second = step_up(api, router.target(), step=25, max_weight=50)

    assert first.type == "traffic.step"
    assert first.to_weights == {"primary": router.share(router.primary_canary + 25)}
    assert second.to_weights == {"primary": router.share(50)}  # capped at 50 %
    assert step_up(api, router.target(), step=25, max_weight=50).status == "unchanged"
    # A route already above the cap is not lowered by a step up.
    header = step_up(api, router.target(routes=["canary-by-header"]), step=10, max_weight=50)
    assert header.status == "unchanged"


def test_stored_object_still_validates_against_the_crd_schema(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    assert rollback(api, router.target(routes=None)).status == "applied"
    assert step_up(api, router.target(), step=10, max_weight=30).status == "applied"

    for version in router.versions:
        obj = emulator.get_object(f"{router.group}/{version}", router.plural, NS, "reviews")
        validator_for(router.crd, version)(obj)  # raises when invalid


def test_a_refused_patch_without_concurrent_writes_fails_instead_of_looping(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.fail_next(
        "patch", router.path, status=422, times=None, message="admission webhook says no"
    )

    record = rollback(api, router.target())

    assert record.status == "failed"
    assert record.reason == "invalid: the API server refused the patch: admission webhook says no"
    assert record.attempts == 2  # the re-read showed nobody else had written
    assert len(patches(emulator)) == 1


def test_a_transient_server_error_is_retried(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.fail_next("patch", router.path, status=503)

    record = rollback(api, router.target())

    assert record.status == "applied", record.reason
    assert record.attempts == 2
    assert router.weights(router.stored(emulator), "primary") == router.share(0)


def test_a_patch_answered_too_late_is_retried_and_the_late_one_refused(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    emulator.delay_next("patch", router.path, seconds=1.5)

    record = shift_traffic(
        api, router.target(), 0, action_type="traffic.rollback", request_timeout=0.3
    )

    assert record.status == "applied", record.reason
    assert record.attempts == 2
    late = patches(emulator)[0]
    deadline = time.monotonic() + 10
    while late.status is None and time.monotonic() < deadline:  # the delayed handler finishes
        time.sleep(0.05)
    # The late patch tested a resourceVersion that our retry had already moved past.
    assert late.status == 422
    assert router.weights(router.stored(emulator), "primary") == router.share(0)


def test_a_step_that_landed_unanswered_is_not_stepped_twice(
    router: RouterCase, emulator: K8sEmulator, api: client.ApiClient
) -> None:
    # The PATCH is applied, then its answer takes longer than our request timeout.
    emulator.run_after("patch", router.path, lambda _running: time.sleep(1.0))

    record = step_up(api, router.target(), step=20, max_weight=80, request_timeout=0.3)

    assert record.status == "applied", record.reason
    assert record.attempts == 2
    assert record.patch == []  # the re-read found the step done: nothing more sent
    assert len(patches(emulator)) == 1
    expected = router.share(router.primary_canary + 20)
    assert router.weights(router.stored(emulator), "primary") == expected
