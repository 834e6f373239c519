"""Policies: where the metrics live (a preset of metric conventions) and what the verdict demands.

A policy is named, loaded from YAML and validated; `default` is built in. Requests may override the
numeric thresholds only, never metric names or label names, so a request can never shape PromQL.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from analysis.durations import parse_duration
from analysis.gates import OverrideRules, refusal

# Prometheus' grammar for label and metric names: configuration only ever puts these into PromQL.
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
POLICY_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MetricConventions(Strict):
    """Where to ask: metric and label names of one convention (Flagger's 'observer')."""

    requests_metric: str
    status_label: str
    error_regex: str = "5.."
    latency_bucket_metric: str
    # Multiply a bucket's `le` by this to get seconds (Istio reports milliseconds).
    latency_unit_seconds: float = Field(1.0, gt=0)
    selector_label: str = "rollouts_pod_template_hash"
    service_label: str
    namespace_label: str | None
    matchers: dict[str, str] = Field(default_factory=dict)

    @field_validator("requests_metric", "latency_bucket_metric")
    @classmethod
    def _metric_name(cls, value: str) -> str:
        if not METRIC_NAME.match(value):
            raise ValueError(f"{value!r} is not a Prometheus metric name")
        return value

    @field_validator("status_label", "selector_label", "service_label", "namespace_label")
    @classmethod
    def _label_name(cls, value: str | None) -> str | None:
        if value is not None and (not LABEL_NAME.match(value) or value.startswith("__")):
            raise ValueError(f"{value!r} is not a usable Prometheus label name")
        return value

    @field_validator("matchers")
    @classmethod
    def _matcher_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not LABEL_NAME.match(name) or name.startswith("__"):
                raise ValueError(f"matcher {name!r} is not a usable Prometheus label name")
        return value

    @field_validator("error_regex")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"error_regex does not compile: {exc}") from exc
        return value

    def is_error(self, status: str) -> bool:
        # Prometheus regex matchers are anchored; so is this.
        return re.fullmatch(self.error_regex, status) is not None


PRESETS: dict[str, MetricConventions] = {
    "http": MetricConventions(
        requests_metric="http_requests_total",
        status_label="code",
        latency_bucket_metric="http_request_duration_seconds_bucket",
        service_label="service",
        namespace_label="namespace",
    ),
    # OpenTelemetry HTTP server semantic conventions as Prometheus stores them: no request
    # counter, the count is the duration histogram's `_count`; a request that got no status code
    # (the label is absent, `error_type` says why) is an error. Service by `service_name` (or,
    # overridden, `job`), the canary told apart by a resource attribute (`service_version`).
    "otel": MetricConventions(
        requests_metric="http_server_request_duration_seconds_count",
        status_label="http_response_status_code",
        error_regex="5..|",
        latency_bucket_metric="http_server_request_duration_seconds_bucket",
        selector_label="service_version",
        service_label="service_name",
        namespace_label="k8s_namespace_name",
    ),
    "istio": MetricConventions(
        requests_metric="istio_requests_total",
        status_label="response_code",
        latency_bucket_metric="istio_request_duration_milliseconds_bucket",
        latency_unit_seconds=0.001,
        service_label="destination_workload",
        namespace_label="destination_workload_namespace",
        matchers={"reporter": "destination"},
    ),
}


class Thresholds(Strict):
    """The numeric knobs of a verdict; the only things a request may override."""

    slo: float = Field(0.999, gt=0, lt=1, description="availability SLO, e.g. 0.999")
    slo_period_days: float = Field(30, gt=0, le=366)
    min_requests: float = Field(100, ge=1, le=1e12, description="per side, below it: inconclusive")
    alpha: float = Field(
        0.05, gt=0, lt=0.5, description="false-fail rate of one look (all checks together)"
    )
    sequential_alpha: float = Field(
        0.01, gt=0, lt=0.5, description="false-abort rate over all live polls of one canary"
    )
    error_ratio_tolerance_pp: float = Field(0.1, ge=0, le=100, description="percentage points")
    error_rate_ratio_tolerance: float = Field(
        1.5, ge=1, le=1000, description="canary error ratio / baseline's; beyond pp OR this fails"
    )
    latency_ratio_tolerance: float = Field(1.2, ge=1, le=1000)
    fast_burn: float = Field(14.4, gt=0, le=1e6, description="burn rate that fails at once")
    max_budget_spend: float = Field(0.02, gt=0, le=1, description="share of the period's budget")
    max_latency_p50: float | None = Field(None, gt=0, le=86400)
    max_latency_p90: float | None = Field(None, gt=0, le=86400)
    max_latency_p95: float | None = Field(None, gt=0, le=86400)
    max_latency_p99: float | None = Field(None, gt=0, le=86400)
    pass_score: float = Field(90, ge=0, le=100)
    marginal_score: float = Field(75, ge=0, le=100)

    @model_validator(mode="after")
    def _scores_ordered(self) -> Thresholds:
        if self.marginal_score > self.pass_score:
            raise ValueError("marginal_score must not be above pass_score")
        return self

    def max_latency(self, label: str) -> float | None:
        value = getattr(self, f"max_latency_{label}", None)
        return value if isinstance(value, float | int) else None


class CheckPolicy(Strict):
    enabled: bool = True
    critical: bool = True
    weight: float = Field(1.0, ge=0, le=1000)


DEFAULT_CHECKS: dict[str, CheckPolicy] = {
    "success_rate.slo": CheckPolicy(weight=3),
    "success_rate.regression": CheckPolicy(weight=3),
    "error_budget.fast_burn": CheckPolicy(weight=2),
    "error_budget.spend": CheckPolicy(critical=False, weight=1),
    "latency.slo": CheckPolicy(weight=2),
    "latency.regression": CheckPolicy(weight=2),
    "latency.distribution": CheckPolicy(weight=1),
}


class Policy(Strict):
    name: str = "default"
    preset: Literal["http", "istio", "otel"] = "http"
    # Per-policy overrides of the preset's conventions, merged over it.
    metrics: dict[str, Any] = Field(default_factory=dict)
    window: str = "5m"
    max_window: str = "24h"
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    checks: dict[str, CheckPolicy] = Field(default_factory=dict)
    # Side effects after a verdict (traffic, chat), read by the worker; opaque to the analysis.
    actions: dict[str, Any] = Field(default_factory=dict)
    # Which thresholds a request may override, and how far (analysis/gates.py).
    overrides: OverrideRules = Field(default_factory=OverrideRules)
    # The merged metric conventions, built once at validation: every query and judgement reads
    # them (rebuilding them was 3 % of a worker's CPU). A model_copy only ever changes thresholds.
    _conventions: MetricConventions | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not POLICY_NAME.match(value):
            raise ValueError(f"{value!r} is not a policy name (lowercase, digits, . _ -)")
        return value

    @field_validator("window", "max_window")
    @classmethod
    def _duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(not 0 < q < 1 for q in value) or len(set(value)) != len(value):
            raise ValueError("quantiles must be distinct numbers strictly between 0 and 1")
        return tuple(sorted(value))

    @field_validator("checks")
    @classmethod
    def _known_checks(cls, value: dict[str, CheckPolicy]) -> dict[str, CheckPolicy]:
        unknown = sorted(set(value) - set(DEFAULT_CHECKS))
        if unknown:
            raise ValueError(f"unknown checks {unknown}; known: {sorted(DEFAULT_CHECKS)}")
        return value

    @model_validator(mode="after")
    def _window_fits(self) -> Policy:
        if parse_duration(self.window) > parse_duration(self.max_window):
            raise ValueError("window is longer than max_window")
        # Validates the merged metric conventions now, not later.
        merged = PRESETS[self.preset].model_dump() | self.metrics
        self._conventions = MetricConventions.model_validate(merged)
        return self

    @property
    def conventions(self) -> MetricConventions:
        # Read from pydantic's private dict directly: `self._conventions` goes through
        # BaseModel.__getattr__ (~3 us), and an analysis reads this a dozen times.
        conventions: MetricConventions | None = (self.__pydantic_private__ or {}).get(
            "_conventions"
        )
        assert conventions is not None  # set by _window_fits
        return conventions

    def check(self, name: str) -> CheckPolicy:
        return self.checks.get(name, DEFAULT_CHECKS[name])

    def with_overrides(self, overrides: dict[str, float]) -> Policy:
        """A copy with thresholds overridden; raises ValueError naming the override."""
        if not overrides:
            return self  # frozen: sharing is safe, and the hot path skips a validation
        known = set(Thresholds.model_fields)
        current = self.thresholds.model_dump()
        for name, value in overrides.items():
            if name not in known:
                raise OverrideError(name, f"unknown override; known: {', '.join(sorted(known))}")
            refused = refusal(self.overrides, self.name, name, value, current[name])
            if refused:
                raise OverrideError(name, refused)
        merged = current | overrides
        try:
            thresholds = Thresholds.model_validate(merged)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = str(first["loc"][0]) if first["loc"] else next(iter(overrides))
            raise OverrideError(field, first["msg"]) from exc
        return self.model_copy(update={"thresholds": thresholds})


def quantile_label(q: float) -> str:
    """0.99 → 'p99', 0.5 → 'p50', 0.999 → 'p999': names usable in a jsonPath."""
    text = f"{q * 100:.10g}"
    return "p" + text.replace(".", "")


class OverrideError(ValueError):
    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
        self.message = message


class PolicySet:
    """The named policies a server knows, `default` always among them."""

    def __init__(self, policies: dict[str, Policy]) -> None:
        self._policies = {"default": Policy()} | policies

    def get(self, name: str) -> Policy | None:
        return self._policies.get(name)

    def names(self) -> list[str]:
        return sorted(self._policies)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._policies.values())

    @classmethod
    def from_yaml(cls, text: str) -> PolicySet:
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict) or not isinstance(data.get("policies", {}), dict):
            raise ValueError("the policy file must be a mapping with a `policies:` mapping inside")
        policies = {}
        for name, body in (data.get("policies") or {}).items():
            try:
                policies[str(name)] = Policy.model_validate({"name": str(name), **(body or {})})
            except ValidationError as exc:
                raise ValueError(f"policy {name!r}: {exc}") from exc
        return cls(policies)

    @classmethod
    def load(cls, path: str | Path | None) -> PolicySet:
        if path is None:
            return cls({})
        return cls.from_yaml(Path(path).read_text(encoding="utf-8"))
