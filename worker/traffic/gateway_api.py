"""The Gateway API router: weights of a canary and a stable `backendRef` in `HTTPRoute` rules.

`gateway.networking.k8s.io/v1` (or v1beta1, same schema). Only the two backendRefs' weights in
the chosen rules change; other rules, matches, filters and backends stay as they are. A rule's
weights are relative and may sum to anything: the sum is kept, the canary gets the asked share of
it (capped at what other backends leave) and the stable backend the rest. A backendRef without a
weight weighs 1, as the Gateway API defines.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worker.traffic.router import (
    Failed,
    Goal,
    RouteWeights,
    describe_plans,
    patch_ops,
    split,
)

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSIONS = ("v1", "v1beta1")
PLURAL = "httproutes"
DEFAULT_WEIGHT = 1  # the Gateway API's default for a backendRef without `weight`
IDENTITY_FIELDS = ("group", "kind", "name", "namespace", "port")


class Backend(BaseModel):
    """A backendRef by its identity: a Service name (and port, namespace when they matter)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    port: int | None = Field(None, ge=1, le=65535)
    namespace: str | None = None  # None: the HTTPRoute's own namespace
    kind: str = "Service"
    group: str = ""

    def matches(self, ref: Any, route_namespace: str) -> bool:
        """Same backend as `ref`, with the API's defaults (core group, Service, same namespace);
        a port we do not name matches any port."""
        return (
            isinstance(ref, dict)
            and ref.get("name") == self.name
            and ref.get("group", "") == self.group
            and ref.get("kind", "Service") == self.kind
            and ref.get("namespace", route_namespace) == (self.namespace or route_namespace)
            and (self.port is None or ref.get("port") == self.port)
        )

    def __str__(self) -> str:
        return f"{self.name}:{self.port}" if self.port else self.name


class HTTPRouteTarget(BaseModel):
    """An HTTPRoute's canary and stable backends: the Gateway API implementation of Router."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    group: ClassVar[str] = GATEWAY_GROUP
    plural: ClassVar[str] = PLURAL
    kind: ClassVar[str] = "HTTPRoute"

    http_route: str = Field(min_length=1)
    namespace: str = Field(min_length=1)
    # Names of `spec.rules[]`; None = every rule with the canary or the stable backend.
    routes: list[str] | None = None
    canary: Backend
    stable: Backend
    api_version: str = f"{GATEWAY_GROUP}/v1"

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("routes must be a non-empty list of distinct rule names (or omitted)")
        return value

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        group, _, version = value.partition("/")
        if group != GATEWAY_GROUP or version not in GATEWAY_VERSIONS:
            allowed = ", ".join(f"{GATEWAY_GROUP}/{v}" for v in GATEWAY_VERSIONS)
            raise ValueError(f"api_version must be one of {allowed}")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> HTTPRouteTarget:
        if self.canary == self.stable:
            raise ValueError("canary and stable must be different backends")
        return self

    @property
    def name(self) -> str:
        return self.http_route

    @property
    def version(self) -> str:
        return self.api_version.partition("/")[2]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.http_route}"

    # --- Router ---------------------------------------------------------------------------------
    def read_weights(self, obj: dict[str, Any], goal: Goal) -> tuple[list[RouteWeights], list[str]]:
        rules = (obj.get("spec") or {}).get("rules") or []
        if not isinstance(rules, list):
            raise Failed(f"HTTPRoute {self.ref} has a malformed spec.rules")
        plans: list[RouteWeights] = []
        skipped: list[str] = []
        for key, index in self._select_rules(rules):
            refs = rules[index].get("backendRefs") or []
            found = self._roles(key, refs, skipped)
            if found is None:
                continue
            canary, stable = refs[found[0]], refs[found[1]]
            weights = [_weight(ref, key) for ref in refs if isinstance(ref, dict)]
            old = (_weight(canary, key), _weight(stable, key))
            total = sum(weights)
            new = split(key, old, total - sum(old), total, goal)
            base = f"/spec/rules/{index}/backendRefs"
            plans.append(
                RouteWeights(
                    key, f"{base}/{found[0]}", f"{base}/{found[1]}", canary, stable, old, new, total
                )
            )
        if not plans:
            raise Failed(f"no rule of HTTPRoute {self.ref} to shift: {'; '.join(skipped)}")
        return plans, skipped

    def weight_patch(self, plans: list[RouteWeights], revision: str) -> list[dict[str, Any]]:
        def identity(ref: dict[str, Any], base: str) -> list[dict[str, Any]]:
            return [
                {"op": "test", "path": f"{base}/{field}", "value": ref[field]}
                for field in IDENTITY_FIELDS
                if field in ref
            ]

        return patch_ops(plans, revision, identity, lambda ref: "weight" in ref)

    def describe(self, plans: list[RouteWeights]) -> str:
        return describe_plans(self.kind, self.ref, plans)

    # --- reading the HTTPRoute ------------------------------------------------------------------
    def _roles(self, key: str, refs: list[Any], skipped: list[str]) -> tuple[int, int] | None:
        found: list[int] = []
        for role, backend in (("canary", self.canary), ("stable", self.stable)):
            matches = [j for j, ref in enumerate(refs) if backend.matches(ref, self.namespace)]
            problem = f"rule {key!r} has %s {role} backend {backend}"
            if len(matches) > 1:
                raise Failed(f"{problem % 'more than one'} in HTTPRoute {self.ref}")
            if not matches and self.routes is not None:
                raise Failed(f"{problem % 'no'} in HTTPRoute {self.ref}")
            if not matches:
                skipped.append(problem % "no")  # one side only (e.g. a header rule): no split
                return None
            found.append(matches[0])
        return found[0], found[1]

    def _select_rules(self, rules: list[Any]) -> list[tuple[str, int]]:
        names = [rule.get("name") if isinstance(rule, dict) else None for rule in rules]
        if self.routes is None:
            ours = (self.canary, self.stable)
            selected = [
                (names[i] or f"rules[{i}]", i)
                for i, rule in enumerate(rules)
                if isinstance(rule, dict)
                and any(
                    b.matches(ref, self.namespace)
                    for ref in rule.get("backendRefs") or []
                    for b in ours
                )
            ]
            if not selected:
                raise Failed(
                    f"no rule of HTTPRoute {self.ref} sends traffic to {self.canary} or "
                    f"{self.stable}"
                )
            return selected
        known = ", ".join(name for name in names if name) or "none named"
        selected = []
        for name in self.routes:
            indexes = [i for i, candidate in enumerate(names) if candidate == name]
            if not indexes:
                raise Failed(f"rule {name!r} not found in HTTPRoute {self.ref} (rules: {known})")
            selected.append((name, indexes[0]))  # the API server keeps rule names unique
        return selected


def _weight(ref: dict[str, Any], key: str) -> int:
    value = ref.get("weight", DEFAULT_WEIGHT)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Failed(f"rule {key!r} has a non-integer weight {value!r}")
    return value
