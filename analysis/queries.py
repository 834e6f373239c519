"""PromQL for one analysis: both sides, all statuses and all buckets in a single expression.

Only configuration supplies metric and label names (validated against Prometheus' grammar);
request values only ever appear as escaped string literals in equality matchers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from analysis.durations import format_duration
from analysis.observation import SideCounts
from analysis.policy import MetricConventions
from analysis.request import AnalysisSpec

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def promql_string(value: str) -> str:
    """A PromQL double-quoted string literal holding exactly `value`."""
    if any(ord(ch) < 0x20 and ch not in _ESCAPES for ch in value):
        raise ValueError("control characters cannot be put into a query")
    return '"' + "".join(_ESCAPES.get(ch, ch) for ch in value) + '"'


def _matchers(conv: _Names, service: str, namespace: str | None, side_value: str) -> str:
    pairs = [(conv.service_label, service)]
    if conv.namespace_label and namespace is not None:
        pairs.append((conv.namespace_label, namespace))
    pairs.extend(conv.matchers)
    pairs.append((conv.selector_label, side_value))
    return "{" + ", ".join(f"{name}={promql_string(value)}" for name, value in pairs) + "}"


@dataclass(frozen=True)
class _Names:
    """The conventions a query is built from, hashable: the key of the expression cache."""

    requests_metric: str
    latency_bucket_metric: str
    status_label: str
    selector_label: str
    service_label: str
    namespace_label: str | None
    matchers: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, conv: MetricConventions) -> _Names:
        return cls(
            conv.requests_metric,
            conv.latency_bucket_metric,
            conv.status_label,
            conv.selector_label,
            conv.service_label,
            conv.namespace_label,
            tuple(sorted(conv.matchers.items())),
        )


@dataclass(frozen=True)
class AnalysisQuery:
    expr: str
    conventions: MetricConventions
    canary: str
    baseline: str


def build_query(spec: AnalysisSpec, seconds: float | None = None) -> AnalysisQuery:
    """One expression: requests by (selector, status) `or` buckets by (selector, le), each the
    count over the last `seconds` (default: the spec's window).

    A count is the counter's value now minus its value `seconds` ago (`offset`): whole numbers,
    exactly what arrived in between. `increase()` would extrapolate to the range's edges and
    inflate a 1-minute interval's counts by up to a third (scrapes 15 s apart), and an exact test
    on inflated counts over-rejects. `increase()` still answers for a series the difference
    cannot serve: one that is new (absent `seconds` ago) or went down (a counter reset).
    The halves have disjoint label sets, so `or` returns every series of both: one round trip.
    """
    conv = spec.policy.conventions
    rng = format_duration(spec.window_seconds if seconds is None else seconds)
    names = _Names.of(conv)
    expr = _expression(names, spec.service, spec.namespace, spec.canary, spec.baseline, rng)
    return AnalysisQuery(expr, conv, spec.canary, spec.baseline)


# A canary polled again asks the same expression: built once (string building and escaping
# were ~4 % of a worker's CPU per analysis).
@lru_cache(maxsize=4096)
def _expression(
    conv: _Names, service: str, namespace: str | None, canary: str, baseline: str, rng: str
) -> str:
    sel = conv.selector_label

    def matched(metric: str, value: str) -> str:
        return f"{metric}{_matchers(conv, service, namespace, value)}"

    def selectors(metric: str, suffix: str = "") -> str:
        return " or ".join(f"{matched(metric, value)}{suffix}" for value in (canary, baseline))

    def counted(metric: str, by: str) -> str:
        now = f"sum by ({sel}, {by}) ({selectors(metric)})"
        before = f"sum by ({sel}, {by}) ({selectors(metric, f' offset {rng}')})"
        increases = " or ".join(
            f"increase({matched(metric, value)}[{rng}])" for value in (canary, baseline)
        )
        fallback = f"sum by ({sel}, {by}) ({increases})"
        return f"(({now} - {before}) >= 0) or {fallback}"

    requests = counted(conv.requests_metric, conv.status_label)
    buckets = counted(conv.latency_bucket_metric, "le")
    return f"{requests} or {buckets}"


def parse_vector(
    query: AnalysisQuery, series: list[dict[str, Any]]
) -> tuple[SideCounts, SideCounts]:
    """Split a result vector (instant query: `value`) into canary and baseline counts."""
    return split_samples(query, [(s["metric"], float(s["value"][1])) for s in series])


def split_samples(
    query: AnalysisQuery, samples: list[tuple[dict[str, str], float]]
) -> tuple[SideCounts, SideCounts]:
    conv = query.conventions
    statuses: dict[str, dict[str, float]] = {query.canary: {}, query.baseline: {}}
    buckets: dict[str, list[tuple[float, float]]] = {query.canary: [], query.baseline: []}
    for labels, value in samples:
        side = labels.get(conv.selector_label, "")
        if side not in statuses:
            continue
        if "le" in labels:
            # A NaN bucket stays: Prometheus' histogram_quantile answers NaN for it, and so do we.
            buckets[side].append((_parse_le(labels["le"]) * conv.latency_unit_seconds, value))
        elif not math.isnan(value):
            code = labels.get(conv.status_label, "")
            statuses[side][code] = statuses[side].get(code, 0.0) + value

    def counts(value: str) -> SideCounts:
        return SideCounts(statuses[value], tuple(sorted(buckets[value])))

    return counts(query.canary), counts(query.baseline)


def _parse_le(text: str) -> float:
    return math.inf if text in ("+Inf", "Inf", "+inf", "inf") else float(text)
