"""The Istio router: weights of a canary and a stable destination in `VirtualService` http routes.

Weights inside one route: the canary gets the requested weight, the stable destination the rest;
any other destination in the route (e.g. a legacy version) keeps its weight, so the canary and
stable share `100 - others` and the canary weight is capped at that share. Istio reads a
missing weight in a split route as 0.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worker.traffic.kube import api_client_from_settings
from worker.traffic.router import (
    Failed,
    Goal,
    RouteWeights,
    describe_plans,
    patch_ops,
    split,
)
from worker.traffic.shift import ActionRecord, PinGoals, rollback, shift_traffic, step_up

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")
PLURAL = "virtualservices"

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


class TrafficTarget(BaseModel):
    """A VirtualService's canary and stable destinations: the Istio implementation of Router."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    group: ClassVar[str] = ISTIO_GROUP
    plural: ClassVar[str] = PLURAL
    kind: ClassVar[str] = "VirtualService"

    virtual_service: str = Field(min_length=1)
    namespace: str = Field(min_length=1)
    # Names of `spec.http[]` routes; None = every http route that sends traffic to the canary
    # or the stable destination (routes to other services are left alone).
    routes: list[str] | None = None
    canary: Destination
    stable: Destination
    api_version: str = f"{ISTIO_GROUP}/v1"

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("routes must be a non-empty list of distinct route names (or omitted)")
        return value

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        group, _, version = value.partition("/")
        if group != ISTIO_GROUP or version not in ISTIO_VERSIONS:
            allowed = ", ".join(f"{ISTIO_GROUP}/{v}" for v in ISTIO_VERSIONS)
            raise ValueError(f"api_version must be one of {allowed}")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> TrafficTarget:
        if self.canary == self.stable:
            raise ValueError("canary and stable must be different destinations")
        return self

    @property
    def name(self) -> str:
        return self.virtual_service

    @property
    def version(self) -> str:
        return self.api_version.partition("/")[2]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.virtual_service}"

    # --- Router ---------------------------------------------------------------------------------
    def read_weights(self, obj: dict[str, Any], goal: Goal) -> tuple[list[RouteWeights], list[str]]:
        """The routes to shift, and why others found without `routes` were left alone."""
        http = (obj.get("spec") or {}).get("http") or []
        if not isinstance(http, list):
            raise Failed(f"VirtualService {self.ref} has a malformed spec.http")
        plans: list[RouteWeights] = []
        skipped: list[str] = []
        for key, index in self._select_routes(http):
            entries = http[index].get("route") or []
            found = self._roles(key, entries, skipped)
            if found is None:
                continue
            canary, stable = (entries[found[0]], entries[found[1]])
            old = (_weight(canary, key), _weight(stable, key))
            others = sum(
                _weight(entry, key)
                for j, entry in enumerate(entries)
                if j not in found and isinstance(entry, dict)
            )
            base = f"/spec/http/{index}/route"
            new = split(key, old, others, 100, goal)
            plans.append(
                RouteWeights(
                    key, f"{base}/{found[0]}", f"{base}/{found[1]}", canary, stable, old, new, 100
                )
            )
        if not plans:
            raise Failed(
                f"no http route of VirtualService {self.ref} to shift: {'; '.join(skipped)}"
            )
        return plans, skipped

    def weight_patch(self, plans: list[RouteWeights], revision: str) -> list[dict[str, Any]]:
        def identity(entry: dict[str, Any], base: str) -> list[dict[str, Any]]:
            return [{"op": "test", "path": f"{base}/destination", "value": entry["destination"]}]

        return patch_ops(plans, revision, identity, lambda entry: "weight" in entry)

    def describe(self, plans: list[RouteWeights]) -> str:
        return describe_plans(self.kind, self.ref, plans)

    # --- reading the VirtualService -------------------------------------------------------------
    def _roles(self, key: str, entries: list[Any], skipped: list[str]) -> tuple[int, int] | None:
        """Indexes of the canary and stable entries of a route (None: leave the route alone)."""
        found: list[int] = []
        for role, destination in (("canary", self.canary), ("stable", self.stable)):
            matches = [
                j
                for j, entry in enumerate(entries)
                if isinstance(entry, dict) and destination.matches(entry.get("destination"))
            ]
            problem = f"route {key!r} has %s {role} destination {destination}"
            if len(matches) > 1:
                raise Failed(f"{problem % 'more than one'} in VirtualService {self.ref}")
            if not matches and self.routes is not None:
                raise Failed(f"{problem % 'no'} in VirtualService {self.ref}")
            if not matches:
                # Found without `routes`, the route holds only one side (e.g. Argo's
                # setHeaderRoute, canary only): it has no weights to move, so leave it alone.
                skipped.append(problem % "no")
                return None
            found.append(matches[0])
        return found[0], found[1]

    def _select_routes(self, http: list[Any]) -> list[tuple[str, int]]:
        """(key, index) of the http routes to shift."""
        names = [route.get("name") if isinstance(route, dict) else None for route in http]
        if self.routes is None:
            ours = [self.canary, self.stable]
            selected = [
                (names[i] or f"http[{i}]", i)
                for i, route in enumerate(http)
                if isinstance(route, dict)
                and any(d.matches(e.get("destination")) for e in _entries(route) for d in ours)
            ]
            if not selected:
                raise Failed(
                    f"no http route of VirtualService {self.ref} sends traffic to "
                    f"{self.canary} or {self.stable}"
                )
            return selected
        known = ", ".join(name for name in names if name) or "none named"
        selected = []
        for name in self.routes:
            indexes = [i for i, candidate in enumerate(names) if candidate == name]
            if not indexes:
                raise Failed(
                    f"route {name!r} not found in VirtualService {self.ref} (http routes: {known})"
                )
            if len(indexes) > 1:
                raise Failed(f"route name {name!r} is used by several http routes of {self.ref}")
            selected.append((name, indexes[0]))
        return selected


def _entries(route: dict[str, Any]) -> list[dict[str, Any]]:
    entries = route.get("route") or []
    return [entry for entry in entries if isinstance(entry, dict)]


def _weight(entry: dict[str, Any], key: str) -> int:
    value = entry.get("weight", 0)  # Istio treats a missing weight as 0 in a split route
    if isinstance(value, bool) or not isinstance(value, int):
        raise Failed(f"route {key!r} has a non-integer weight {value!r}")
    return value
