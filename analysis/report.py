"""One analysis end to end (observe → judge) and its JSON report, the webhook's answer body.

NaN and infinities never reach JSON: a missing value is null.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

from analysis.durations import format_time
from analysis.judge import Judgement, judge
from analysis.observation import Observation
from analysis.request import AnalysisSpec
from analysis.sequential import HISTORY_KEPT, SequentialJudgement
from analysis.sources import MetricsSource

# What orjson writes and reads back is `clean`'s copy for JSON's own types (NaN/±Inf → null,
# tuples → lists). Other values (a subclass of a builtin, a dataclass, a date, a key not a str,
# an integer past 64 bits) go to `default`, which refuses them, and `clean` takes the whole
# value. Enums and UUIDs, which orjson writes itself, come back as the JSON they are stored as.
_PLAIN_ONLY = (
    orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
)


def _refuse(value: Any) -> Any:
    raise TypeError(type(value).__name__)


def json_safe(value: Any) -> Any:
    """`clean(value)`, through orjson where it gives the same: a report's ~200 values are
    copied in C instead of one Python call each (~18 % of judging and reporting by opcodes)."""
    try:
        return orjson.loads(orjson.dumps(value, default=_refuse, option=_PLAIN_ONLY))
    except TypeError:
        return clean(value)


def clean(value: Any) -> Any:
    """JSON-safe copy: NaN/±Inf → None, tuples → lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


def report(
    spec: AnalysisSpec,
    observation: Observation,
    judgement: Judgement,
    sequence: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The answer body; `sequence` is given for a live poll, whose numbers are cumulative over
    the canary's sequence (the window then runs from the sequence's start)."""
    c, b, budget = judgement.canary, judgement.baseline, judgement.budget
    end = observation.time
    seconds = end - sequence["started_at"] if sequence else spec.window_seconds
    source: dict[str, Any] = {
        "kind": observation.source,
        "round_trips": observation.round_trips,
        "queries": list(observation.queries),
    }
    if observation.sent_ahead:  # its query went as the task's message arrived (worker/ahead.py)
        source["sent_ahead"] = True
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
        "mode": "sequential" if sequence else "fixed",
        "live": spec.live,
        "window": {
            "start": format_time(end - seconds),
            "end": format_time(end),
            "seconds": seconds,
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
        # Cumulative counts per bucket bound, as Prometheus keeps them: the report page draws
        # the two latency distributions from these.
        "histograms": {"canary": _buckets(c.buckets), "baseline": _buckets(b.buckets)},
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
                "e_value": ch.e_value,
                "threshold": ch.threshold,
                "method": ch.method,
                "reason": ch.reason,
            }
            for ch in judgement.checks
        ],
        "source": source,
    }
    if sequence:
        body["sequence"] = sequence
    cleaned: dict[str, Any] = json_safe(body)
    return cleaned


def live_report(
    spec: AnalysisSpec, observation: Observation, result: SequentialJudgement, sequence_id: str
) -> dict[str, Any]:
    """The answer to one live poll: the verdict on everything the canary's sequence has seen."""
    seq = result.sequence
    interval_start = observation.time - observation.window_seconds
    sequence = {
        "id": sequence_id,
        "started_at": seq.started_at,
        "polls": seq.polls,
        "new": seq.polls == 1 and observation.window_seconds > 0,
        "alpha": spec.policy.thresholds.sequential_alpha,
        "interval": {
            "start": format_time(interval_start),
            "end": format_time(observation.time),
            "seconds": observation.window_seconds,
        },
        "history": seq.history[-HISTORY_KEPT:],  # a sequence stored by an older version kept 100
    }
    return report(spec, observation, result.judgement, sequence)


def _buckets(buckets: tuple[tuple[float, float], ...]) -> dict[str, float]:
    return {("+Inf" if math.isinf(le) else repr(le)): count for le, count in buckets}


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
