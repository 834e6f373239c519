"""The two routers' test worlds: each one's routing object mid-canary, its target and how to
read its weights, and a `RouterCase` that lets one test run the same scenario on either router
(tests/integration/test_traffic_routers.py); each router's own file tests what differs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.k8s_emulator import HTTP_ROUTE_CRD, VIRTUAL_SERVICE_CRD, K8sEmulator
from worker.traffic import Backend, Destination, HTTPRouteTarget, TrafficTarget
from worker.traffic.router import Router

NS = "shop"
ISTIO_V1 = "networking.istio.io/v1"
GATEWAY_V1 = "gateway.networking.k8s.io/v1"
ISTIO_CANARY = Destination(host="reviews", subset="canary")
ISTIO_STABLE = Destination(host="reviews", subset="stable")
GATEWAY_CANARY = Backend(name="reviews-canary", port=9080)
GATEWAY_STABLE = Backend(name="reviews-stable", port=9080)

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


def istio_target(**overrides: Any) -> TrafficTarget:
    fields: dict[str, Any] = {
        "virtual_service": "reviews",
        "namespace": NS,
        "routes": ["primary"],
        "canary": ISTIO_CANARY,
        "stable": ISTIO_STABLE,
    }
    return TrafficTarget(**{**fields, **overrides})


def gateway_target(**overrides: Any) -> HTTPRouteTarget:
    fields: dict[str, Any] = {
        "http_route": "reviews",
        "namespace": NS,
        "routes": ["primary"],
        "canary": GATEWAY_CANARY,
        "stable": GATEWAY_STABLE,
    }
    return HTTPRouteTarget(**{**fields, **overrides})


def http_route(vs: dict[str, Any], name: str) -> dict[str, Any]:
    """The VirtualService's http route of that name."""
    return next(route for route in vs["spec"]["http"] if route.get("name") == name)


def rule(route: dict[str, Any], name: str) -> dict[str, Any]:
    """The HTTPRoute's rule of that name."""
    return next(r for r in route["spec"]["rules"] if r.get("name") == name)


def istio_weights(vs: dict[str, Any], name: str) -> dict[str, int]:
    by_subset = {e["destination"]["subset"]: e["weight"] for e in http_route(vs, name)["route"]}
    return {"canary": by_subset["canary"], "stable": by_subset["stable"]}


def gateway_weights(route: dict[str, Any], name: str) -> dict[str, int]:
    by_name = {ref["name"]: ref.get("weight", 1) for ref in rule(route, name)["backendRefs"]}
    return {"canary": by_name["reviews-canary"], "stable": by_name["reviews-stable"]}


@dataclass(frozen=True)
class RouterCase:
    """One router's world, as the shared scenarios see it."""

    router: str  # the policy's `kind`, used as the test id
    kind: str  # "VirtualService"
    api_version: str
    plural: str
    obj: dict[str, Any]  # the object as created, mid-canary
    crd: Path
    versions: tuple[str, ...]  # every served version (the CRD schema of each)
    target: Callable[..., Router]  # target(**overrides); routes=["primary"] unless overridden
    name_field: str  # the target field naming the object
    weights: Callable[[dict[str, Any], str], dict[str, int]]  # (object, route) -> weights
    spec_key: str  # spec list of routes
    entries_key: str  # a route's weighted list
    total: int  # what the primary route weighs in all
    primary_canary: int  # the canary's share of "primary" at the start, in percent
    admin_edit: tuple[str, Any]  # a field an operator changes on the "admin" route, and to what
    absent_canary: Any  # a canary side the object does not hold
    absent_canary_words: str  # how a failed record names it
    no_stable_reason: str  # the reason when the named canary-only route is asked for

    @property
    def path(self) -> str:
        """The object's API path, any version (the emulator's hooks match on it)."""
        group = self.api_version.partition("/")[0]
        return f"/apis/{group}/*/namespaces/{NS}/{self.plural}/reviews"

    @property
    def group(self) -> str:
        return self.api_version.partition("/")[0]

    def create(self, emulator: K8sEmulator) -> None:
        emulator.create_object(self.api_version, self.plural, NS, copy.deepcopy(self.obj))

    def stored(self, emulator: K8sEmulator) -> dict[str, Any]:
        return emulator.get_object(self.api_version, self.plural, NS, "reviews")

    def modify(self, emulator: K8sEmulator, edit: Callable[[dict[str, Any]], None]) -> None:
        emulator.modify_object(self.api_version, self.plural, NS, "reviews", edit)

    def route(self, obj: dict[str, Any], name: str) -> dict[str, Any]:
        return next(r for r in obj["spec"][self.spec_key] if r.get("name") == name)

    def share(self, canary_percent: int) -> dict[str, int]:
        """Weights of "primary" when the canary has that share (no other backend)."""
        canary = canary_percent * self.total // 100
        return {"canary": canary, "stable": self.total - canary}


ISTIO = RouterCase(
    router="istio",
    kind="VirtualService",
    api_version=ISTIO_V1,
    plural="virtualservices",
    obj=REVIEWS_VS,
    crd=VIRTUAL_SERVICE_CRD,
    versions=("v1", "v1beta1", "v1alpha3"),
    target=istio_target,
    name_field="virtual_service",
    weights=istio_weights,
    spec_key="http",
    entries_key="route",
    total=100,
    primary_canary=20,
    admin_edit=("timeout", "45s"),
    absent_canary=Destination(host="reviews", subset="v3"),
    absent_canary_words="no canary destination reviews/v3",
    no_stable_reason=(
        "route 'argo-header-canary' has no stable destination reviews/stable in VirtualService "
        "shop/reviews"
    ),
)

GATEWAY_API = RouterCase(
    router="gateway-api",
    kind="HTTPRoute",
    api_version=GATEWAY_V1,
    plural="httproutes",
    obj=REVIEWS_ROUTE,
    crd=HTTP_ROUTE_CRD,
    versions=("v1", "v1beta1"),
    target=gateway_target,
    name_field="http_route",
    weights=gateway_weights,
    spec_key="rules",
    entries_key="backendRefs",
    total=1000,
    primary_canary=10,
    admin_edit=("timeouts", {"request": "45s"}),
    absent_canary=Backend(name="reviews-canary", port=8443),  # a port that is not ours
    absent_canary_words="no canary backend reviews-canary:8443",
    no_stable_reason=(
        "rule 'argo-header-canary' has no stable backend reviews-stable:9080 in HTTPRoute "
        "shop/reviews"
    ),
)

ROUTERS = (ISTIO, GATEWAY_API)
