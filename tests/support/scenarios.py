"""Deterministic canary/baseline traffic, rendered as OpenMetrics for `promtool` backfilling.

Counts are *expected values*: every 15 s step adds `rps * 15` requests (with a small seeded
jitter on the rate, like real traffic), split between status codes by the side's error ratio and
between latency buckets by a log-normal CDF. Each series keeps its own float accumulator and
publishes `floor(accumulator)`, so counters are integers, never go down, and buckets stay monotonic
in `le` (the CDF is) and in time (each accumulator only grows).

Data window: `data_window()` spans now - 2 h .. now + 1 h. Prometheus only reads samples at or
before the query time, so an instant query "at now" over a 5 m range sees a full window for the
whole test session (up to an hour), and replays can ask about any end time in the last two hours.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

STEP_SECONDS = 15
BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)
CANARY_HASH = "6d4f8b7c9a"
BASELINE_HASH = "5c8d7e6f4b"
NAMESPACE = "shop"

# Share of all requests per status code besides the errors: 404 is a client miss, not an error.
NOT_FOUND_SHARE = 0.02
# How a side's errors split between 500 and 503.
ERROR_SPLIT = {"500": 0.7, "503": 0.3}
# Relative rate jitter per step: traffic is never flat, but 5 m sums stay within a few percent.
RATE_JITTER = 0.10


@dataclass(frozen=True)
class Side:
    """One version's traffic: request rate, error ratio and a log-normal latency."""

    selector: str
    rps: float
    error_ratio: float
    median_s: float
    sigma: float
    # A share of requests drawn from a slower log-normal (same sigma): a heavier tail.
    tail_share: float = 0.0
    tail_median_s: float | None = None  # default: 10x median_s

    def latency_cdf(self, seconds: float) -> float:
        """Share of requests at most `seconds` long."""
        if math.isinf(seconds):
            return 1.0
        tail_median = self.tail_median_s if self.tail_median_s is not None else 10 * self.median_s
        body = _lognormal_cdf(seconds, self.median_s, self.sigma)
        tail = _lognormal_cdf(seconds, tail_median, self.sigma)
        return (1 - self.tail_share) * body + self.tail_share * tail

    def mean_latency_s(self) -> float:
        tail_median = self.tail_median_s if self.tail_median_s is not None else 10 * self.median_s
        spread = math.exp(self.sigma**2 / 2)
        return ((1 - self.tail_share) * self.median_s + self.tail_share * tail_median) * spread

    def code_shares(self) -> dict[str, float]:
        shares = {code: self.error_ratio * part for code, part in ERROR_SPLIT.items()}
        shares["404"] = NOT_FOUND_SHARE
        shares["200"] = 1.0 - NOT_FOUND_SHARE - self.error_ratio
        return shares


def _lognormal_cdf(x: float, median: float, sigma: float) -> float:
    if x <= 0:
        return 0.0
    return 0.5 * (1 + math.erf(math.log(x / median) / (sigma * math.sqrt(2))))


@dataclass(frozen=True)
class Scenario:
    """One service with a canary and a baseline, and what an analysis of it should conclude.

    `expected_verdict`/`expected_phase` hold for a window ending at or after `changes_at + 5 m`
    (or anywhere in the data when nothing changes); `verdict_before_change` holds for windows
    ending before `changes_at`.
    """

    name: str
    preset: str  # "http" or "istio"
    service: str
    namespace: str
    canary: Side | None
    baseline: Side | None
    expected_verdict: str  # pass | fail | inconclusive
    expected_phase: str  # Successful | Failed | Inconclusive (Argo's AnalysisRun phases)
    changes_at: float | None = None  # epoch seconds
    canary_after: Side | None = None
    verdict_before_change: str | None = None
    description: str = ""

    def canary_at(self, ts: float) -> Side | None:
        if self.changes_at is not None and ts >= self.changes_at:
            return self.canary_after
        return self.canary


@dataclass(frozen=True)
class _Preset:
    requests_family: str  # counter family name, without `_total` (OpenMetrics)
    latency_family: str
    status_label: str
    service_label: str
    namespace_label: str
    extra_labels: tuple[tuple[str, str], ...]
    latency_unit_per_second: float  # 1 for seconds, 1000 for Istio's milliseconds
    selector_label: str = "rollouts_pod_template_hash"
    # OpenTelemetry: no counter family, the histogram is split by status instead, and a status
    # rendered without its label (a request that got no response) carries `error_type` instead.
    histogram_by_status: bool = False
    code_without_status: str | None = None
    job_label: bool = False  # `job="<namespace>/<service>"`, as the Collector's exporter sets it


PRESETS: dict[str, _Preset] = {
    "http": _Preset(
        requests_family="http_requests",
        latency_family="http_request_duration_seconds",
        status_label="code",
        service_label="service",
        namespace_label="namespace",
        extra_labels=(),
        latency_unit_per_second=1.0,
    ),
    "istio": _Preset(
        requests_family="istio_requests",
        latency_family="istio_request_duration_milliseconds",
        status_label="response_code",
        service_label="destination_workload",
        namespace_label="destination_workload_namespace",
        extra_labels=(("reporter", "destination"),),
        latency_unit_per_second=1000.0,
    ),
    "otel": _Preset(
        requests_family="",
        latency_family="http_server_request_duration_seconds",
        status_label="http_response_status_code",
        service_label="service_name",
        namespace_label="k8s_namespace_name",
        extra_labels=(("otel_scope_name", "io.opentelemetry.http"),),
        latency_unit_per_second=1.0,
        selector_label="service_version",
        histogram_by_status=True,
        code_without_status="503",
        job_label=True,
    ),
}


def data_window(now: float | None = None) -> tuple[float, float]:
    """(start, end) epoch seconds on the 15 s grid: now - 2 h .. now + 1 h (see module doc)."""
    now = time.time() if now is None else now
    start = math.floor((now - 2 * 3600) / STEP_SECONDS) * STEP_SECONDS
    end = math.floor((now + 3600) / STEP_SECONDS) * STEP_SECONDS
    return float(start), float(end)


def build_scenarios(start: float, end: float) -> list[Scenario]:
    """The standard scenarios; the half-way change of `degrades` sits at the window's middle."""
    base = Side(BASELINE_HASH, rps=50.0, error_ratio=0.001, median_s=0.08, sigma=0.6)
    canary = Side(CANARY_HASH, rps=50.0 / 3, error_ratio=0.001, median_s=0.08, sigma=0.6)
    bad_errors = _with(canary, error_ratio=0.01)
    middle = math.floor((start + end) / 2 / STEP_SECONDS) * STEP_SECONDS

    def http(
        name: str,
        canary: Side | None,
        baseline: Side | None,
        verdict: str,
        phase: str,
        **extra: Any,
    ) -> Scenario:
        return Scenario(name, "http", name, NAMESPACE, canary, baseline, verdict, phase, **extra)

    return [
        http("good", canary, base, "pass", "Successful", description="same errors and latency"),
        http("errors", bad_errors, base, "fail", "Failed", description="1% vs 0.1% errors"),
        http(
            "latency",
            _with(canary, median_s=0.16),
            base,
            "fail",
            "Failed",
            description="median and p99 doubled (same sigma)",
        ),
        http(
            "tail",
            _with(canary, tail_share=0.05, tail_median_s=0.8),
            base,
            "fail",
            "Failed",
            description="same median, 5% of requests 10x slower",
        ),
        http(
            "low-traffic",
            _with(canary, rps=20 / 300),
            base,
            "inconclusive",
            "Inconclusive",
            description="about 20 canary requests per 5 m",
        ),
        http(
            "no-canary",
            None,
            base,
            "inconclusive",
            "Inconclusive",
            description="no canary series",
        ),
        http(
            "no-baseline",
            canary,
            None,
            "inconclusive",
            "Inconclusive",
            description="healthy canary, no baseline series",
        ),
        http(
            "degrades",
            canary,
            base,
            "fail",
            "Failed",
            changes_at=float(middle),
            canary_after=bad_errors,
            verdict_before_change="pass",
            description="good until changes_at, 1% errors after",
        ),
        http(
            "recovers",
            bad_errors,
            base,
            "pass",
            "Successful",
            changes_at=float(middle),
            canary_after=canary,
            verdict_before_change="fail",
            description="1% errors until changes_at, good after (a replay of its past fails)",
        ),
        Scenario(
            "istio-good",
            "istio",
            "istio-good",
            NAMESPACE,
            canary,
            base,
            "pass",
            "Successful",
            description="istio metrics (ms), same errors and latency",
        ),
        Scenario(
            "istio-errors",
            "istio",
            "istio-errors",
            NAMESPACE,
            bad_errors,
            base,
            "fail",
            "Failed",
            description="istio metrics (ms), 1% vs 0.1% errors",
        ),
        Scenario(
            "otel-good", "otel", "otel-good", NAMESPACE, canary, base, "pass", "Successful",
            description="OpenTelemetry histogram only, same errors and latency",
        ),
        Scenario(
            "otel-errors", "otel", "otel-errors", NAMESPACE, bad_errors, base, "fail", "Failed",
            description="OpenTelemetry, 1% vs 0.1% errors (a third of them without a status code)",
        ),
        Scenario(
            "otel-no-canary", "otel", "otel-no-canary", NAMESPACE, None, base,
            "inconclusive", "Inconclusive", description="OpenTelemetry, no canary series",
        ),
    ]  # fmt: skip


def _with(side: Side, **changes: Any) -> Side:
    return dataclasses.replace(side, **changes)


DATA_START, DATA_END = data_window()
SCENARIOS: list[Scenario] = build_scenarios(DATA_START, DATA_END)


# --- rendering ----------------------------------------------------------------------------------


@dataclass
class _SideSeries:
    """Accumulated samples of one side of one scenario, per timestamp."""

    codes: dict[str, list[int]] = field(default_factory=dict)
    buckets: list[list[int]] = field(default_factory=list)  # [timestamp][bucket]
    counts: list[int] = field(default_factory=list)
    sums: list[float] = field(default_factory=list)
    # Per status code (for histograms split by status): [timestamp][bucket], and sums.
    code_buckets: dict[str, list[list[int]]] = field(default_factory=dict)
    code_sums: dict[str, list[float]] = field(default_factory=dict)


def _timestamps(start: float, end: float) -> list[float]:
    steps = int((end - start) // STEP_SECONDS)
    return [start + i * STEP_SECONDS for i in range(steps + 1)]


def _simulate(
    scenario: Scenario, side_name: str, stamps: list[float], unit: float, by_status: bool = False
) -> _SideSeries | None:
    def side_at(ts: float) -> Side | None:
        return scenario.canary_at(ts) if side_name == "canary" else scenario.baseline

    if all(side_at(ts) is None for ts in stamps):
        return None
    seed = hashlib.sha256(f"{scenario.name}/{side_name}".encode()).digest()
    rng = random.Random(seed)
    code_acc = dict.fromkeys(("200", "404", "500", "503"), 0.0)
    bucket_acc = [0.0] * len(BUCKETS_SECONDS)
    sum_acc = 0.0
    code_bucket_acc = {code: [0.0] * len(BUCKETS_SECONDS) for code in code_acc}
    code_sum_acc = dict.fromkeys(code_acc, 0.0)
    out = _SideSeries(codes={code: [] for code in code_acc})
    if by_status:
        out.code_buckets = {code: [] for code in code_acc}
        out.code_sums = {code: [] for code in code_acc}
    for i, ts in enumerate(stamps):
        side = side_at(ts)
        # The first sample is the counter's starting point; traffic accrues from the next one on.
        if side is not None and i > 0:
            jitter = 1 + rng.uniform(-RATE_JITTER, RATE_JITTER)
            new = side.rps * STEP_SECONDS * jitter
            cdf = [side.latency_cdf(le) for le in BUCKETS_SECONDS]
            for code, share in side.code_shares().items():
                code_acc[code] += new * share
                if by_status:
                    for b, at_most in enumerate(cdf):
                        code_bucket_acc[code][b] += new * share * at_most
                    code_sum_acc[code] += new * share * side.mean_latency_s() * unit
            for b, at_most in enumerate(cdf):
                bucket_acc[b] += new * at_most
            sum_acc += new * side.mean_latency_s() * unit
        for code, acc in code_acc.items():
            out.codes[code].append(math.floor(acc))
        count = sum(counts[-1] for counts in out.codes.values())
        # min() with the count keeps `+Inf == _count == sum of codes`; the min of two
        # non-decreasing sequences is non-decreasing, so monotonicity survives.
        buckets = [min(math.floor(acc), count) for acc in bucket_acc[:-1]] + [count]
        out.buckets.append(buckets)
        out.counts.append(count)
        out.sums.append(sum_acc)
        for code, buckets_acc in code_bucket_acc.items() if by_status else ():
            code_count = out.codes[code][-1]
            ladder = [min(math.floor(acc), code_count) for acc in buckets_acc[:-1]]
            out.code_buckets[code].append([*ladder, code_count])
            out.code_sums[code].append(code_sum_acc[code])
    return out


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    return "{" + ",".join(f'{k}="{v}"' for k, v in pairs) + "}"


def _format_le(le_seconds: float, unit: float) -> str:
    return "+Inf" if math.isinf(le_seconds) else f"{le_seconds * unit:g}"


def _format_ts(ts: float) -> str:
    return str(int(ts)) if ts == int(ts) else repr(ts)


def render_openmetrics(scenarios: Iterable[Scenario], start: float, end: float) -> str:
    """OpenMetrics text for `promtool tsdb create-blocks-from openmetrics` (ends with `# EOF`)."""
    return "".join(_render_lines(list(scenarios), start, end))


def _render_lines(scenarios: list[Scenario], start: float, end: float) -> Iterator[str]:
    stamps = _timestamps(start, end)
    ts_text = [_format_ts(ts) for ts in stamps]
    # Simulate once per side, then emit family by family (OpenMetrics groups by family).
    simulated: dict[str, list[tuple[tuple[tuple[str, str], ...], _SideSeries]]] = {}
    for scenario in scenarios:
        preset = PRESETS[scenario.preset]
        for side_name in ("canary", "baseline"):
            series = _simulate(
                scenario,
                side_name,
                stamps,
                preset.latency_unit_per_second,
                preset.histogram_by_status,
            )
            if series is None:
                continue
            selector = _selector(scenario, side_name)
            job = (("job", f"{scenario.namespace}/{scenario.service}"),) if preset.job_label else ()
            base_labels = (
                (preset.service_label, scenario.service),
                (preset.namespace_label, scenario.namespace),
                *job,
                *preset.extra_labels,
                (preset.selector_label, selector),
            )
            simulated.setdefault(scenario.preset, []).append((base_labels, series))

    for preset_name, sides in simulated.items():
        preset = PRESETS[preset_name]
        if preset.histogram_by_status:
            yield from _histogram_by_status(preset, sides, ts_text)
            continue
        yield f"# TYPE {preset.requests_family} counter\n"
        name = f"{preset.requests_family}_total"
        for base_labels, series in sides:
            for code, values in series.codes.items():
                labels = _labels((*base_labels, (preset.status_label, code)))
                for value, ts in zip(values, ts_text, strict=True):
                    yield f"{name}{labels} {value} {ts}\n"

        family = preset.latency_family
        yield f"# TYPE {family} histogram\n"
        for base_labels, series in sides:
            bucket_labels = [
                _labels((*base_labels, ("le", _format_le(le, preset.latency_unit_per_second))))
                for le in BUCKETS_SECONDS
            ]
            plain = _labels(base_labels)
            # One MetricPoint per timestamp: its buckets, then count and sum (OpenMetrics order).
            for t, ts in enumerate(ts_text):
                for labels, value in zip(bucket_labels, series.buckets[t], strict=True):
                    yield f"{family}_bucket{labels} {value} {ts}\n"
                yield f"{family}_count{plain} {series.counts[t]} {ts}\n"
                yield f"{family}_sum{plain} {series.sums[t]!r} {ts}\n"
    yield "# EOF\n"


def _histogram_by_status(
    preset: _Preset,
    sides: list[tuple[tuple[tuple[str, str], ...], _SideSeries]],
    ts_text: list[str],
) -> Iterator[str]:
    """One histogram per status code (OpenTelemetry's data points carry the status attribute):
    its `_count` is the code's request count, its buckets the side's latency shape."""
    family = preset.latency_family
    yield f"# TYPE {family} histogram\n"
    for base_labels, series in sides:
        for code, counts in series.codes.items():
            if code == preset.code_without_status:
                status: tuple[tuple[str, str], ...] = (("error_type", "timeout"),)
            else:
                status = ((preset.status_label, code),)
            labels = (*base_labels, *status)
            plain = _labels(labels)
            bucket_labels = [
                _labels((*labels, ("le", _format_le(le, preset.latency_unit_per_second))))
                for le in BUCKETS_SECONDS
            ]
            ladders, sums = series.code_buckets[code], series.code_sums[code]
            for t, ts in enumerate(ts_text):
                for labels_text, value in zip(bucket_labels, ladders[t], strict=True):
                    yield f"{family}_bucket{labels_text} {value} {ts}\n"
                yield f"{family}_count{plain} {counts[t]} {ts}\n"
                yield f"{family}_sum{plain} {sums[t]!r} {ts}\n"


def _selector(scenario: Scenario, side_name: str) -> str:
    if side_name == "baseline":
        assert scenario.baseline is not None
        return scenario.baseline.selector
    side = scenario.canary or scenario.canary_after
    assert side is not None
    return side.selector


def scenario_by_name(name: str) -> Scenario:
    for scenario in SCENARIOS:
        if scenario.name == name:
            return scenario
    raise KeyError(f"no scenario named {name!r}; known: {[s.name for s in SCENARIOS]}")
