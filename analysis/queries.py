"""PromQL for one analysis: both sides, all statuses and all buckets in a single expression.

Only configuration supplies metric and label names (validated against Prometheus' grammar);
request values only ever appear as escaped string literals in equality matchers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


def _matchers(conv: MetricConventions, spec: AnalysisSpec, side_value: str) -> str:
    pairs = [(conv.service_label, spec.service)]
    if conv.namespace_label and spec.namespace is not None:
        pairs.append((conv.namespace_label, spec.namespace))
    pairs.extend(sorted(conv.matchers.items()))
    pairs.append((conv.selector_label, side_value))
    return "{" + ", ".join(f"{name}={promql_string(value)}" for name, value in pairs) + "}"


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
    sel = conv.selector_label

    def selectors(metric: str, suffix: str = "") -> str:
        return " or ".join(
            f"{metric}{_matchers(conv, spec, value)}{suffix}"
            for value in (spec.canary, spec.baseline)
        )

    def counted(metric: str, by: str) -> str:
        now = f"sum by ({sel}, {by}) ({selectors(metric)})"
        before = f"sum by ({sel}, {by}) ({selectors(metric, f' offset {rng}')})"
        increases = " or ".join(
            f"increase({metric}{_matchers(conv, spec, value)}[{rng}])"
            for value in (spec.canary, spec.baseline)
        )
        fallback = f"sum by ({sel}, {by}) ({increases})"
        return f"(({now} - {before}) >= 0) or {fallback}"

    requests = counted(conv.requests_metric, conv.status_label)
    buckets = counted(conv.latency_bucket_metric, "le")
    return AnalysisQuery(f"{requests} or {buckets}", conv, spec.canary, spec.baseline)


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
