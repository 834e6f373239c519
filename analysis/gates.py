"""How far a request may move a policy's thresholds: by default only towards stricter values.

A policy's `overrides` section says which thresholds a request may set (`allow`) and, per
threshold, within which bounds (`bounds`). Without a bound of its own a threshold may only move
the stricter way, so a holder of the API token can tighten a gate but never loosen it.
`min_requests` never goes below the policy's own value, whatever the bounds say.

"Stricter" means: makes a `pass` harder to get. STRICTER holds that direction per threshold;
a new threshold needs a row here (tests/unit/test_gates.py checks that every one has).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Direction = Literal["higher", "lower"]

STRICTER: dict[str, Direction] = {
    "slo": "higher",  # a smaller error allowance
    # The budget is the whole period's: a shorter period makes the same excess a larger share.
    "slo_period_days": "lower",
    "min_requests": "higher",  # more data before any verdict but inconclusive
    # Every check fails on evidence at level alpha (p < alpha, Wilson bounds at 1 - alpha):
    # a higher alpha fails a canary on less evidence. (Not "lower is stricter", as for a pass
    # that would need proof: here a pass is the absence of a significant failure.)
    "alpha": "higher",
    "sequential_alpha": "higher",  # the same for live polls: abort on less evidence
    "error_ratio_tolerance_pp": "lower",
    "error_rate_ratio_tolerance": "lower",
    "latency_ratio_tolerance": "lower",
    "fast_burn": "lower",  # fails at a lower burn rate
    "max_budget_spend": "lower",
    "max_latency_p50": "lower",  # unset (no limit) in a policy: any value is stricter
    "max_latency_p90": "lower",
    "max_latency_p95": "lower",
    "max_latency_p99": "lower",
    "pass_score": "higher",
    "marginal_score": "higher",  # below it a score fails instead of being inconclusive
}

# Thresholds that never go below the policy's value, even where a policy's bounds would allow it.
FLOOR_AT_POLICY = frozenset({"min_requests"})


class Bound(BaseModel):
    """Where a request may set one threshold. A side left out stays at the policy's value on
    the looser side, and is open on the stricter side."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Bound:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min must not be above max")
        return self


class OverrideRules(BaseModel):
    """A policy's `overrides`: which thresholds a request may set, and how far."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    allow: tuple[str, ...] | None = Field(
        None, description="thresholds a request may override; default: all of them"
    )
    bounds: dict[str, Bound] = Field(default_factory=dict)

    @field_validator("allow")
    @classmethod
    def _known_allow(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        _known(value or ())
        return value

    @field_validator("bounds")
    @classmethod
    def _known_bounds(cls, value: dict[str, Bound]) -> dict[str, Bound]:
        _known(value)
        return value

    def allows(self, name: str) -> bool:
        return self.allow is None or name in self.allow

    def range_for(self, name: str, policy_value: float | None) -> tuple[float | None, float | None]:
        """(lowest, highest) value a request may set; None = no limit from the policy."""
        low: float | None
        high: float | None
        bound = self.bounds.get(name)
        if STRICTER[name] == "higher":
            low = policy_value if bound is None or bound.min is None else bound.min
            high = None if bound is None else bound.max
        else:
            low = None if bound is None else bound.min
            high = policy_value if bound is None or bound.max is None else bound.max
        if name in FLOOR_AT_POLICY and policy_value is not None:
            low = policy_value if low is None else max(low, policy_value)
        return low, high


def refusal(
    rules: OverrideRules, policy: str, name: str, value: float, policy_value: float | None
) -> str | None:
    """Why the policy refuses `name=value` from a request, or None when it may."""
    if name not in STRICTER:  # fail closed: nobody said which way is stricter
        return f"{name} cannot be overridden: analysis/gates.py gives it no stricter direction"
    if not rules.allows(name):
        allowed = ", ".join(rules.allow or ()) or "none"
        return f"policy {policy!r} does not let a request override {name} (it allows: {allowed})"
    low, high = rules.range_for(name, policy_value)
    looser_side = "low" if STRICTER[name] == "higher" else "high"
    for side, limit, broken, words in (
        ("low", low, low is not None and value < low, "at least"),
        ("high", high, high is not None and value > high, "at most"),
    ):
        if broken:
            what = "would loosen" if side == looser_side else "is outside the bounds of"
            return f"{value:g} {what} policy {policy!r}: {name} must be {words} {limit:g}"
    return None


def _known(names: Iterable[str]) -> None:
    unknown = sorted(set(names) - set(STRICTER))
    if unknown:
        raise ValueError(f"unknown thresholds {unknown}; known: {', '.join(sorted(STRICTER))}")
