"""What the two routers (Istio, Gateway API) share: a pydantic target naming one routing object,
its canary and stable sides, and the walk that finds them in the object.

A router module keeps what differs: its side model (destination, backendRef), the layout of its
object (`ObjectLayout`), how a route's weights are read and split (`_split`) and what
identifies an entry in a patch (`_identity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from worker.traffic.router import Failed, Goal, RouteWeights, describe_plans, patch_ops


@dataclass(frozen=True)
class ObjectLayout:
    """Where a routing object keeps its routes and weights, and the words its messages use."""

    versions: tuple[str, ...]  # API versions of the group with the same schema
    spec_key: str  # spec list of routes: "http", "rules"
    entries_key: str  # a route's weighted list: "route", "backendRefs"
    route_word: str  # a route named by its key: "route 'primary'", "rule 'primary'"
    routes_word: str  # a route among the object's: "no http route of …", "no rule of …"
    side_word: str  # "destination", "backend"
    unique_names: bool  # the API server rejects two routes of one name


class RouterTarget(BaseModel):
    """Validation, identity and route selection common to both routers (see the module doc)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    group: ClassVar[str]
    plural: ClassVar[str]
    kind: ClassVar[str]
    layout: ClassVar[ObjectLayout]

    if TYPE_CHECKING:  # fields each router declares itself (their order is part of its model)
        namespace: str
        routes: list[str] | None
        canary: object
        stable: object
        api_version: str

        @property
        def name(self) -> str: ...

    @field_validator("routes", check_fields=False)
    @classmethod
    def _routes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            names = f"{cls.layout.route_word} names"
            raise ValueError(f"routes must be a non-empty list of distinct {names} (or omitted)")
        return value

    @field_validator("api_version", check_fields=False)
    @classmethod
    def _api_version(cls, value: str) -> str:
        group, _, version = value.partition("/")
        if group != cls.group or version not in cls.layout.versions:
            allowed = ", ".join(f"{cls.group}/{v}" for v in cls.layout.versions)
            raise ValueError(f"api_version must be one of {allowed}")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> Self:
        if self.canary == self.stable:
            raise ValueError(f"canary and stable must be different {self.layout.side_word}s")
        return self

    @property
    def version(self) -> str:
        return self.api_version.partition("/")[2]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    # --- Router ---------------------------------------------------------------------------------
    def read_weights(self, obj: dict[str, Any], goal: Goal) -> tuple[list[RouteWeights], list[str]]:
        """The routes to shift, and why others found without `routes` were left alone."""
        routes = (obj.get("spec") or {}).get(self.layout.spec_key) or []
        if not isinstance(routes, list):
            raise Failed(f"{self.kind} {self.ref} has a malformed spec.{self.layout.spec_key}")
        plans: list[RouteWeights] = []
        skipped: list[str] = []
        for key, index in self._select_routes(routes):
            entries = routes[index].get(self.layout.entries_key) or []
            found = self._roles(key, entries, skipped)
            if found is None:
                continue
            canary, stable = entries[found[0]], entries[found[1]]
            old, new, total = self._split(key, entries, found, goal)
            base = f"/spec/{self.layout.spec_key}/{index}/{self.layout.entries_key}"
            plans.append(
                RouteWeights(
                    key, f"{base}/{found[0]}", f"{base}/{found[1]}", canary, stable, old, new, total
                )
            )
        if not plans:
            one = self.layout.routes_word
            raise Failed(f"no {one} of {self.kind} {self.ref} to shift: {'; '.join(skipped)}")
        return plans, skipped

    def weight_patch(self, plans: list[RouteWeights], revision: str) -> list[dict[str, Any]]:
        return patch_ops(plans, revision, self._identity, lambda entry: "weight" in entry)

    def describe(self, plans: list[RouteWeights]) -> str:
        return describe_plans(self.kind, self.ref, plans)

    # --- what each router says for itself -------------------------------------------------------
    def _is_side(self, side: Any, entry: Any) -> bool:
        """Whether `entry` of a route's weighted list is `side` (self.canary or self.stable)."""
        raise NotImplementedError

    def _split(
        self, key: str, entries: list[Any], found: tuple[int, int], goal: Goal
    ) -> tuple[tuple[int, int], tuple[int, int], int]:
        """Old and new (canary, stable) weights of a route, and what all its entries weigh."""
        raise NotImplementedError

    def _identity(self, entry: dict[str, Any], base: str) -> list[dict[str, Any]]:
        """Patch `test` ops proving the entry at `base` is still the one we read."""
        raise NotImplementedError

    # --- reading the routing object -------------------------------------------------------------
    def _roles(self, key: str, entries: list[Any], skipped: list[str]) -> tuple[int, int] | None:
        """Indexes of the canary and stable entries of a route (None: leave the route alone)."""
        found: list[int] = []
        route_word, side_word = self.layout.route_word, self.layout.side_word
        for role, side in (("canary", self.canary), ("stable", self.stable)):
            matches = [j for j, entry in enumerate(entries) if self._is_side(side, entry)]
            problem = f"{route_word} {key!r} has %s {role} {side_word} {side}"
            if len(matches) > 1:
                raise Failed(f"{problem % 'more than one'} in {self.kind} {self.ref}")
            if not matches and self.routes is not None:
                raise Failed(f"{problem % 'no'} in {self.kind} {self.ref}")
            if not matches:
                # Found without `routes`, the route holds only one side (e.g. Argo's
                # setHeaderRoute, canary only): it has no weights to move, so leave it alone.
                skipped.append(problem % "no")
                return None
            found.append(matches[0])
        return found[0], found[1]

    def _select_routes(self, routes: list[Any]) -> list[tuple[str, int]]:
        """(key, index) of the routes to shift."""
        names = [route.get("name") if isinstance(route, dict) else None for route in routes]
        one, several = self.layout.routes_word, f"{self.layout.routes_word}s"
        route_word = self.layout.route_word
        if self.routes is None:
            sides = (self.canary, self.stable)
            selected = [
                (names[i] or f"{self.layout.spec_key}[{i}]", i)
                for i, route in enumerate(routes)
                if isinstance(route, dict)
                and any(
                    self._is_side(side, entry)
                    for entry in route.get(self.layout.entries_key) or []
                    for side in sides
                )
            ]
            if not selected:
                raise Failed(
                    f"no {one} of {self.kind} {self.ref} sends traffic to "
                    f"{self.canary} or {self.stable}"
                )
            return selected
        known = ", ".join(name for name in names if name) or "none named"
        selected = []
        for name in self.routes:
            indexes = [i for i, candidate in enumerate(names) if candidate == name]
            if not indexes:
                raise Failed(
                    f"{route_word} {name!r} not found in {self.kind} {self.ref} "
                    f"({several}: {known})"
                )
            if len(indexes) > 1 and not self.layout.unique_names:
                used = f"is used by several {several} of {self.ref}"
                raise Failed(f"{route_word} name {name!r} {used}")
            selected.append((name, indexes[0]))
        return selected


def integer_weight(entry: dict[str, Any], default: int, where: str) -> int:
    """An entry's weight (`default` when missing); `where` names the route in the message."""
    value = entry.get("weight", default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Failed(f"{where} has a non-integer weight {value!r}")
    return value
