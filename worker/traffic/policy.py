"""A policy's `actions.traffic`: which router, which routes to move, and when.

`kind` picks the router (`istio`, the default, or `gateway-api`); each kind names its object
and its canary/stable backends in its own terms. `{service}`, `{namespace}` and `{rollout}` in
names are filled from the analysis.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from worker.traffic.gateway_api import GATEWAY_GROUP, Backend, HTTPRouteTarget
from worker.traffic.istio import ISTIO_GROUP, Destination, TrafficTarget
from worker.traffic.router import Router


class StepUp(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    step: int = Field(ge=1, le=100)  # percent of the route's traffic
    max_weight: int = Field(ge=0, le=100)  # percent


class _When(BaseModel):
    """What every router kind shares: namespace, routes and the moves per verdict."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    namespace: str | None = None
    routes: list[str] | None = None
    on_fail: Literal["rollback", "none"] = "rollback"
    on_pass: StepUp | None = None
    dry_run: bool = False
    # Lets a request name the object, namespace, routes or dry_run (its `traffic`).
    allow_request_override: bool = False

    def _fill(self, result: dict[str, Any]) -> Any:
        values = {
            "service": result.get("service") or "",
            "namespace": result.get("namespace") or "",
            "rollout": result.get("rollout") or result.get("service") or "",
        }
        return lambda text: text.format(**values)


class IstioTraffic(_When):
    kind: Literal["istio"] = "istio"
    virtual_service: str
    canary: Destination
    stable: Destination
    api_version: str = f"{ISTIO_GROUP}/v1"

    @property
    def object_name(self) -> str:
        return self.virtual_service

    def target(self, result: dict[str, Any]) -> Router:
        fill = self._fill(result)
        return TrafficTarget(
            virtual_service=fill(self.virtual_service),
            namespace=fill(self.namespace or "{namespace}"),
            routes=self.routes,
            canary=Destination(host=fill(self.canary.host), subset=self.canary.subset),
            stable=Destination(host=fill(self.stable.host), subset=self.stable.subset),
            api_version=self.api_version,
        )


class GatewayApiTraffic(_When):
    kind: Literal["gateway-api"]
    http_route: str
    canary: Backend
    stable: Backend
    api_version: str = f"{GATEWAY_GROUP}/v1"

    @property
    def object_name(self) -> str:
        return self.http_route

    def target(self, result: dict[str, Any]) -> Router:
        fill = self._fill(result)

        def backend(b: Backend) -> Backend:
            namespace = fill(b.namespace) if b.namespace else None
            return b.model_copy(update={"name": fill(b.name), "namespace": namespace})

        return HTTPRouteTarget(
            http_route=fill(self.http_route),
            namespace=fill(self.namespace or "{namespace}"),
            routes=self.routes,
            canary=backend(self.canary),
            stable=backend(self.stable),
            api_version=self.api_version,
        )


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("kind", "istio"))
    return str(getattr(value, "kind", "istio"))


# Policies written before `kind` existed are Istio's.
TrafficPolicy = Annotated[
    Annotated[IstioTraffic, Tag("istio")] | Annotated[GatewayApiTraffic, Tag("gateway-api")],
    Discriminator(_kind),
]
# What a request's `traffic` may name, per kind (the rest comes from the policy).
OBJECT_FIELD = {"istio": "virtual_service", "gateway-api": "http_route"}
