"""The router interface: what the traffic engine needs to know about one routing object.

A router (Flagger's word) is the canary's routing object in the cluster — an Istio
`VirtualService`, a Gateway API `HTTPRoute` — together with which of its routes and backends are
the canary and the stable side. It does no I/O: `worker.traffic.shift` reads the object, asks the
router for the current weights (`read_weights`), asks it for the JSON Patch that sets new ones
under optimistic concurrency (`weight_patch`), sends it and retries on conflicts; `describe`
turns a change into words for logs.

Weights are handled as a share in percent of a route's total, so a policy's `step: 10` and
`max_weight: 50` mean the same on every router: Istio's routes always total 100, an HTTPRoute
rule totals whatever its backends weigh (the sum is kept).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Protocol

Goal = Callable[[str, Fraction], Fraction | int]  # (route key, canary percent now) -> percent


class Failed(Exception):
    """Stop with status "failed"; the message is the user-facing reason."""


@dataclass(frozen=True)
class RouteWeights:
    """The canary and stable entries of one route, as read, and the weights to give them."""

    key: str  # route name, or e.g. "http[1]" for an unnamed route
    canary_path: str  # JSON pointer of the canary entry, e.g. /spec/http/1/route/0
    stable_path: str
    canary_entry: dict[str, Any]
    stable_entry: dict[str, Any]
    old: tuple[int, int]  # (canary, stable)
    new: tuple[int, int]
    total: int  # what all backends of the route weigh together (Istio: always 100)


class Router(Protocol):
    """One routing object and the canary/stable roles in it (see the module doc)."""

    group: ClassVar[str]  # e.g. "networking.istio.io"
    plural: ClassVar[str]  # e.g. "virtualservices"
    kind: ClassVar[str]  # e.g. "VirtualService"

    @property
    def namespace(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def api_version(self) -> str: ...

    @property
    def ref(self) -> str:
        """ "namespace/name", for records and messages."""
        ...

    @property
    def routes(self) -> list[str] | None:
        """The route names asked for (None: every route with a canary or stable backend)."""
        ...

    def read_weights(self, obj: dict[str, Any], goal: Goal) -> tuple[list[RouteWeights], list[str]]:
        """Current and wanted weights of each route to shift, and notes on routes left alone.

        Raises Failed when the object does not hold what the target names."""
        ...

    def weight_patch(self, plans: list[RouteWeights], revision: str) -> list[dict[str, Any]]:
        """RFC 6902 ops that set the new weights only if nothing we read has changed."""
        ...

    def describe(self, plans: list[RouteWeights]) -> str:
        """The change in words, e.g. "VirtualService shop/reviews primary: canary 20→0"."""
        ...


def split(key: str, old: tuple[int, int], others: int, total: int, goal: Goal) -> tuple[int, int]:
    """New (canary, stable) weights: the canary gets `goal` percent of `total` (capped at what
    other backends leave), the stable side the rest; other backends keep their weight."""
    room = total - others  # what canary + stable may share
    if room < 0:
        raise Failed(f"route {key!r}: other destinations already weigh {others} > {total}")
    if total <= 0:
        return old  # a route that sends nothing has no share to move
    wanted = goal(key, Fraction(old[0] * 100, total))
    canary = max(0, min(round(Fraction(wanted) * total / 100), room))
    return canary, room - canary


def patch_ops(
    plans: list[RouteWeights],
    revision: str,
    identity: Callable[[dict[str, Any], str], list[dict[str, Any]]],
    has_weight: Callable[[dict[str, Any]], bool],
) -> list[dict[str, Any]]:
    """Tests first (resourceVersion, each entry's identity and its old weight), then the writes.

    A concurrent writer makes a `test` fail (422) instead of being overwritten."""
    tests: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": revision}
    ]
    writes: list[dict[str, Any]] = []
    for plan in plans:
        pairs = (
            (plan.canary_path, plan.canary_entry, plan.old[0], plan.new[0]),
            (plan.stable_path, plan.stable_entry, plan.old[1], plan.new[1]),
        )
        for base, entry, old, new in pairs:
            if old == new:
                continue
            tests.extend(identity(entry, base))
            if has_weight(entry):
                tests.append({"op": "test", "path": f"{base}/weight", "value": old})
                writes.append({"op": "replace", "path": f"{base}/weight", "value": new})
            else:
                writes.append({"op": "add", "path": f"{base}/weight", "value": new})
    return tests + writes


def describe_plans(kind: str, ref: str, plans: list[RouteWeights]) -> str:
    changes = [
        f"{p.key}: canary {p.old[0]}→{p.new[0]}, stable {p.old[1]}→{p.new[1]}" for p in plans
    ]
    return f"{kind} {ref} " + ("; ".join(changes) or "no route")
