"""The Istio router: weights of a canary and a stable destination in `VirtualService` http routes.

Weights inside one route: the canary gets the requested weight, the stable destination the rest;
any other destination in the route (e.g. a legacy version) keeps its weight, so the canary and
stable share `100 - others` and the canary weight is capped at that share. Istio reads a
missing weight in a split route as 0.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from worker.traffic.kube import api_client_from_settings
from worker.traffic.router import Goal, split
from worker.traffic.shift import ActionRecord, PinGoals, rollback, shift_traffic, step_up
from worker.traffic.target import ObjectLayout, RouterTarget, integer_weight

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")
PLURAL = "virtualservices"
# Istio accepts two http routes of one name: they are refused when named.
VIRTUAL_SERVICE = ObjectLayout(
    ISTIO_VERSIONS, "http", "route", "route", "http route", "destination", unique_names=False
)

__all__ = [
    "ISTIO_GROUP",
    "PLURAL",
    "ActionRecord",
    "Destination",
    "PinGoals",
    "TrafficTarget",
    "api_client_from_settings",
    "rollback",
    "shift_traffic",
    "step_up",
]


class Destination(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1)
    subset: str | None = None

    def matches(self, destination: Any) -> bool:
        """Exact host and subset match: "reviews" and its FQDN are different destinations."""
        return (
            isinstance(destination, dict)
            and destination.get("host") == self.host
            and destination.get("subset") == self.subset
        )

    def __str__(self) -> str:
        return f"{self.host}/{self.subset}" if self.subset else self.host


class TrafficTarget(RouterTarget):
    """A VirtualService's canary and stable destinations: the Istio implementation of Router."""

    group: ClassVar[str] = ISTIO_GROUP
    plural: ClassVar[str] = PLURAL
    kind: ClassVar[str] = "VirtualService"
    layout: ClassVar[ObjectLayout] = VIRTUAL_SERVICE

    virtual_service: str = Field(min_length=1)
    namespace: str = Field(min_length=1)
    # Names of `spec.http[]` routes; None = every http route that sends traffic to the canary
    # or the stable destination (routes to other services are left alone).
    routes: list[str] | None = None
    canary: Destination
    stable: Destination
    api_version: str = f"{ISTIO_GROUP}/v1"

    @property
    def name(self) -> str:
        return self.virtual_service

    def _is_side(self, side: Destination, entry: Any) -> bool:
        return isinstance(entry, dict) and side.matches(entry.get("destination"))

    def _split(
        self, key: str, entries: list[Any], found: tuple[int, int], goal: Goal
    ) -> tuple[tuple[int, int], tuple[int, int], int]:
        """Routes total 100: the canary and stable share what other destinations leave."""
        where = f"route {key!r}"
        old = (_weight(entries[found[0]], where), _weight(entries[found[1]], where))
        others = sum(
            _weight(entry, where)
            for j, entry in enumerate(entries)
            if j not in found and isinstance(entry, dict)
        )
        return old, split(key, old, others, 100, goal), 100

    def _identity(self, entry: dict[str, Any], base: str) -> list[dict[str, Any]]:
        return [{"op": "test", "path": f"{base}/destination", "value": entry["destination"]}]


def _weight(entry: dict[str, Any], where: str) -> int:
    return integer_weight(entry, 0, where)  # Istio treats a missing weight as 0 in a split route
