"""One analysis end to end (observe → judge) and its JSON report, the webhook's answer body.

NaN and infinities never reach JSON: a missing value is null.
"""

from __future__ import annotations

import math
import time
from typing import Any

from analysis.durations import format_time
from analysis.judge import Judgement, judge
from analysis.observation import Observation
from analysis.request import AnalysisSpec
from analysis.sources import MetricsSource


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN/±Inf → None, tuples → lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def report(spec: AnalysisSpec, observation: Observation, judgement: Judgement) -> dict[str, Any]:
    c, b, budget = judgement.canary, judgement.baseline, judgement.budget
    end = observation.time
    body = {
        "verdict": judgement.verdict,
        "score": judgement.score,
        "reasons": judgement.reasons,
        "service": spec.service,
        "namespace": spec.namespace,
        "canary": spec.canary,
        "baseline": spec.baseline,
        "rollout": spec.rollout,
        "revision": spec.revision,
        "policy": spec.policy.name,
        "traffic": spec.traffic,
        "window": {
            "start": format_time(end - spec.window_seconds),
            "end": format_time(end),
            "seconds": spec.window_seconds,
        },
        "requests": {"canary": c.total, "baseline": b.total},
        "errors": {"canary": c.errors, "baseline": b.errors},
        "metrics": {
            "success_rate": {"canary": c.success_rate, "baseline": b.success_rate},
            "latency_seconds": {
                label: {"canary": c.quantiles[label], "baseline": b.quantiles[label]}
                for label in c.quantiles
            },
            "error_budget": {
                "slo": budget.slo,
                "burn_canary": budget.burn_canary,
                "burn_baseline": budget.burn_baseline,
                "burn_delta": budget.burn_delta,
                "excess_errors": budget.excess_errors,
                "budget_delta": budget.budget_delta,
            },
        },
        "checks": [
            {
                "name": ch.name,
                "verdict": ch.verdict,
                "critical": ch.critical,
                "weight": ch.weight,
                "canary": ch.canary,
                "baseline": ch.baseline,
                "limit": ch.limit,
                "p_value": ch.p_value,
                "method": ch.method,
                "reason": ch.reason,
            }
            for ch in judgement.checks
        ],
        "source": {
            "kind": observation.source,
            "round_trips": observation.round_trips,
            "queries": list(observation.queries),
        },
    }
    cleaned: dict[str, Any] = clean(body)
    return cleaned


def run_analysis(
    spec: AnalysisSpec,
    source: MetricsSource,
    *,
    end: float | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Observe and judge; `end` defaults to the spec's, then to the source's "latest"."""
    at = end if end is not None else spec.end
    if at is None:
        at = source.latest_time(spec, time.time())
    observation = source.observe(spec, at, deadline)
    return report(spec, observation, judge(observation, spec.policy))
