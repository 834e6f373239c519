"""What was observed of each side over one window: request counts by status, latency buckets."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from analysis.policy import MetricConventions


@dataclass(frozen=True)
class SideCounts:
    requests_by_status: dict[str, float] = field(default_factory=dict)
    # (upper bound in seconds, cumulative count); "+Inf" is math.inf.
    latency_buckets: tuple[tuple[float, float], ...] = ()

    @property
    def total(self) -> float:
        return sum(self.requests_by_status.values())

    def errors(self, conventions: MetricConventions) -> float:
        return sum(n for code, n in self.requests_by_status.items() if conventions.is_error(code))

    @property
    def has_data(self) -> bool:
        return bool(self.requests_by_status) or bool(self.latency_buckets)

    def to_json(self) -> dict[str, Any]:
        return {
            "requests_by_status": self.requests_by_status,
            "latency_buckets": {_le_text(le): count for le, count in self.latency_buckets},
        }

    def plus(self, other: SideCounts) -> SideCounts:
        """Both sets of requests counted as one (e.g. every pod of a service)."""
        statuses = dict(self.requests_by_status)
        for code, n in other.requests_by_status.items():
            statuses[code] = statuses.get(code, 0.0) + n
        buckets: dict[float, float] = dict(self.latency_buckets)
        for le, n in other.latency_buckets:
            buckets[le] = buckets.get(le, 0.0) + n
        return SideCounts(statuses, tuple(sorted(buckets.items())))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SideCounts:
        statuses = {str(k): float(v) for k, v in (data.get("requests_by_status") or {}).items()}
        buckets = tuple(
            sorted((float(le), float(n)) for le, n in (data.get("latency_buckets") or {}).items())
        )
        return cls(statuses, buckets)


def _le_text(le: float) -> str:
    return "+Inf" if le == float("inf") else repr(le)


@dataclass(frozen=True)
class Observation:
    """Both sides at one time, and what it cost to learn them."""

    time: float
    window_seconds: float
    canary: SideCounts
    baseline: SideCounts
    queries: tuple[str, ...] = ()
    round_trips: int = 0
    source: str = "prometheus"
    # Its query went out before the analysis' task ran, as its message arrived (worker/ahead.py).
    sent_ahead: bool = False
