"""The one-number-per-metric contract: `POST /metrics/analysis` answers one value per metric.

Templates in the wild read `{$.value}` from `{"value": 98.7, "unit": "%", "timestamp": …}`
for a `metricName`, a time range and a few labels, and let Argo judge it
(`successCondition: result >= 99`). The labels are the contract's own names, mapped through a
policy's metric conventions: `service`, `namespace` and `rollout` (the selector value that
names the pods: a pod-template hash, or a version for the otel preset). One PromQL round trip
reads the side's requests by status and its latency buckets; no data is `null`, never 100 %.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from analysis.durations import format_duration, format_time, parse_duration, parse_time
from analysis.histogram import histogram_quantile
from analysis.observation import SideCounts
from analysis.policy import MetricConventions, Policy, PolicySet
from analysis.queries import promql_string
from analysis.request import (
    FUTURE_SKEW_SECONDS,
    LABEL_VALUE_PATTERN,
    PolicyName,
    RequestError,
    TimeText,
)

LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=253)]
LABELS = ("service", "namespace", "rollout")


class OneNumberRequest(BaseModel):
    """The body of POST /metrics/analysis."""

    model_config = ConfigDict(extra="forbid")

    metricName: str = Field(max_length=64, description="one of the names listed in the docs")
    startTimestamp: TimeText = Field(description="RFC 3339 start of the range")
    endTimestamp: TimeText = Field(description="RFC 3339 end of the range")
    labels: dict[str, LabelValue] = Field(
        max_length=len(LABELS), description="service (required), namespace, rollout"
    )
    policy: PolicyName = Field("default", description="policy whose metric conventions apply")


@dataclass(frozen=True)
class Metric:
    unit: str
    value: Callable[[SideCounts, MetricConventions, float, Policy], float | None]


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole > 0 else None


def _success(side: SideCounts, conv: MetricConventions, _w: float, _p: Policy) -> float | None:
    errors = _ratio(side.errors(conv), side.total)
    return None if errors is None else 100 * (1 - errors)


def _errors(side: SideCounts, conv: MetricConventions, _w: float, _p: Policy) -> float | None:
    errors = _ratio(side.errors(conv), side.total)
    return None if errors is None else 100 * errors


def _rate(side: SideCounts, _c: MetricConventions, window: float, _p: Policy) -> float | None:
    return side.total / window


def _burn(side: SideCounts, conv: MetricConventions, _w: float, policy: Policy) -> float | None:
    errors = _ratio(side.errors(conv), side.total)
    return None if errors is None else errors / (1 - policy.thresholds.slo)


def _latency(q: float) -> Callable[[SideCounts, MetricConventions, float, Policy], float | None]:
    def value(side: SideCounts, _c: MetricConventions, _w: float, _p: Policy) -> float | None:
        if not side.latency_buckets or side.latency_buckets[-1][1] <= 0:
            return None
        return 1000 * histogram_quantile(q, side.latency_buckets)

    return value


METRICS: dict[str, Metric] = {
    "http_success_rate": Metric("%", _success),
    "http_error_rate": Metric("%", _errors),
    "http_request_rate": Metric("req/s", _rate),
    "error_budget_burn_rate": Metric("x", _burn),  # error ratio / (1 - SLO); 1 spends on time
    **{f"http_latency_p{q}": Metric("ms", _latency(q / 100)) for q in (50, 90, 95, 99)},
}


@dataclass(frozen=True)
class OneNumberSpec:
    metric: str
    policy: Policy
    matchers: tuple[tuple[str, str], ...]  # (Prometheus label, value), conventions applied
    window_seconds: float
    end: float
    # The request's own labels (service, namespace, rollout), before the conventions.
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def unit(self) -> str:
        return METRICS[self.metric].unit

    def query(self) -> str:
        """Requests by status `or` buckets by le, of this one side: one round trip."""
        conv = self.policy.conventions
        pairs = (*self.matchers, *sorted(conv.matchers.items()))
        selector = "{" + ", ".join(f"{k}={promql_string(v)}" for k, v in pairs) + "}"
        rng = format_duration(self.window_seconds)
        requests = (
            f"sum by ({conv.status_label}) (increase({conv.requests_metric}{selector}[{rng}]))"
        )
        buckets = f"sum by (le) (increase({conv.latency_bucket_metric}{selector}[{rng}]))"
        return f"{requests} or {buckets}"

    def value(self, samples: list[tuple[dict[str, str], float]]) -> float | None:
        """The metric from the query's samples; None when there is nothing to say."""
        return self.value_of(self.side(samples))

    def value_of(self, side: SideCounts) -> float | None:
        """The metric from the side's counts (a query's, or a recording's); None: no data."""
        if not side.has_data:
            return None  # no series at all: unknown, not healthy
        conv = self.policy.conventions
        value = METRICS[self.metric].value(side, conv, self.window_seconds, self.policy)
        return value if value is not None and math.isfinite(value) else None

    def side(self, samples: list[tuple[dict[str, str], float]]) -> SideCounts:
        """The query's samples as counts: requests by status, latency buckets."""
        conv = self.policy.conventions
        statuses: dict[str, float] = {}
        buckets: list[tuple[float, float]] = []
        for labels, count in samples:
            if math.isnan(count):
                continue
            if "le" in labels:
                le = math.inf if labels["le"] in ("+Inf", "Inf") else float(labels["le"])
                buckets.append((le * conv.latency_unit_seconds, count))
            else:
                code = labels.get(conv.status_label, "")
                statuses[code] = statuses.get(code, 0.0) + count
        return SideCounts(statuses, tuple(sorted(buckets)))

    def answer(self, value: float | None) -> dict[str, Any]:
        return {"value": value, "unit": self.unit, "timestamp": format_time(self.end)}


def resolve_one_number(data: Any, policies: PolicySet, *, now: float) -> OneNumberSpec:
    """Validate a raw body; raises RequestError naming the field (`labels.pod`, `metricName`)."""
    if not isinstance(data, dict):
        raise RequestError("body", "must be a JSON object")
    try:
        request = OneNumberRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"] if p != "[key]") or "body"
        message = {"missing": "is required", "extra_forbidden": "is not a known field"}.get(
            first["type"], str(first["msg"])
        )
        raise RequestError(field, message) from None
    if request.metricName not in METRICS:
        raise RequestError(
            "metricName", f"unknown metric {request.metricName!r}; known: {', '.join(METRICS)}"
        )
    policy = policies.get(request.policy)
    if policy is None:
        raise RequestError(
            "policy", f"unknown policy {request.policy!r}; known: {policies.names()}"
        )
    start, end = (
        _time("startTimestamp", request.startTimestamp, now),
        _time("endTimestamp", request.endTimestamp, now),
    )
    if end > now + FUTURE_SKEW_SECONDS:
        raise RequestError("endTimestamp", "is in the future")
    window = round(end - start)
    if window < 1:
        raise RequestError("startTimestamp", "must be at least 1 s before endTimestamp")
    if window > parse_duration(policy.max_window):
        raise RequestError("startTimestamp", f"the range is longer than {policy.max_window}")
    matchers = _matchers(request.labels, policy)
    labels = tuple(sorted(request.labels.items()))
    return OneNumberSpec(request.metricName, policy, matchers, window, end, labels)


def _time(field: str, text: str, now: float) -> float:
    try:
        value = parse_time(text, now=now)
    except (ValueError, OverflowError) as exc:
        raise RequestError(field, str(exc)) from None
    if not math.isfinite(value) or value < 0:
        raise RequestError(field, "must be a time after 1970")
    return value


def _matchers(labels: dict[str, str], policy: Policy) -> tuple[tuple[str, str], ...]:
    conv = policy.conventions
    names = {"service": conv.service_label, "namespace": conv.namespace_label}
    names["rollout"] = conv.selector_label
    for label in labels:
        if label not in LABELS:
            raise RequestError(f"labels.{label}", f"unknown label; known: {', '.join(LABELS)}")
        if names[label] is None:
            raise RequestError(f"labels.{label}", f"policy {policy.name!r} has no {label} label")
    if "service" not in labels:
        raise RequestError("labels.service", "is required")
    return tuple((str(names[label]), labels[label]) for label in LABELS if label in labels)
