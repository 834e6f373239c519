"""The Gateway API router: weights of a canary and a stable `backendRef` in `HTTPRoute` rules.

`gateway.networking.k8s.io/v1` (or v1beta1, same schema). Only the two backendRefs' weights in
the chosen rules change; other rules, matches, filters and backends stay as they are. A rule's
weights are relative and may sum to anything: the sum is kept, the canary gets the asked share of
it (capped at what other backends leave) and the stable backend the rest. A backendRef without a
weight weighs 1, as the Gateway API defines.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from worker.traffic.router import Goal, split
from worker.traffic.target import ObjectLayout, RouterTarget, integer_weight

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSIONS = ("v1", "v1beta1")
PLURAL = "httproutes"
DEFAULT_WEIGHT = 1  # the Gateway API's default for a backendRef without `weight`
IDENTITY_FIELDS = ("group", "kind", "name", "namespace", "port")
# The API server keeps rule names unique.
HTTP_ROUTE = ObjectLayout(
    GATEWAY_VERSIONS, "rules", "backendRefs", "rule", "rule", "backend", unique_names=True
)


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


class HTTPRouteTarget(RouterTarget):
    """An HTTPRoute's canary and stable backends: the Gateway API implementation of Router."""

    group: ClassVar[str] = GATEWAY_GROUP
    plural: ClassVar[str] = PLURAL
    kind: ClassVar[str] = "HTTPRoute"
    layout: ClassVar[ObjectLayout] = HTTP_ROUTE

    http_route: str = Field(min_length=1)
    namespace: str = Field(min_length=1)
    # Names of `spec.rules[]`; None = every rule with the canary or the stable backend.
    routes: list[str] | None = None
    canary: Backend
    stable: Backend
    api_version: str = f"{GATEWAY_GROUP}/v1"

    @property
    def name(self) -> str:
        return self.http_route

    def _is_side(self, side: Backend, entry: Any) -> bool:
        return side.matches(entry, self.namespace)

    def _split(
        self, key: str, entries: list[Any], found: tuple[int, int], goal: Goal
    ) -> tuple[tuple[int, int], tuple[int, int], int]:
        """Weights are relative: the rule's sum is kept, split as `goal` asks."""
        where = f"rule {key!r}"
        weights = [_weight(ref, where) for ref in entries if isinstance(ref, dict)]
        old = (_weight(entries[found[0]], where), _weight(entries[found[1]], where))
        total = sum(weights)
        return old, split(key, old, total - sum(old), total, goal), total

    def _identity(self, entry: dict[str, Any], base: str) -> list[dict[str, Any]]:
        return [
            {"op": "test", "path": f"{base}/{field}", "value": entry[field]}
            for field in IDENTITY_FIELDS
            if field in entry
        ]


def _weight(ref: dict[str, Any], where: str) -> int:
    return integer_weight(ref, DEFAULT_WEIGHT, where)
