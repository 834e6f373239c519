"""Anytime-valid live verdicts: evidence that accumulates over every poll of one canary.

Argo asks the same question again and again (five polls, `failureLimit: 0`). Five independent
tests at alpha each would abort a healthy canary far more often than alpha. Here every check is
an *e-process* (Lindon, Sanden, Shirikian, KDD 2022; Lindon & Malek, NeurIPS 2022): a running
product, poll after poll, of likelihood ratios of what the newest interval's counts show. While
the canary is no worse than its baseline, the product is a test supermartingale, and Ville's
inequality bounds the chance that it *ever* reaches 1/alpha by alpha, however many polls come.

- Regression (errors, each latency tail): within one interval, given how many errors (or slow
  requests) both sides had together, the canary's share of them is at most Binomial(E, θ0) with
  θ0 = n_c / (n_c + n_b) when it is no worse (exactly hypergeometric, which is less spread, so
  the convex likelihood ratio keeps its mean ≤ 1). Traffic weights may change between intervals:
  each interval has its own θ0.
- Absolute (SLO): the canary's errors in an interval are Binomial(n, p) with p ≤ the allowance.
- Each alternative is a mixture over a fixed grid of effect sizes, so a large regression can be
  caught at the very first poll and a smaller one a few polls later.
- The sequence's alpha is split evenly over its checks (Bonferroni): family-wise over checks and
  polls. A check fails once its evidence has reached its threshold *and* the estimate is beyond
  the policy's tolerance; a failure stays failed for the rest of the sequence.

Pure computation: the caller keeps the `Sequence` (the worker, in Redis) between polls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from analysis.budget import ErrorBudget
from analysis.durations import parse_duration
from analysis.histogram import count_above_bound, share_above, tail_table
from analysis.judge import (
    Check,
    Judgement,
    Look,
    SideStats,
    alpha_each,
    budget_of,
    budget_spend,
    decide,
    enough,
    errors_beyond_tolerance,
    latency_beyond_tolerance,
    make_check,
    pct,
    secs,
    side_stats,
    starved,
)
from analysis.observation import SideCounts
from analysis.policy import Policy, quantile_label

# Alternatives mixed with equal weight: canary/baseline rate ratios, and multiples of an allowance.
RATIO_GRID = (1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
MULTIPLE_GRID = (1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 100.0)
# Per-poll summaries kept for people: exactly what a live report carries (analysis/report.py),
# nothing older is read by anything. The evidence itself is O(1) per check.
HISTORY_KEPT = 20


@dataclass(frozen=True)
class Poll:
    """The newest interval's counts: what arrived since the previous poll (the first: a window)."""

    end: float
    seconds: float
    canary: SideCounts
    baseline: SideCounts


@dataclass
class Evidence:
    """One check's running log likelihood ratio per alternative, and its record."""

    log_lr: list[float]
    peak: float = 0.0  # log of the largest mixture e-value seen so far
    failed_at: int | None = None  # poll number at which the check failed
    failed_reason: str | None = None

    def log_e(self) -> float:
        top = max(self.log_lr)
        return top + math.log(sum(math.exp(x - top) for x in self.log_lr) / len(self.log_lr))


@dataclass
class Sequence:
    """Everything one canary's evidence needs between polls; JSON round-trips via to/from_json."""

    started_at: float
    last_end: float
    polls: int = 0
    canary: SideCounts = field(default_factory=SideCounts)
    baseline: SideCounts = field(default_factory=SideCounts)
    evidence: dict[str, Evidence] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    # The intervals within the policy's window of the newest poll: a regression that starts late
    # in a long sequence shows in them before the whole sequence's average moves.
    recent: list[Poll] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "last_end": self.last_end,
            "polls": self.polls,
            "canary": self.canary.to_json(),
            "baseline": self.baseline.to_json(),
            "evidence": {
                name: {
                    "log_lr": ev.log_lr,
                    "peak": ev.peak,
                    "failed_at": ev.failed_at,
                    "failed_reason": ev.failed_reason,
                }
                for name, ev in self.evidence.items()
            },
            "history": self.history,
            "recent": [
                {
                    "end": p.end,
                    "seconds": p.seconds,
                    "canary": p.canary.to_json(),
                    "baseline": p.baseline.to_json(),
                }
                for p in self.recent
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Sequence:
        return cls(
            started_at=float(data["started_at"]),
            last_end=float(data["last_end"]),
            polls=int(data["polls"]),
            canary=SideCounts.from_json(data["canary"]),
            baseline=SideCounts.from_json(data["baseline"]),
            evidence={
                name: Evidence(
                    [float(x) for x in ev["log_lr"]],
                    float(ev["peak"]),
                    ev.get("failed_at"),
                    ev.get("failed_reason"),
                )
                for name, ev in (data.get("evidence") or {}).items()
            },
            history=list(data.get("history") or []),
            recent=[
                Poll(
                    float(p["end"]),
                    float(p["seconds"]),
                    SideCounts.from_json(p["canary"]),
                    SideCounts.from_json(p["baseline"]),
                )
                for p in data.get("recent") or []
            ],
        )


def _xlogy(x: float, ratio: float) -> float:
    return 0.0 if x == 0 else x * math.log(ratio)


def _log_lr(x: float, n: float, p0: float, p1: float) -> float:
    """log of P(x | Binomial(n, p1)) / P(x | Binomial(n, p0))."""
    return _xlogy(x, p1 / p0) + _xlogy(n - x, (1 - p1) / (1 - p0))


def relative_log_lrs(x: float, y: float, n_c: float, n_b: float) -> list[float]:
    """Per alternative ratio r: the interval's log LR of "canary rate = r × baseline's" against
    "equal", from x canary and y baseline events out of n_c and n_b requests."""
    x, y = round(max(x, 0.0)), round(max(y, 0.0))
    events = x + y
    if events == 0 or n_c <= 0 or n_b <= 0:
        return [0.0] * len(RATIO_GRID)
    theta0 = n_c / (n_c + n_b)
    return [_log_lr(x, events, theta0, r * n_c / (r * n_c + n_b)) for r in RATIO_GRID]


def absolute_log_lrs(x: float, n: float, allowed: float) -> list[float]:
    """Per alternative multiple m: the interval's log LR of "rate = m × allowed" against
    "rate = allowed" (the worst case of "within the allowance")."""
    x, n = round(max(x, 0.0)), round(max(n, 0.0))
    if n == 0 or not 0 < allowed < 1:
        return [0.0] * len(MULTIPLE_GRID)
    x = min(x, n)
    cap = (1 + allowed) / 2  # alternatives stay proper probabilities
    return [_log_lr(x, n, allowed, min(m * allowed, cap)) for m in MULTIPLE_GRID]


@dataclass(frozen=True)
class _Step:
    """One check's view of one poll: its new log LRs, and (at the cumulative level) its
    estimate, whether that is beyond tolerance, and the words for it."""

    name: str
    group: str
    log_lrs: list[float]
    beyond: bool
    estimate: str
    canary: float
    baseline: float
    limit: float


def _steps(
    poll: Poll, pc: SideStats, pb: SideStats, c: SideStats, b: SideStats, policy: Policy
) -> list[_Step]:
    """The checks a live poll runs (enabled ones only): pc/pb this interval, c/b cumulative."""
    t = policy.thresholds
    enabled = policy.check
    steps: list[_Step] = []
    allowed = 1 - t.slo
    if enabled("success_rate.slo").enabled:
        steps.append(
            _Step(
                "success_rate.slo",
                "success_rate.slo",
                absolute_log_lrs(pc.errors, pc.total, allowed),
                c.error_ratio > allowed,
                f"error ratio {pct(c.error_ratio)} (canary) vs allowed {pct(allowed)} "
                f"(SLO {pct(t.slo)})",
                c.success_rate,
                b.success_rate,
                t.slo,
            )
        )
    elif enabled("error_budget.fast_burn").enabled:
        fast = min(t.fast_burn * allowed, 1.0)
        burn = c.error_ratio / allowed
        steps.append(
            _Step(
                "error_budget.fast_burn",
                "error_budget.fast_burn",
                absolute_log_lrs(pc.errors, pc.total, fast),
                burn >= t.fast_burn,
                f"error-budget burn {burn:.2f}x (canary) vs fast-burn limit {t.fast_burn:g}x",
                burn,
                b.error_ratio / allowed,
                t.fast_burn,
            )
        )
    if enabled("success_rate.regression").enabled:
        beyond, tolerance = errors_beyond_tolerance(c, b, t)
        steps.append(
            _Step(
                "success_rate.regression",
                "success_rate.regression",
                relative_log_lrs(pc.errors, pb.errors, pc.total, pb.total),
                beyond,
                f"errors {pct(c.error_ratio)} (canary) vs {pct(b.error_ratio)} (baseline): "
                f"{tolerance}",
                c.success_rate,
                b.success_rate,
                t.error_ratio_tolerance_pp,
            )
        )
    for q in policy.quantiles:
        label = quantile_label(q)
        limit = t.max_latency(label)
        if enabled("latency.slo").enabled and limit is not None:
            slow = count_above_bound(limit, pc.buckets)
            share = share_above(limit, c.buckets)
            steps.append(
                _Step(
                    f"latency.{label}.slo",
                    "latency.slo",
                    absolute_log_lrs(
                        0.0 if math.isnan(slow) else slow,
                        pc.observations if enough(pc.observations, 1) else 0.0,
                        1 - q,
                    ),
                    share > 1 - q,
                    f"{pct(share)} of canary requests slower than {secs(limit)} vs allowed "
                    f"{pct(1 - q)} ({label} SLO)",
                    c.quantiles[label],
                    b.quantiles[label],
                    limit,
                )
            )
        if enabled("latency.regression").enabled:
            table = tail_table(q, pc.buckets, pb.buckets)
            lrs = (
                relative_log_lrs(
                    table.canary_above,
                    table.baseline_above,
                    table.canary_total,
                    table.baseline_total,
                )
                if table is not None
                else [0.0] * len(RATIO_GRID)
            )
            beyond, _, text = latency_beyond_tolerance(label, q, c, b, t)
            steps.append(
                _Step(
                    f"latency.{label}.regression",
                    "latency.regression",
                    lrs,
                    beyond,
                    text,
                    c.quantiles[label],
                    b.quantiles[label],
                    t.latency_ratio_tolerance,
                )
            )
    return steps


def _e_text(log_e: float) -> str:
    if log_e > 690:
        return "e-value >1e300"
    value = math.exp(log_e)
    return f"e-value {value:.3g}" if value < 1e4 else f"e-value {value:.2g}"


@dataclass(frozen=True)
class SequentialJudgement:
    judgement: Judgement
    sequence: Sequence
    summary: dict[str, Any]


def add_counts(a: SideCounts, b: SideCounts) -> SideCounts:
    statuses = dict(a.requests_by_status)
    for code, n in b.requests_by_status.items():
        statuses[code] = statuses.get(code, 0.0) + n
    buckets: dict[float, float] = {}
    for le, n in (*a.latency_buckets, *b.latency_buckets):
        if not math.isnan(n):  # a NaN sample would poison the sum for the rest of the sequence
            buckets[le] = buckets.get(le, 0.0) + n
    return SideCounts(statuses, tuple(sorted(buckets.items())))


def advance(sequence: Sequence | None, poll: Poll, policy: Policy) -> SequentialJudgement:
    """Add one poll's interval to a canary's sequence (None: start one) and judge it.

    A poll that ends no later than the sequence's last one adds nothing (a retried or stale
    request): it is judged on the evidence as it stands.
    """
    t = policy.thresholds
    new = sequence is None
    seq = (
        Sequence(started_at=poll.end - poll.seconds, last_end=poll.end - poll.seconds)
        if sequence is None
        else replace(
            sequence,
            evidence=dict(sequence.evidence),
            history=list(sequence.history),
            recent=list(sequence.recent),
        )
    )
    fresh = poll.end > seq.last_end
    interval = poll if fresh else Poll(seq.last_end, 0.0, SideCounts(), SideCounts())
    pc, pb = side_stats(interval.canary, policy), side_stats(interval.baseline, policy)
    if fresh:
        seq.canary = add_counts(seq.canary, interval.canary)
        seq.baseline = add_counts(seq.baseline, interval.baseline)
        seq.polls += 1
        seq.last_end = poll.end
        horizon = poll.end - parse_duration(policy.window)
        seq.recent = [p for p in (*seq.recent, poll) if p.end > horizon]
    c, b = side_stats(seq.canary, policy), side_stats(seq.baseline, policy)
    rc, rb = (side_stats(_summed(seq.recent, side), policy) for side in ("canary", "baseline"))
    steps = _steps(interval, pc, pb, c, b, policy)
    lately = _steps(interval, pc, pb, rc, rb, policy)
    alpha_each = t.sequential_alpha / max(1, len(steps))
    threshold = 1 / alpha_each
    checks: list[Check] = []
    for step, late in zip(steps, lately, strict=True):
        if late.beyond and not step.beyond:
            step = replace(
                step, beyond=True, estimate=f"over the last {policy.window}: {late.estimate}"
            )
        old = seq.evidence.get(step.name)
        ev = (
            Evidence([0.0] * len(step.log_lrs))
            if old is None
            else Evidence(list(old.log_lr), old.peak, old.failed_at, old.failed_reason)
        )
        if fresh:
            ev.log_lr = [a + d for a, d in zip(ev.log_lr, step.log_lrs, strict=True)]
            ev.peak = max(ev.peak, ev.log_e())
        crossed = ev.peak >= math.log(threshold)
        peak = "" if ev.peak <= ev.log_e() + 1e-9 else f" (peak {_e_text(ev.peak)[8:]})"
        relation = "≥" if ev.log_e() >= math.log(threshold) else "<"
        polls = f"{seq.polls} poll{'' if seq.polls == 1 else 's'}"
        evidence = (
            f"{_e_text(ev.log_e())}{peak} {relation} threshold {threshold:.3g} "
            f"= 1/(α {t.sequential_alpha:g} / {len(steps)} checks) over {polls}"
        )
        if ev.failed_at is None and crossed and step.beyond and fresh:
            ev.failed_at = seq.polls
            ev.failed_reason = f"{step.estimate}; {evidence}"
        seq.evidence[step.name] = ev
        failed = ev.failed_at is not None
        if failed:
            reason = f"{ev.failed_reason} (failed at poll {ev.failed_at})"
        elif crossed:
            reason = f"{step.estimate}; worse beyond noise but within tolerance; {evidence}"
        else:
            reason = f"{step.estimate}; no evidence of a regression: {evidence}"
        checks.append(
            make_check(
                policy,
                step.group,
                step.name,
                failed,
                canary=step.canary,
                baseline=step.baseline,
                limit=step.limit,
                reason=reason,
                method="e-process",
                e_value=math.exp(min(ev.log_e(), 700.0)),
                threshold=threshold,
            )
        )
    budget = budget_of(c, b, policy, max(seq.last_end - seq.started_at, 1.0))
    checks.extend(_budget_spend(c, b, budget, policy))
    missing = starved(
        c, b, policy, f"since the sequence began ({seq.polls} poll{'' if seq.polls == 1 else 's'})"
    )
    if not missing and fresh and _canary_went_quiet(pc, pb, c, b):
        missing = [
            f"the canary served no requests in the last {interval.seconds:g} s, while the "
            f"baseline served {pb.total:.0f} (is the canary still up?)"
        ]
    verdict, score, reasons = decide(checks, missing, t)
    if new:
        reasons = [*reasons, "first poll of this canary: a new evidence sequence starts here"]
    judgement = Judgement(verdict, score, reasons, c, b, budget, checks)
    summary = _finite(
        {
            "poll": seq.polls,
            "end": poll.end,
            "interval_seconds": interval.seconds,
            "requests": {"canary": pc.total, "baseline": pb.total},
            "errors": {"canary": pc.errors, "baseline": pb.errors},
            "success_rate": {"canary": c.success_rate, "baseline": b.success_rate},
            "burn": {"canary": budget.burn_canary, "baseline": budget.burn_baseline},
            "verdict": verdict,
            "score": score,
            "max_e_value": max((ch.e_value or 0.0 for ch in checks), default=0.0),
        }
    )
    if fresh:
        seq.history = [*seq.history, summary][-HISTORY_KEPT:]
    return SequentialJudgement(judgement, seq, summary)


def _summed(polls: list[Poll], side: str) -> SideCounts:
    total = SideCounts()
    for poll in polls:
        total = add_counts(total, getattr(poll, side))
    return total


def _canary_went_quiet(pc: SideStats, pb: SideStats, c: SideStats, b: SideStats) -> bool:
    """No canary request in an interval where, at the sequence's split, ten were expected:
    the canary stopped serving, and evidence from before must not pass it."""
    if pc.total > 0 or b.total <= 0:
        return False
    return pb.total * c.total / b.total >= 10


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None (the summary is stored and shown)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def _budget_spend(c: SideStats, b: SideStats, budget: ErrorBudget, policy: Policy) -> list[Check]:
    if not policy.check("error_budget.spend").enabled:
        return []
    return list(budget_spend(Look(c, b, budget, policy, alpha_each(policy))))
