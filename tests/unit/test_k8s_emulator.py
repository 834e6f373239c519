"""The Kubernetes API emulator keeps the API server semantics other tests rely on.

Requests go over real HTTP (httpx) so that status codes, content types and Status bodies are
what a client sees; `tests/integration/test_traffic_istio.py` drives it with the real
`kubernetes` client.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client, config

from tests.support.crd_schema import (
    SchemaValidationError,
    openapi_to_jsonschema,
    validator_for,
)
from tests.support.k8s_emulator import (
    VIRTUAL_SERVICE_CRD,
    K8sEmulator,
    PatchApplyError,
    RbacRule,
    apply_json_patch,
    apply_merge_patch,
    write_kubeconfig,
)
from tests.support.reference_data import SCHEMAS_DIR

VS_LIST = "/apis/networking.istio.io/v1/namespaces/shop/virtualservices"
VS = f"{VS_LIST}/reviews"
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


def virtual_service(name: str = "reviews") -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": name, "labels": {"app": "reviews"}},
        "spec": {
            "hosts": ["reviews"],
            "http": [
                {
                    "name": "primary",
                    "route": [
                        {"destination": {"host": "reviews", "subset": "stable"}, "weight": 80},
                        {"destination": {"host": "reviews", "subset": "canary"}, "weight": 20},
                    ],
                    "timeout": "10s",
                }
            ],
        },
    }


@pytest.fixture
def emulator() -> Iterator[K8sEmulator]:
    with K8sEmulator() as running:
        yield running


@pytest.fixture
def http(emulator: K8sEmulator) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {emulator.token}"}
    with httpx.Client(base_url=emulator.url, headers=headers) as session:
        yield session


@pytest.fixture
def created(http: httpx.Client) -> dict[str, Any]:
    response = http.post(VS_LIST, json=virtual_service())
    assert response.status_code == 201
    body: dict[str, Any] = response.json()
    return body


def test_create_sets_server_fields_and_get_returns_the_object(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    metadata = created["metadata"]
    assert metadata["namespace"] == "shop"
    assert metadata["generation"] == 1
    assert metadata["resourceVersion"].isdigit()
    assert metadata["uid"] and metadata["creationTimestamp"].endswith("Z")
    fetched = http.get(VS)
    assert fetched.status_code == 200
    assert fetched.json() == created


def test_list_returns_items_of_the_namespace(http: httpx.Client, created: dict[str, Any]) -> None:
    http.post(VS_LIST, json=virtual_service("ratings"))
    other_ns = virtual_service("reviews")
    http.post("/apis/networking.istio.io/v1/namespaces/other/virtualservices", json=other_ns)

    listing = http.get(VS_LIST).json()

    assert listing["kind"] == "VirtualServiceList"
    assert [item["metadata"]["name"] for item in listing["items"]] == ["ratings", "reviews"]
    assert {item["metadata"]["namespace"] for item in listing["items"]} == {"shop"}


def test_not_found_has_the_api_servers_status_shape(http: httpx.Client) -> None:
    response = http.get(f"{VS_LIST}/nope")

    assert response.status_code == 404
    assert response.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'virtualservices.networking.istio.io "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "group": "networking.istio.io", "kind": "virtualservices"},
        "code": 404,
    }


def test_unknown_resource_is_a_404_without_details(http: httpx.Client) -> None:
    response = http.get("/apis/networking.istio.io/v1/namespaces/shop/gateways/x")

    assert response.status_code == 404
    assert response.json()["message"] == "the server could not find the requested resource"
    assert "details" not in response.json()


def test_create_twice_is_already_exists(http: httpx.Client, created: dict[str, Any]) -> None:
    response = http.post(VS_LIST, json=virtual_service())

    assert response.status_code == 409
    assert response.json()["reason"] == "AlreadyExists"


def test_put_with_a_stale_resource_version_is_a_409_conflict(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    first = copy.deepcopy(created)
    first["spec"]["http"][0]["timeout"] = "20s"
    assert http.put(VS, json=first).status_code == 200

    stale = copy.deepcopy(created)
    stale["spec"]["http"][0]["timeout"] = "30s"
    response = http.put(VS, json=stale)

    assert response.status_code == 409
    assert response.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "Operation cannot be fulfilled on virtualservices.networking.istio.io "
        '"reviews": the object has been modified; please apply your changes to the latest '
        "version and try again",
        "reason": "Conflict",
        "details": {"name": "reviews", "group": "networking.istio.io", "kind": "virtualservices"},
        "code": 409,
    }
    assert http.get(VS).json()["spec"]["http"][0]["timeout"] == "20s"


def test_put_without_a_resource_version_is_invalid(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    unconditional = copy.deepcopy(created)
    del unconditional["metadata"]["resourceVersion"]

    response = http.put(VS, json=unconditional)

    assert response.status_code == 422
    assert "metadata.resourceVersion" in response.json()["message"]


def test_resource_version_increments_on_every_change_and_generation_on_spec_changes(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    versions = [int(created["metadata"]["resourceVersion"])]

    labelled = http.patch(VS, json={"metadata": {"labels": {"tier": "api"}}}, headers=MERGE_PATCH)
    versions.append(int(labelled.json()["metadata"]["resourceVersion"]))
    assert labelled.json()["metadata"]["generation"] == 1  # metadata only

    spec_change = http.patch(VS, json={"spec": {"gateways": ["mesh"]}}, headers=MERGE_PATCH).json()
    versions.append(int(spec_change["metadata"]["resourceVersion"]))
    assert spec_change["metadata"]["generation"] == 2

    replaced = copy.deepcopy(spec_change)
    replaced["spec"]["hosts"] = ["reviews", "reviews.example.com"]
    put = http.put(VS, json=replaced).json()
    versions.append(int(put["metadata"]["resourceVersion"]))
    assert put["metadata"]["generation"] == 3

    assert versions == sorted(set(versions))  # strictly increasing
    # A write that changes nothing keeps the resourceVersion, like the real store.
    noop = http.patch(VS, json={"spec": {"gateways": ["mesh"]}}, headers=MERGE_PATCH).json()
    assert noop["metadata"]["resourceVersion"] == put["metadata"]["resourceVersion"]


def test_json_patch_with_passing_tests_applies(http: httpx.Client, created: dict[str, Any]) -> None:
    patch = [
        {
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": created["metadata"]["resourceVersion"],
        },
        {"op": "test", "path": "/spec/http/0/route/1/weight", "value": 20},
        {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 0},
        {"op": "replace", "path": "/spec/http/0/route/0/weight", "value": 100},
    ]

    response = http.patch(VS, content=json.dumps(patch), headers=JSON_PATCH)

    assert response.status_code == 200
    route = response.json()["spec"]["http"][0]["route"]
    assert [entry["weight"] for entry in route] == [100, 0]


def test_json_patch_with_a_failed_test_is_422_and_changes_nothing(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    patch = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": "1"},
        {"op": "replace", "path": "/spec/http/0/route/1/weight", "value": 0},
    ]

    response = http.patch(VS, content=json.dumps(patch), headers=JSON_PATCH)

    assert response.status_code == 422
    body = response.json()
    assert body["reason"] == "Invalid"
    assert body["message"] == "the server rejected our request due to an error in our request"
    assert "/metadata/resourceVersion" in body["details"]["causes"][0]["message"]
    assert http.get(VS).json() == created


def test_malformed_json_patch_is_400(http: httpx.Client, created: dict[str, Any]) -> None:
    response = http.patch(
        VS, content=json.dumps([{"op": "jump", "path": "/x"}]), headers=JSON_PATCH
    )

    assert response.status_code == 400
    assert response.json()["reason"] == "BadRequest"


def test_merge_patch_merges_objects_deletes_nulls_and_replaces_lists(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    patch = {
        "metadata": {"labels": {"app": None, "tier": "api"}},
        "spec": {"hosts": ["reviews.example.com"]},
    }

    patched = http.patch(VS, json=patch, headers=MERGE_PATCH).json()

    assert patched["metadata"]["labels"] == {"tier": "api"}
    assert patched["spec"]["hosts"] == ["reviews.example.com"]
    assert patched["spec"]["http"] == created["spec"]["http"]


def test_merge_patch_with_a_stale_resource_version_conflicts(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    response = http.patch(
        VS,
        json={"metadata": {"resourceVersion": "1"}, "spec": {"gateways": ["x"]}},
        headers=MERGE_PATCH,
    )

    assert response.status_code == 409


def test_a_json_patch_list_sent_as_merge_patch_is_rejected(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    response = http.patch(
        VS, content=json.dumps([{"op": "remove", "path": "/spec"}]), headers=MERGE_PATCH
    )

    assert response.status_code == 422
    assert http.get(VS).json() == created


def test_strategic_merge_patch_is_unsupported_for_custom_resources(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    response = http.patch(
        VS,
        json={"spec": {"gateways": ["mesh"]}},
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )

    assert response.status_code == 415
    assert response.json()["reason"] == "UnsupportedMediaType"


def test_requests_without_a_valid_token_are_401(emulator: K8sEmulator) -> None:
    for headers in ({}, {"Authorization": "Bearer guessed"}):
        response = httpx.get(f"{emulator.url}{VS_LIST}", headers=headers)
        assert response.status_code == 401
        assert response.json()["reason"] == "Unauthorized"


def test_rbac_denies_with_the_api_servers_message(
    emulator: K8sEmulator, http: httpx.Client, created: dict[str, Any]
) -> None:
    emulator.rbac = [RbacRule(verbs=("get",), resources=("virtualservices",), namespaces=("shop",))]

    allowed = http.get(VS)
    denied = http.patch(VS, json={"spec": {"gateways": ["x"]}}, headers=MERGE_PATCH)
    denied_list = http.get(VS_LIST)

    assert allowed.status_code == 200
    assert denied.status_code == 403
    assert denied.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'virtualservices.networking.istio.io "reviews" is forbidden: User '
        '"system:serviceaccount:argo-rollouts:rollout-analyzer" cannot patch resource '
        '"virtualservices" in API group "networking.istio.io" in the namespace "shop"',
        "reason": "Forbidden",
        "details": {"name": "reviews", "group": "networking.istio.io", "kind": "virtualservices"},
        "code": 403,
    }
    assert denied_list.status_code == 403
    assert denied_list.json()["message"].startswith(
        "virtualservices.networking.istio.io is forbidden: User"
    )
    # Authorization comes before existence, as in the API server.
    assert http.patch(f"{VS_LIST}/ghost", json={}, headers=MERGE_PATCH).status_code == 403


def test_schema_validation_rejects_a_bad_object(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    bad = copy.deepcopy(created)
    bad["spec"]["http"][0]["route"][0]["weight"] = "eighty"

    response = http.put(VS, json=bad)

    assert response.status_code == 422
    body = response.json()
    assert body["reason"] == "Invalid"
    assert body["message"].startswith('VirtualService.networking.istio.io "reviews" is invalid: ')
    assert body["details"]["causes"][0]["field"] == "spec.http[0].route[0].weight"
    assert "must be of type integer" in body["message"]
    assert http.get(VS).json() == created


def test_a_patch_producing_an_invalid_object_is_rejected(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    patch = [{"op": "add", "path": "/spec/http/0/route/0/destination/hostname", "value": "x"}]

    response = http.patch(VS, content=json.dumps(patch), headers=JSON_PATCH)

    assert response.status_code == 422
    assert "spec.http[0].route[0].destination.hostname" in response.json()["message"]
    assert http.get(VS).json() == created


def test_status_is_ignored_on_the_main_resource(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    with_status = copy.deepcopy(created)
    with_status["status"] = {"observedGeneration": 7}

    stored = http.put(VS, json=with_status).json()

    assert "status" not in stored
    assert stored["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_every_served_version_reads_the_same_object(
    http: httpx.Client, created: dict[str, Any]
) -> None:
    for version in ("v1beta1", "v1alpha3"):
        fetched = http.get(VS.replace("/v1/", f"/{version}/")).json()
        assert fetched["apiVersion"] == f"networking.istio.io/{version}"
        assert fetched["spec"] == created["spec"]
    assert http.get(VS.replace("/v1/", "/v2/")).status_code == 404


def test_delete_then_get_is_404(http: httpx.Client, created: dict[str, Any]) -> None:
    assert http.delete(VS).status_code == 200
    assert http.get(VS).status_code == 404
    assert http.delete(VS).status_code == 404


def test_injected_failures_answer_the_next_matching_requests(
    emulator: K8sEmulator, http: httpx.Client, created: dict[str, Any]
) -> None:
    emulator.fail_next("get", "*/virtualservices/reviews", status=503, times=2)

    answers = [http.get(VS).status_code for _ in range(3)]

    assert answers == [503, 503, 200]
    assert http.get(VS_LIST).status_code == 200  # "list" is another verb


def test_injected_delay_holds_the_answer(
    emulator: K8sEmulator, http: httpx.Client, created: dict[str, Any]
) -> None:
    emulator.delay_next("get", VS, seconds=1.0)

    with pytest.raises(httpx.ReadTimeout):
        http.get(VS, timeout=0.2)
    assert http.get(VS).status_code == 200


def test_run_before_hook_emulates_a_concurrent_writer(
    emulator: K8sEmulator, http: httpx.Client, created: dict[str, Any]
) -> None:
    def other_writer(running: K8sEmulator) -> None:
        running.modify_object(
            "networking.istio.io/v1",
            "virtualservices",
            "shop",
            "reviews",
            lambda vs: vs["metadata"]["labels"].update(writer="other"),
        )

    emulator.run_before("patch", VS, other_writer)
    patch = [
        {
            "op": "test",
            "path": "/metadata/resourceVersion",
            "value": created["metadata"]["resourceVersion"],
        },
        {"op": "replace", "path": "/spec/http/0/timeout", "value": "1s"},
    ]

    response = http.patch(VS, content=json.dumps(patch), headers=JSON_PATCH)

    assert response.status_code == 422
    assert http.get(VS).json()["metadata"]["labels"]["writer"] == "other"


def test_every_request_is_recorded(
    emulator: K8sEmulator, http: httpx.Client, created: dict[str, Any]
) -> None:
    http.patch(VS, json={"spec": {"gateways": ["mesh"]}}, headers=MERGE_PATCH)

    recorded = emulator.requests
    assert [(r.method, r.verb, r.status) for r in recorded] == [
        ("POST", "create", 201),
        ("PATCH", "patch", 200),
    ]
    assert recorded[1].content_type == "application/merge-patch+json"
    assert recorded[1].json() == {"spec": {"gateways": ["mesh"]}}
    assert emulator.requests_for("patch", "*/reviews") == [recorded[1]]


def test_any_registered_resource_is_served(emulator: K8sEmulator, http: httpx.Client) -> None:
    emulator.register_crd(SCHEMAS_DIR / "rollouts.argoproj.io.crd.yaml")
    emulator.register_resource("example.com", "widgets", "Widget", {"v1": None})
    widgets = "/apis/example.com/v1/namespaces/shop/widgets"

    created = http.post(widgets, json={"metadata": {"name": "w1"}, "spec": {"size": 3}})
    rollout = http.post(
        "/apis/argoproj.io/v1alpha1/namespaces/shop/rollouts",
        json={"metadata": {"name": "reviews"}, "spec": {"replicas": "three"}},
    )

    assert created.status_code == 201
    assert created.json()["apiVersion"] == "example.com/v1"
    assert rollout.status_code == 422  # validated against the Rollout CRD


def test_the_real_kubernetes_client_reaches_it(
    emulator: K8sEmulator, created: dict[str, Any], tmp_path: Path
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "config", emulator.url, emulator.token)
    api_client = config.new_client_from_config(config_file=str(kubeconfig))
    api = client.CustomObjectsApi(api_client)

    fetched = api.get_namespaced_custom_object(
        "networking.istio.io", "v1", "shop", "virtualservices", "reviews"
    )
    with pytest.raises(client.ApiException) as missing:
        api.get_namespaced_custom_object(
            "networking.istio.io", "v1", "shop", "virtualservices", "x"
        )

    assert isinstance(fetched, dict)
    assert fetched["metadata"]["uid"] == created["metadata"]["uid"]
    assert missing.value.status == 404


# -- pure functions ---------------------------------------------------------------------------


def test_json_patch_follows_rfc_6902_examples() -> None:
    doc = {"foo": ["bar", "baz"], "a/b": 1, "m~n": 2, "flag": True}

    assert apply_json_patch(doc, [{"op": "add", "path": "/foo/1", "value": "qux"}])["foo"] == [
        "bar",
        "qux",
        "baz",
    ]
    assert (
        apply_json_patch(doc, [{"op": "add", "path": "/foo/-", "value": "end"}])["foo"][-1] == "end"
    )
    assert apply_json_patch(doc, [{"op": "test", "path": "/a~1b", "value": 1}]) == doc
    assert apply_json_patch(doc, [{"op": "test", "path": "/m~0n", "value": 2.0}]) == doc
    moved = apply_json_patch(doc, [{"op": "move", "from": "/foo/0", "path": "/first"}])
    assert moved["first"] == "bar" and moved["foo"] == ["baz"]
    copied = apply_json_patch(doc, [{"op": "copy", "from": "/foo", "path": "/bar"}])
    assert copied["bar"] == copied["foo"] == ["bar", "baz"]
    assert doc["foo"] == ["bar", "baz"]  # the input is never modified
    with pytest.raises(PatchApplyError):  # JSON true is not the number 1
        apply_json_patch(doc, [{"op": "test", "path": "/flag", "value": 1}])
    with pytest.raises(PatchApplyError):  # replace needs an existing member
        apply_json_patch(doc, [{"op": "replace", "path": "/missing", "value": 1}])
    with pytest.raises(PatchApplyError):  # all or nothing: the earlier add is discarded too
        apply_json_patch(
            doc,
            [
                {"op": "add", "path": "/new", "value": 1},
                {"op": "remove", "path": "/foo/5"},
            ],
        )


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"a": "b", "c": {"d": "e", "f": "g"}}

    assert apply_merge_patch(target, {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert apply_merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert apply_merge_patch({"a": "b"}, {"a": {"x": None}}) == {"a": {}}


def test_crd_schema_translation_handles_openapi_extensions() -> None:
    schema = openapi_to_jsonschema(
        {
            "type": "object",
            "properties": {
                "count": {"type": "integer", "nullable": True, "format": "int32"},
                "port": {"x-kubernetes-int-or-string": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
            "x-kubernetes-validations": [{"rule": "self.count > 0"}],
        }
    )

    assert schema["properties"]["count"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert schema["properties"]["port"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert "additionalProperties" not in schema["properties"]["free"]
    assert schema["additionalProperties"] is False
    assert "x-kubernetes-validations" not in schema


def test_validator_for_reports_kubernetes_field_paths() -> None:
    validate = validator_for(VIRTUAL_SERVICE_CRD, "v1")
    valid = virtual_service()
    validate(valid)

    invalid = copy.deepcopy(valid)
    invalid["spec"]["http"][0]["route"][1]["destination"] = {"subset": "canary"}  # host missing
    invalid["spec"]["hostz"] = ["typo"]
    with pytest.raises(SchemaValidationError) as raised:
        validate(invalid)

    fields = {error.field for error in raised.value.errors}
    assert fields == {"spec.http[0].route[1].destination.host", "spec.hostz"}
