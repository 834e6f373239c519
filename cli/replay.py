"""`rollout-analyzer replay`: what Argo would have seen, measurement by measurement, over a period.

The Argo part (`assess`) is pure: given the phases of successive measurements and the metric's
limits, where does the AnalysisRun end and how. Rules from Argo's analysis.go, as written down in
/work/shared/spec/argo-web-provider.md: a metric fails when failed > failureLimit, is
Inconclusive (pauses the rollout) when inconclusive > inconclusiveLimit, errors when consecutive
errors > consecutiveErrorLimit (later rules win), and succeeds when `count` measurements counted.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from analysis.durations import format_duration, format_time, parse_time
from analysis.judge import judge
from analysis.observation import Observation
from analysis.policy import quantile_label
from analysis.report import live_report, report
from analysis.request import AnalysisSpec
from analysis.sequential import Poll, advance
from analysis.sources import MetricsSource
from cli.output import (
    CliError,
    Command,
    SpecArgs,
    build_spec,
    emit_json,
    hhmm,
    html_option,
    make_source,
    num,
    output_option,
    parse_duration_option,
    parse_time_option,
    pct,
    seconds,
    source_hint,
    source_options,
    spec_options,
    table,
    user_errors,
    verdict_text,
)

# --- Argo's measurement limits (pure) -----------------------------------------------------------

PHASE_OF_VERDICT = {
    "pass": "Successful",
    "fail": "Failed",
    "inconclusive": "Inconclusive",
    "error": "Error",
}
DEFAULT_CONSECUTIVE_ERROR_LIMIT = 4  # Argo's default
# What the Rollout does when its analysis ends in this phase.
ROLLOUT_ACTION = {"Failed": "aborted", "Error": "aborted", "Inconclusive": "paused"}


@dataclass(frozen=True)
class ArgoLimits:
    failure_limit: int = 0
    inconclusive_limit: int = 0
    consecutive_error_limit: int = DEFAULT_CONSECUTIVE_ERROR_LIMIT
    count: int | None = None  # None: measure until the limits (or the replay's points) end

    def check(self) -> None:
        for name in ("failure_limit", "inconclusive_limit", "consecutive_error_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name.replace('_', '-')} must be 0 or more")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be 1 or more")


@dataclass(frozen=True)
class ArgoOutcome:
    phase: str  # Successful | Failed | Inconclusive | Error | Running (points ran out)
    ended_at: int | None  # index of the measurement that ended the metric
    message: str
    measured: int  # measurements Argo took (the rest would never have been taken)


def assess(phases: Sequence[str], limits: ArgoLimits) -> ArgoOutcome:
    """Feed measurement phases to Argo's bookkeeping until the metric concludes."""
    failed = inconclusive = consecutive_errors = counted = 0
    for index, phase in enumerate(phases):
        if phase == "Error":
            consecutive_errors += 1
        else:
            consecutive_errors = 0
            counted += 1  # Argo's MetricResult.Count leaves errors out
            failed += phase == "Failed"
            inconclusive += phase == "Inconclusive"
        verdict: tuple[str, str] | None = None
        if failed > limits.failure_limit:
            verdict = ("Failed", f"failed ({failed}) > failureLimit ({limits.failure_limit})")
        if inconclusive > limits.inconclusive_limit:
            verdict = (
                "Inconclusive",
                f"inconclusive ({inconclusive}) > inconclusiveLimit ({limits.inconclusive_limit})",
            )
        if consecutive_errors > limits.consecutive_error_limit:
            verdict = (
                "Error",
                f"consecutiveErrors ({consecutive_errors}) > consecutiveErrorLimit "
                f"({limits.consecutive_error_limit})",
            )
        if verdict is None and limits.count is not None and counted >= limits.count:
            verdict = ("Successful", f"count ({limits.count}) reached")
        if verdict is not None:
            return ArgoOutcome(verdict[0], index, verdict[1], index + 1)
    return ArgoOutcome("Running", None, "the replay ended before the analysis did", len(phases))


@dataclass(frozen=True)
class TemplateMetric:
    """What a replay takes from one metric of an AnalysisTemplate."""

    name: str
    limits: ArgoLimits
    interval: str | None
    initial_delay: str | None


def read_template(yaml_text: str, metric_name: str | None = None) -> TemplateMetric:
    """Limits, interval and initialDelay of one metric of an (Cluster)AnalysisTemplate."""
    documents = [doc for doc in yaml.safe_load_all(yaml_text) if isinstance(doc, dict)]
    templates = [
        doc
        for doc in documents
        if doc.get("kind") in ("AnalysisTemplate", "ClusterAnalysisTemplate")
    ]
    if not templates:
        raise ValueError("no AnalysisTemplate or ClusterAnalysisTemplate in the file")
    metrics = (templates[0].get("spec") or {}).get("metrics") or []
    if metric_name is not None:
        metrics = [m for m in metrics if m.get("name") == metric_name]
    if not metrics:
        what = f"named {metric_name!r}" if metric_name else "at all"
        raise ValueError(f"the template has no metric {what}")
    metric = metrics[0]

    def whole(key: str, default: int | None) -> int | None:
        value = metric.get(key)
        if value is None:
            return default
        try:
            return int(str(value))
        except ValueError:
            raise ValueError(
                f"metric {metric.get('name')!r}: {key} {value!r} is not a number "
                f"(args are not substituted; pass --{_flag(key)})"
            ) from None

    limits = ArgoLimits(
        failure_limit=whole("failureLimit", 0) or 0,
        inconclusive_limit=whole("inconclusiveLimit", 0) or 0,
        consecutive_error_limit=whole("consecutiveErrorLimit", DEFAULT_CONSECUTIVE_ERROR_LIMIT)
        or 0,
        count=whole("count", None) or None,
    )
    limits.check()

    def duration(key: str) -> str | None:
        value = metric.get(key)
        return None if value in (None, "") else str(value)

    return TemplateMetric(
        str(metric.get("name", "")), limits, duration("interval"), duration("initialDelay")
    )


def _flag(key: str) -> str:
    return "".join(f"-{ch.lower()}" if ch.isupper() else ch for ch in key)


# --- fetching and judging -----------------------------------------------------------------------


def replay_times(start: float, end: float, interval: float) -> list[float]:
    if end < start:
        raise CliError(f"--end ({format_time(end)}) is before --start ({format_time(start)})")
    steps = math.floor((end - start) / interval + 1e-9)
    return [start + i * interval for i in range(steps + 1)]


def observe_points(
    spec: AnalysisSpec, source: MetricsSource, times: list[float], interval: float
) -> list[Observation]:
    """Every point's whole window; a Prometheus source fetches them all in one range query."""
    if len(times) == 1:
        return [source.observe(spec, times[0], time.monotonic() + 60)]
    return source.observe_range(spec, times[0], times[-1], interval)


def observe_polls(
    spec: AnalysisSpec, source: MetricsSource, times: list[float], interval: float
) -> list[Observation]:
    """What a live sequence adds at each poll: the first poll's window, then each interval since
    the poll before. Two round trips at most (the first window; one range query for the rest)."""
    first = source.observe(spec, times[0], time.monotonic() + 60)
    if len(times) == 1:
        return [first]
    rest = source.observe_range(spec, times[1], times[-1], interval, seconds=interval)
    return [first, *rest]


def judge_polls(spec: AnalysisSpec, observations: list[Observation]) -> list[dict[str, Any]]:
    """Each poll judged as the live service would have: on the sequence up to it."""
    reports = []
    sequence = None
    for observation in observations:
        poll = Poll(
            observation.time, observation.window_seconds, observation.canary, observation.baseline
        )
        result = advance(sequence, poll, spec.policy)
        sequence = result.sequence
        reports.append(live_report(spec, observation, result, "replay"))
    return reports


@dataclass
class Replay:
    spec: AnalysisSpec
    reports: list[dict[str, Any]]
    limits: ArgoLimits
    outcome: ArgoOutcome
    interval: float
    seconds_taken: float

    @property
    def round_trips(self) -> int:
        return sum(int(r["source"]["round_trips"]) for r in self.reports)

    def first(self, verdict: str) -> int | None:
        return next((i for i, r in enumerate(self.reports) if r["verdict"] == verdict), None)

    def to_json(self) -> dict[str, Any]:
        thresholds = self.spec.policy.thresholds
        top_quantile = quantile_label(self.spec.policy.quantiles[-1])
        first_fail = self.first("fail")
        ended = self.outcome.ended_at
        return {
            "service": self.spec.service,
            "namespace": self.spec.namespace,
            "canary": self.spec.canary,
            "baseline": self.spec.baseline,
            "policy": self.spec.policy.name,
            "window_seconds": self.spec.window_seconds,
            "interval_seconds": self.interval,
            "mode": self.reports[0].get("mode", "fixed") if self.reports else None,
            "start": self.reports[0]["window"]["end"] if self.reports else None,
            "end": self.reports[-1]["window"]["end"] if self.reports else None,
            "source": {
                "kind": self.reports[0]["source"]["kind"] if self.reports else None,
                "round_trips": self.round_trips,
                "seconds": round(self.seconds_taken, 3),
            },
            "thresholds": {
                "slo": thresholds.slo,
                "fast_burn": thresholds.fast_burn,
                "latency_quantile": top_quantile,
                "max_latency": thresholds.max_latency(top_quantile),
            },
            "limits": asdict(self.limits),
            "first_failure": None
            if first_fail is None
            else {"index": first_fail, "time": self.reports[first_fail]["window"]["end"]},
            "argo": {
                "phase": self.outcome.phase,
                "message": self.outcome.message,
                "measurements": self.outcome.measured,
                "ended_at": None
                if ended is None
                else {"index": ended, "time": self.reports[ended]["window"]["end"]},
                "rollout": ROLLOUT_ACTION.get(self.outcome.phase),
            },
            "measurements": [
                {
                    "index": i,
                    "time": r["window"]["end"],
                    "verdict": r["verdict"],
                    "phase": PHASE_OF_VERDICT[r["verdict"]],
                    "measured_by_argo": i < self.outcome.measured,
                    "report": r,
                }
                for i, r in enumerate(self.reports)
            ],
        }


def run_replay(
    spec: AnalysisSpec,
    source: MetricsSource,
    times: list[float],
    interval: float,
    limits: ArgoLimits,
    *,
    progress: bool = False,
    sequential: bool = True,
) -> Replay:
    """Argo's measurements at `times`: by default as the live service answers them (one
    sequence of evidence over the polls); `sequential=False` judges each window on its own."""
    began = time.perf_counter()
    if sequential:
        reports = judge_polls(spec, observe_polls(spec, source, times, interval))
        outcome = assess([PHASE_OF_VERDICT[r["verdict"]] for r in reports], limits)
        return Replay(spec, reports, limits, outcome, interval, time.perf_counter() - began)
    observations = observe_points(spec, source, times, interval)
    reports = []
    with click.progressbar(
        observations,
        label="judging",
        file=sys.stderr,
        show_pos=True,
        hidden=not progress,
    ) as bar:
        for observation in bar:
            reports.append(report(spec, observation, judge(observation, spec.policy)))
    outcome = assess([PHASE_OF_VERDICT[r["verdict"]] for r in reports], limits)
    return Replay(spec, reports, limits, outcome, interval, time.perf_counter() - began)


# --- the command --------------------------------------------------------------------------------

EXIT_OF_PHASE = {"Successful": 0, "Running": 0, "Failed": 1, "Error": 1, "Inconclusive": 2}


@click.command(cls=Command)
@spec_options
@source_options
@click.option("--start", required=True, help="First measurement: RFC 3339, -2h, ...")
@click.option("--end", "-e", default="now", show_default=True, help="Last measurement.")
@click.option("--interval", "-i", default=None, help="Argo's measurement interval [default 1m].")
@click.option("--failure-limit", type=int, default=None, help="Argo failureLimit [default 0].")
@click.option(
    "--inconclusive-limit", type=int, default=None, help="Argo inconclusiveLimit [default 0]."
)
@click.option(
    "--consecutive-error-limit", type=int, default=None, help="Argo consecutiveErrorLimit [4]."
)
@click.option("--count", type=int, default=None, help="Argo count [default: every point].")
@click.option(
    "--template",
    "template_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read limits, interval, count, initialDelay from an (Cluster)AnalysisTemplate YAML.",
)
@click.option("--metric", default=None, help="Which metric of --template (default: the first).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write .svg/.html.")
@click.option(
    "--fixed-windows",
    is_flag=True,
    help="Judge each point's window on its own instead of as the live service's sequence.",
)
@html_option("Write the analysis page of the measurement Argo ended on (or the last).")
@output_option
def replay(
    spec_args: SpecArgs,
    prometheus: str | None,
    recording: str | None,
    start: str,
    end: str,
    interval: str | None,
    failure_limit: int | None,
    inconclusive_limit: int | None,
    consecutive_error_limit: int | None,
    count: int | None,
    template_file: str | None,
    metric: str | None,
    plot: str | None,
    fixed_windows: bool,
    html_file: str | None,
    output: str,
) -> None:
    """Replay Argo's measurements over a past period: timeline, where Argo stops, final phase.

    Each point is answered as the live service would have answered that poll: on the evidence
    of the canary's sequence so far (the first window, then each interval since the poll
    before). Two PromQL round trips (one with --fixed-windows, each point's window alone).
    Exit code: 0 Successful (or still running at the end of the period), 1 Failed/Error,
    2 Inconclusive, 3 error.

    \b
    Example:
      rollout-analyzer replay --prometheus http://prometheus:9090 \\
        --service checkout --namespace shop --canary 6d4f8b7c9a --baseline 5c8d7e6f4b \\
        --start -1h --end now --interval 1m --failure-limit 2 --plot replay.svg
    """
    now = float(math.floor(time.time()))
    from_template = TemplateMetric("", ArgoLimits(), None, None)
    if template_file:
        with user_errors(f"check --template {template_file}"):
            from_template = read_template(Path(template_file).read_text("utf-8"), metric)
    base = from_template.limits
    limits = ArgoLimits(
        failure_limit=base.failure_limit if failure_limit is None else failure_limit,
        inconclusive_limit=base.inconclusive_limit
        if inconclusive_limit is None
        else inconclusive_limit,
        consecutive_error_limit=base.consecutive_error_limit
        if consecutive_error_limit is None
        else consecutive_error_limit,
        count=base.count if count is None else count,
    )
    with user_errors():
        limits.check()
    step = parse_duration_option("--interval", interval or from_template.interval or "1m")
    delay = 0.0
    if from_template.initial_delay and from_template.initial_delay.strip("0smh") != "":
        delay = parse_duration_option("initialDelay", from_template.initial_delay)
    # Whole seconds: Prometheus answers range queries on a millisecond grid.
    first = math.floor(parse_time_option("--start", start, now)) + delay
    last = math.floor(parse_time_option("--end", end, now))
    times = replay_times(first, last, step)
    spec = build_spec(
        spec_args,
        end=format_time(last),
        now=now,
    )
    source = make_source(prometheus, recording)
    if limits.count is None:
        limits = ArgoLimits(
            limits.failure_limit, limits.inconclusive_limit, limits.consecutive_error_limit
        )
    with user_errors(source_hint(prometheus, recording)):
        result = run_replay(
            spec,
            source,
            times,
            step,
            limits,
            progress=output == "text" and sys.stderr.isatty(),
            sequential=not fixed_windows,
        )
    data = result.to_json()
    if plot:
        from cli.plot import write_plot

        with user_errors(f"cannot write {plot}"):
            write_plot(plot, data)
    if html_file and result.reports:
        from cli.html_report import replay_polls, write_report_html

        measured = result.outcome.measured
        shown = result.reports[measured - 1]
        with user_errors(f"cannot write {html_file}"):
            write_report_html(
                html_file,
                {**shown, "analysis_id": f"measurement #{measured}"},
                live=False,
                polls=replay_polls(result.reports, measured),
            )
    if output == "json":
        emit_json(data)
    else:
        click.echo(render(data))
        if plot:
            click.echo(f"plot written to {plot}")
        if html_file:
            click.echo(f"report written to {html_file}")
    sys.exit(EXIT_OF_PHASE[result.outcome.phase])


def render(data: dict[str, Any]) -> str:
    argo = data["argo"]
    limits = data["limits"]
    where = data["service"] + (f" ({data['namespace']})" if data["namespace"] else "")
    measurements = data["measurements"]
    quantile = data["thresholds"]["latency_quantile"]
    lines = [
        f"replay of {where}: canary {data['canary']} vs baseline {data['baseline']}, "
        f"policy {data['policy']}, window {format_duration(data['window_seconds'])}",
        f"{data['start']} .. {data['end']} every {format_duration(data['interval_seconds'])}: "
        f"{len(measurements)} measurements from {data['source']['kind']}, "
        f"{data['source']['round_trips']} PromQL round trip(s), {data['source']['seconds']:.2f} s",
        f"Argo limits: failureLimit {limits['failure_limit']}, inconclusiveLimit "
        f"{limits['inconclusive_limit']}, consecutiveErrorLimit "
        f"{limits['consecutive_error_limit']}, count {limits['count'] or 'until the end'}",
        "",
    ]
    rows = []
    ended = argo["ended_at"]["index"] if argo["ended_at"] else None
    for m in measurements:
        r = m["report"]
        rate, latency = r["metrics"]["success_rate"], r["metrics"]["latency_seconds"][quantile]
        budget = r["metrics"]["error_budget"]
        mark = ""
        if m["index"] == ended:
            action = f"rollout {argo['rollout']}" if argo["rollout"] else "analysis ends"
            mark = f"<- Argo: {argo['phase']}, {action} ({argo['message']})"
        elif not m["measured_by_argo"]:
            mark = "(not measured: the analysis had ended)"
        rows.append(
            [
                hhmm(_ts(m["time"])),
                verdict_text(m["verdict"]),
                num(r["score"]),
                f"{pct(rate['canary'])} / {pct(rate['baseline'])}",
                f"{seconds(latency['canary'])} / {seconds(latency['baseline'])}",
                f"{num(budget['burn_canary'])} / {num(budget['burn_baseline'])}",
                f"{r['requests']['canary']:.0f}",
                mark,
            ]
        )
    headers = ["time", "verdict", "score", "success c/b", f"{quantile} c/b", "burn c/b", "req c"]
    headers.append("argo")
    lines.append(table(headers, rows))
    lines.append("")
    first_fail = data["first_failure"]
    lines.append(
        "first failing measurement: "
        + (f"#{first_fail['index'] + 1} at {first_fail['time']}" if first_fail else "none")
    )
    if argo["ended_at"]:
        at = argo["ended_at"]
        lines.append(
            f"Argo would end the analysis at measurement #{at['index'] + 1} ({at['time']}): "
            f"{argo['message']}"
        )
    final = f"final phase: {argo['phase']}"
    if argo["rollout"]:
        final += f" (the rollout is {argo['rollout']})"
    elif argo["phase"] == "Running":
        final += " (no limit reached within the replayed period)"
    lines.append(final)
    return "\n".join(lines)


def _ts(text: str) -> float:
    return parse_time(text)


__all__ = ["ArgoLimits", "ArgoOutcome", "Replay", "assess", "read_template", "run_replay"]
