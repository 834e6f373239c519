"""The two routers' test worlds, one `RouterCase` each: the routing object mid-canary, the target
and how to read the object's weights. tests/integration/test_traffic_routers.py runs the scenarios
both routers share on each case; each router's own test file uses its case for what differs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.support.k8s_emulator import (
    HTTP_ROUTE_CRD,
    VIRTUAL_SERVICE_CRD,
    K8sEmulator,
    write_kubeconfig,
)
from worker.traffic import (
    Backend,
    Destination,
    HTTPRouteTarget,
    TrafficTarget,
    api_client_from_settings,
)
from worker.traffic.target import RouterTarget

NS = "shop"

OBJECTS = Path(__file__).parent / "objects"
# The objects mid-canary; each file says what its routes are for.
REVIEWS_VS = yaml.safe_load((OBJECTS / "reviews-virtualservice.yaml").read_text())
REVIEWS_ROUTE = yaml.safe_load((OBJECTS / "reviews-httproute.yaml").read_text())


@dataclass(frozen=True)
class RouterCase:
    """One router's world, as the shared scenarios see it."""

    router: str  # the policy's `kind`, used as the test id
    target_class: type[RouterTarget]
    name_field: str  # the target field naming the object
    canary: Any  # the target's sides, as the object holds them
    stable: Any
    obj: dict[str, Any]  # the object as created, named "reviews", mid-canary
    crd: Path
    side_of: Callable[[dict[str, Any]], str]  # "canary"/"stable" for those entries of a route
    default_weight: int | None  # what a missing weight reads as (None: every entry has one)
    total: int  # what the primary route weighs in all
    primary_canary: int  # the canary's share of "primary" at the start, in percent
    admin_edit: tuple[str, Any]  # a field an operator changes on the "admin" route, and to what
    absent_canary: Any  # a canary side the object does not hold
    absent_canary_words: str  # how a failed record names it
    no_stable_reason: str  # the reason when the named canary-only route is asked for
    left_alone_reason: str  # the note when every route is asked for (the canary-only one)
    canary_identity: dict[str, Any]  # the patch's `test` that the primary's canary is still it

    @property
    def kind(self) -> str:
        return self.target_class.kind

    @property
    def plural(self) -> str:
        return self.target_class.plural

    @property
    def group(self) -> str:
        return self.target_class.group

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1"

    @property
    def versions(self) -> tuple[str, ...]:
        return self.target_class.layout.versions

    @property
    def entries_key(self) -> str:
        return self.target_class.layout.entries_key

    @property
    def spec_key(self) -> str:
        return self.target_class.layout.spec_key

    @property
    def path(self) -> str:
        """The object's API path, any version (the emulator's hooks match on it)."""
        return f"/apis/{self.group}/*/namespaces/{NS}/{self.plural}/reviews"

    def target(self, **overrides: Any) -> Any:
        """The target of "primary" in the object; `overrides` replace fields."""
        fields: dict[str, Any] = {self.name_field: "reviews", "namespace": NS}
        fields |= {"routes": ["primary"], "canary": self.canary, "stable": self.stable}
        return self.target_class(**{**fields, **overrides})

    def create(self, emulator: K8sEmulator) -> None:
        emulator.create_object(self.api_version, self.plural, NS, copy.deepcopy(self.obj))

    @contextmanager
    def emulator(self) -> Iterator[K8sEmulator]:
        """An API emulator holding the object."""
        with K8sEmulator() as running:
            self.create(running)
            yield running

    def stored(self, emulator: K8sEmulator) -> dict[str, Any]:
        return emulator.get_object(self.api_version, self.plural, NS, "reviews")

    def modify(self, emulator: K8sEmulator, edit: Callable[[dict[str, Any]], None]) -> None:
        emulator.modify_object(self.api_version, self.plural, NS, "reviews", edit)

    def route(self, obj: dict[str, Any], name: str) -> dict[str, Any]:
        """The object's route (http route, rule) of that name."""
        return next(r for r in obj["spec"][self.spec_key] if r.get("name") == name)

    def weights(self, obj: dict[str, Any], name: str) -> dict[str, int]:
        """The canary and stable weights of a route."""
        by_side = {
            self.side_of(entry): (
                entry["weight"]
                if self.default_weight is None
                else entry.get("weight", self.default_weight)
            )
            for entry in self.route(obj, name)[self.entries_key]
        }
        return {"canary": by_side["canary"], "stable": by_side["stable"]}

    def outside_routes(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The object's spec but its http routes / rules (Istio: hosts, gateways, tcp...)."""
        return {key: value for key, value in obj["spec"].items() if key != self.spec_key}

    def share(self, canary_percent: int) -> dict[str, int]:
        """Weights of "primary" when the canary has that share (no other backend)."""
        canary = canary_percent * self.total // 100
        return {"canary": canary, "stable": self.total - canary}


@contextmanager
def kube_client(emulator: K8sEmulator, tmp_path: Path) -> Iterator[client.ApiClient]:
    """The real `kubernetes` client, configured by a kubeconfig file, talking to the emulator."""
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator.url, emulator.token)
    api_client = api_client_from_settings(str(kubeconfig), in_cluster=False, context=None)
    yield api_client
    api_client.close()


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def without_versioning(obj: dict[str, Any]) -> dict[str, Any]:
    copied = copy.deepcopy(obj)
    del copied["metadata"]["resourceVersion"], copied["metadata"]["generation"]
    return copied


def patches(emulator: K8sEmulator) -> list[Any]:
    return emulator.requests_for("patch")


ISTIO = RouterCase(
    router="istio",
    target_class=TrafficTarget,
    name_field="virtual_service",
    canary=Destination(host="reviews", subset="canary"),
    stable=Destination(host="reviews", subset="stable"),
    obj=REVIEWS_VS,
    crd=VIRTUAL_SERVICE_CRD,
    side_of=lambda entry: entry["destination"].get("subset", ""),
    default_weight=None,
    total=100,
    primary_canary=20,
    admin_edit=("timeout", "45s"),
    absent_canary=Destination(host="reviews", subset="v3"),
    absent_canary_words="no canary destination reviews/v3",
    no_stable_reason=(
        "route 'argo-header-canary' has no stable destination reviews/stable in VirtualService "
        "shop/reviews"
    ),
    left_alone_reason=(
        "left alone: route 'argo-header-canary' has no stable destination reviews/stable"
    ),
    canary_identity={
        "op": "test",
        "path": "/spec/http/1/route/1/destination",
        "value": {"host": "reviews", "subset": "canary", "port": {"number": 9080}},
    },
)

GATEWAY_API = RouterCase(
    router="gateway-api",
    target_class=HTTPRouteTarget,
    name_field="http_route",
    canary=Backend(name="reviews-canary", port=9080),
    stable=Backend(name="reviews-stable", port=9080),
    obj=REVIEWS_ROUTE,
    crd=HTTP_ROUTE_CRD,
    side_of=lambda ref: ref["name"].removeprefix("reviews-"),
    default_weight=1,  # the Gateway API's default
    total=1000,
    primary_canary=10,
    admin_edit=("timeouts", {"request": "45s"}),
    absent_canary=Backend(name="reviews-canary", port=8443),  # a port that is not ours
    absent_canary_words="no canary backend reviews-canary:8443",
    no_stable_reason=(
        "rule 'argo-header-canary' has no stable backend reviews-stable:9080 in HTTPRoute "
        "shop/reviews"
    ),
    left_alone_reason=(
        "left alone: rule 'argo-header-canary' has no stable backend reviews-stable:9080"
    ),
    canary_identity={
        "op": "test",
        "path": "/spec/rules/1/backendRefs/1/name",
        "value": "reviews-canary",
    },
)

ROUTERS = (ISTIO, GATEWAY_API)
