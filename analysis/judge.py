"""The judge of one look: a pipeline of classifiers over one window, a weighted score, a verdict.

Each classifier looks at one thing (absolute SLO, regression against the baseline, burn) and
says pass or fail with the numbers and a sentence; it says nothing when its data is missing, and
a disabled check is never run. A critical failure fails the canary; too little traffic is
inconclusive; otherwise the score decides (as Kayenta's metric-group scoring does).

Calibration: every test is exact at small counts, the latency tail test is two-sample, and the
policy's `alpha` is split evenly over the tests that run (Bonferroni), so a canary identical to
its baseline fails one look with probability at most `alpha` whatever its traffic. Live polls are
judged by `analysis.sequential` instead, whose guarantee holds over every poll of a canary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from analysis.budget import ErrorBudget, error_budget
from analysis.histogram import (
    beyond_top_bound,
    count_above_bound,
    histogram_quantile,
    mann_whitney_greater,
    share_above,
    tail_tables,
)
from analysis.observation import Observation, SideCounts
from analysis.policy import Policy, Thresholds, quantile_label
from analysis.stats import TestResult, binomial_greater, two_proportions_greater

Verdict = Literal["pass", "fail", "inconclusive"]
NAN = math.nan


@dataclass(frozen=True)
class Check:
    name: str
    group: str  # the policy's check name (weights and criticality live there)
    verdict: Literal["pass", "fail"]
    canary: float
    baseline: float
    limit: float
    reason: str
    p_value: float | None = None
    method: str | None = None
    critical: bool = True
    weight: float = 1.0
    e_value: float | None = None  # sequential checks: the evidence so far
    threshold: float | None = None  # sequential checks: the e-value that fails (1 / its alpha)


@dataclass(frozen=True)
class SideStats:
    total: float
    errors: float
    success_rate: float
    error_ratio: float
    observations: float  # in the latency histogram; NaN when a bucket count is NaN
    quantiles: dict[str, float]
    buckets: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    score: float
    reasons: list[str]
    canary: SideStats
    baseline: SideStats
    budget: ErrorBudget
    checks: list[Check] = field(default_factory=list)


def side_stats(side: SideCounts, policy: Policy) -> SideStats:
    conv = policy.conventions
    total = side.total
    errors = side.errors(conv)
    ratio = errors / total if total > 0 else NAN
    buckets = side.latency_buckets
    observations = max((n for le, n in buckets if math.isinf(le)), default=0.0)
    if len({le for le, _ in buckets}) < 2:
        observations = 0.0  # a lone +Inf bucket says how many, never how fast
    if any(math.isnan(n) for _, n in buckets):
        observations = NAN  # Prometheus answers NaN for such a histogram; so do we
    quantiles = {quantile_label(q): histogram_quantile(q, buckets) for q in policy.quantiles}
    return SideStats(total, errors, 1 - ratio, ratio, observations, quantiles, buckets)


def budget_of(
    canary: SideStats, baseline: SideStats, policy: Policy, seconds: float
) -> ErrorBudget:
    t = policy.thresholds
    return error_budget(
        errors_canary=canary.errors,
        total_canary=canary.total,
        errors_baseline=baseline.errors,
        total_baseline=baseline.total,
        slo=t.slo,
        period_seconds=t.slo_period_days * 86400,
        window_seconds=seconds,
    )


# Formatting: the reasons are read by people at 3 a.m.; units and both sides, always.
def pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 100:.2f}%"


def secs(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.3f} s"


def pval(p: float) -> str:
    return f"p={p:.1g}" if p >= 1e-300 else "p<1e-300"


def num(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def enough(count: float, minimum: float) -> bool:
    """At least `minimum`; a NaN count is never enough."""
    return math.isfinite(count) and count >= minimum


# Tolerances: how much worse counts as a regression (the tests only say "worse beyond noise").
def errors_beyond_tolerance(c: SideStats, b: SideStats, t: Thresholds) -> tuple[bool, str]:
    """Beyond when the error ratio rises by more than the pp tolerance OR by more than the
    ratio tolerance: pp alone would let a 0.05% service triple its errors unnoticed."""
    delta_pp = (c.error_ratio - b.error_ratio) * 100
    if b.error_ratio > 0:
        ratio = c.error_ratio / b.error_ratio
    else:
        ratio = math.inf if c.error_ratio > 0 else 1.0
    beyond = delta_pp > t.error_ratio_tolerance_pp or ratio > t.error_rate_ratio_tolerance
    shown = "x∞" if math.isinf(ratio) else f"x{ratio:.2f}"
    relation = ">" if beyond else "≤"
    text = (
        f"{delta_pp:+.2f} pp, {shown} {relation} tolerance {t.error_ratio_tolerance_pp:g} pp or "
        f"x{t.error_rate_ratio_tolerance:g}"
    )
    return beyond, text


def latency_beyond_tolerance(
    label: str, q: float, c: SideStats, b: SideStats, t: Thresholds
) -> tuple[bool, float, str]:
    """Beyond when the canary's quantile exceeds the baseline's by more than the tolerance. When
    the canary's quantile lies in the +Inf bucket, both quantiles clamp to the top bound, so the
    shares above that bound are compared instead."""
    base_q, can_q = b.quantiles[label], c.quantiles[label]
    if beyond_top_bound(q, c.buckets):
        top = max(le for le, _ in c.buckets if math.isfinite(le))
        c_share, b_share = share_above(top, c.buckets), share_above(top, b.buckets)
        ratio = c_share / b_share if b_share > 0 else math.inf
        beyond = ratio > t.latency_ratio_tolerance
        shown = "x∞" if math.isinf(ratio) else f"x{ratio:.2f}"
        text = (
            f"{label} beyond the top bucket {secs(top)}: {pct(c_share)} of canary requests above "
            f"it vs {pct(b_share)} of baseline's, {shown}"
        )
        return beyond, ratio, text
    ratio = can_q / base_q if base_q > 0 else NAN
    beyond = not math.isnan(ratio) and ratio > t.latency_ratio_tolerance
    text = (
        f"{label} latency {secs(can_q)} (canary) vs {secs(base_q)} (baseline): x{num(ratio)} "
        f"{'>' if beyond else '≤'} tolerance x{t.latency_ratio_tolerance:g}"
    )
    return beyond, ratio, text


# Which checks spend alpha, and how many tests each runs (one per quantile for some).
def tests_of(policy: Policy, group: str) -> int:
    if not policy.check(group).enabled:
        return 0
    if group == "latency.regression":
        return len(policy.quantiles)
    if group == "latency.slo":
        t = policy.thresholds
        return sum(t.max_latency(quantile_label(q)) is not None for q in policy.quantiles)
    if group == "error_budget.spend":
        return 0  # an estimate against a budget, not a test
    return 1


FIXED_GROUPS = (
    "success_rate.slo",
    "success_rate.regression",
    "error_budget.fast_burn",
    "latency.slo",
    "latency.regression",
    "latency.distribution",
)


def alpha_each(policy: Policy) -> float:
    """Bonferroni: the policy's alpha split evenly over every test one look runs."""
    count = sum(tests_of(policy, group) for group in FIXED_GROUPS)
    return policy.thresholds.alpha / max(1, count)


def make_check(policy: Policy, group: str, name: str, failed: bool, **values: object) -> Check:
    rule = policy.check(group)
    return Check(
        name=name,
        group=group,
        verdict="fail" if failed else "pass",
        critical=rule.critical,
        weight=rule.weight,
        **values,  # type: ignore[arg-type]
    )


def _significance(p: float, alpha: float) -> str:
    return f"{pval(p)} {'<' if p < alpha else '≥'} α {alpha:.2g}"


@dataclass(frozen=True)
class Look:
    """What every classifier of one look receives."""

    canary: SideStats
    baseline: SideStats
    budget: ErrorBudget
    policy: Policy
    alpha: float  # per test


Classifier = Callable[[Look], Iterator[Check]]


def success_rate_slo(look: Look) -> Iterator[Check]:
    """Absolute: the canary's error ratio is above the SLO's allowance (exact binomial test)."""
    c, b, t = look.canary, look.baseline, look.policy.thresholds
    if not enough(c.total, t.min_requests):
        return
    allowed = 1 - t.slo
    test = binomial_greater(c.errors, c.total, allowed)
    failed = test.p_value < look.alpha and c.error_ratio > allowed
    reason = (
        f"success rate {pct(c.success_rate)} (canary) vs SLO {pct(t.slo)}: error ratio "
        f"{pct(c.error_ratio)} {'above' if failed else 'not above'} the allowed {pct(allowed)} "
        f"beyond noise, {_significance(test.p_value, look.alpha)}"
    )
    yield make_check(
        look.policy, "success_rate.slo", "success_rate.slo", failed,
        canary=c.success_rate, baseline=b.success_rate, limit=t.slo, reason=reason,
        p_value=test.p_value, method=test.method,
    )  # fmt: skip


def success_rate_regression(look: Look) -> Iterator[Check]:
    """Relative: canary errors significantly above the baseline's, by more than the tolerance."""
    c, b, t = look.canary, look.baseline, look.policy.thresholds
    if not (enough(c.total, t.min_requests) and enough(b.total, t.min_requests)):
        return
    test = two_proportions_greater(c.errors, c.total, b.errors, b.total)
    beyond, tolerance = errors_beyond_tolerance(c, b, t)
    failed = beyond and test.p_value < look.alpha
    reason = (
        f"success rate {pct(c.success_rate)} (canary) vs {pct(b.success_rate)} (baseline): "
        f"{tolerance}, {_significance(test.p_value, look.alpha)}"
    )
    yield make_check(
        look.policy, "success_rate.regression", "success_rate.regression", failed,
        canary=c.success_rate, baseline=b.success_rate, limit=t.error_ratio_tolerance_pp,
        reason=reason, p_value=test.p_value, method=test.method,
    )  # fmt: skip


def fast_burn(look: Look) -> Iterator[Check]:
    """The SRE workbook's fast-burn page, whatever the baseline does (beyond noise)."""
    c, t, budget = look.canary, look.policy.thresholds, look.budget
    if not enough(c.total, t.min_requests):
        return
    limit_ratio = t.fast_burn * (1 - t.slo)
    if limit_ratio >= 1:
        p_value = 1.0
        method = "unreachable"
    else:
        test = binomial_greater(c.errors, c.total, limit_ratio)
        p_value, method = test.p_value, test.method
    failed = p_value < look.alpha and budget.burn_canary >= t.fast_burn
    reason = (
        f"error-budget burn {num(budget.burn_canary)}x (canary) vs "
        f"{num(budget.burn_baseline)}x (baseline): {'≥' if failed else 'not ≥'} fast-burn limit "
        f"{t.fast_burn:g}x beyond noise, {_significance(p_value, look.alpha)}"
    )
    yield make_check(
        look.policy, "error_budget.fast_burn", "error_budget.fast_burn", failed,
        canary=budget.burn_canary, baseline=budget.burn_baseline, limit=t.fast_burn,
        reason=reason, p_value=p_value, method=method,
    )  # fmt: skip


def budget_spend(look: Look) -> Iterator[Check]:
    c, b, t, budget = look.canary, look.baseline, look.policy.thresholds, look.budget
    enough_both = enough(c.total, t.min_requests) and enough(b.total, t.min_requests)
    if not enough_both or math.isnan(budget.budget_delta):
        return
    failed = budget.budget_delta > t.max_budget_spend
    reason = (
        f"canary spent {pct(max(budget.budget_delta, 0.0))} of the {t.slo_period_days:g}-day "
        f"error budget ({budget.excess_errors:.1f} errors beyond the baseline's rate), "
        f"{'>' if failed else '≤'} {pct(t.max_budget_spend)}"
    )
    yield make_check(
        look.policy, "error_budget.spend", "error_budget.spend", failed,
        canary=budget.budget_delta, baseline=0.0, limit=t.max_budget_spend, reason=reason,
    )  # fmt: skip


def latency_slo(look: Look) -> Iterator[Check]:
    """'pq ≤ L' means 'at most 1-q of requests slower than L': an exact test on that share."""
    c, b, policy = look.canary, look.baseline, look.policy
    t = policy.thresholds
    if not enough(c.observations, t.min_requests):
        return
    for q in policy.quantiles:
        label = quantile_label(q)
        limit = t.max_latency(label)
        if limit is None:
            continue
        share = share_above(limit, c.buckets)
        test = binomial_greater(count_above_bound(limit, c.buckets), c.observations, 1 - q)
        failed = test.p_value < look.alpha and share > 1 - q
        reason = (
            f"{label} latency {secs(c.quantiles[label])} (canary) vs SLO {secs(limit)}: "
            f"{pct(share)} of requests slower than {secs(limit)}, "
            f"{'above' if failed else 'not above'} the allowed {pct(1 - q)} beyond noise, "
            f"{_significance(test.p_value, look.alpha)}"
        )
        yield make_check(
            policy, "latency.slo", f"latency.{label}.slo", failed,
            canary=c.quantiles[label], baseline=b.quantiles[label], limit=limit, reason=reason,
            p_value=test.p_value, method=test.method,
        )  # fmt: skip


def latency_regression(look: Look) -> Iterator[Check]:
    """Per quantile, two-sample: both sides' shares above a common bucket bound (Fisher's test),
    and a canary quantile beyond the tolerance."""
    c, b, policy = look.canary, look.baseline, look.policy
    t = policy.thresholds
    if not (enough(c.observations, t.min_requests) and enough(b.observations, t.min_requests)):
        return
    tested: dict[tuple[float, float, float, float], TestResult] = {}
    tables = tail_tables(policy.quantiles, c.buckets, b.buckets)
    for q in policy.quantiles:
        label = quantile_label(q)
        table = tables[q]
        if table is None:
            continue
        # Neighbouring quantiles often land on the same bound, hence the same table.
        counts = (
            table.canary_above, table.canary_total, table.baseline_above, table.baseline_total
        )  # fmt: skip
        test = tested.get(counts)
        if test is None:
            test = tested[counts] = two_proportions_greater(*counts)
        beyond, _, tolerance = latency_beyond_tolerance(label, q, c, b, t)
        failed = beyond and test.p_value < look.alpha
        reason = (
            f"{tolerance}; above {secs(table.bound)}: "
            f"{pct(table.canary_above / table.canary_total)} of canary vs "
            f"{pct(table.baseline_above / table.baseline_total)} of baseline requests, "
            f"{_significance(test.p_value, look.alpha)}"
        )
        yield make_check(
            policy, "latency.regression", f"latency.{label}.regression", failed,
            canary=c.quantiles[label], baseline=b.quantiles[label],
            limit=t.latency_ratio_tolerance, reason=reason, p_value=test.p_value,
            method=f"tail-{test.method}",
        )  # fmt: skip


def latency_distribution(look: Look) -> Iterator[Check]:
    """Mann-Whitney U on the two histograms (ties = same bucket), as Kayenta's judge does."""
    c, b, policy = look.canary, look.baseline, look.policy
    t = policy.thresholds
    if not (enough(c.observations, t.min_requests) and enough(b.observations, t.min_requests)):
        return
    mw = mann_whitney_greater(c.buckets, b.buckets)
    ratios = [
        c.quantiles[k] / b.quantiles[k]
        for k in c.quantiles
        if b.quantiles[k] > 0 and not math.isnan(c.quantiles[k] / b.quantiles[k])
    ]
    worst = max(ratios, default=NAN)
    failed = mw.p_value < look.alpha and worst > t.latency_ratio_tolerance
    p50 = quantile_label(policy.quantiles[0])
    reason = (
        f"latency distribution (Mann-Whitney U): canary "
        f"{'slower' if mw.p_value < look.alpha else 'not slower'} than baseline, "
        f"{_significance(mw.p_value, look.alpha)}; worst quantile ratio x{num(worst)} "
        f"(tolerance x{t.latency_ratio_tolerance:g}); {p50} {secs(c.quantiles[p50])} vs "
        f"{secs(b.quantiles[p50])}"
    )
    yield make_check(
        policy, "latency.distribution", "latency.distribution", failed,
        canary=c.quantiles[p50], baseline=b.quantiles[p50], limit=t.latency_ratio_tolerance,
        reason=reason, p_value=mw.p_value, method="mann-whitney-u",
    )  # fmt: skip


PIPELINE: tuple[tuple[str, Classifier], ...] = (
    ("success_rate.slo", success_rate_slo),
    ("success_rate.regression", success_rate_regression),
    ("error_budget.fast_burn", fast_burn),
    ("error_budget.spend", budget_spend),
    ("latency.slo", latency_slo),
    ("latency.regression", latency_regression),
    ("latency.distribution", latency_distribution),
)


def latency_checked(policy: Policy) -> bool:
    return any(
        policy.check(name).enabled
        for name in ("latency.slo", "latency.regression", "latency.distribution")
    )


def starved(canary: SideStats, baseline: SideStats, policy: Policy, where: str) -> list[str]:
    """Why there is not enough data to pass; empty when there is."""
    t = policy.thresholds
    missing = [
        f"{name} has {n:.0f} requests {where}, below the minimum {t.min_requests:g}"
        for name, n in (("canary", canary.total), ("baseline", baseline.total))
        if not enough(n, t.min_requests)
    ]
    # Requests without their latency histogram is missing data, not a clean bill of health.
    if not missing and latency_checked(policy):
        missing = [
            f"{name} has {side.total:.0f} requests but {num(side.observations)} usable latency "
            f"observations (histogram {policy.conventions.latency_bucket_metric} missing?)"
            for name, side in (("canary", canary), ("baseline", baseline))
            if not enough(side.observations, t.min_requests)
        ]
    return missing


def decide(
    checks: list[Check], missing: list[str], t: Thresholds
) -> tuple[Verdict, float, list[str]]:
    """Verdict, score and reasons from the checks that ran and what data was missing."""
    weight = sum(ch.weight for ch in checks)
    passed = sum(ch.weight for ch in checks if ch.verdict == "pass")
    score = round(100 * passed / weight, 1) if weight > 0 else 0.0
    critical = [ch for ch in checks if ch.verdict == "fail" and ch.critical]
    failed_other = [ch.reason for ch in checks if ch.verdict == "fail" and not ch.critical]
    if critical:
        return "fail", score, [ch.reason for ch in critical] + failed_other
    if missing:
        return "inconclusive", score, [f"not enough data: {s}" for s in missing]
    if score >= t.pass_score:
        return "pass", score, failed_other or [f"all {len(checks)} checks passed (score {score:g})"]
    if score >= t.marginal_score:
        between = (
            f"score {score:g} is between marginal {t.marginal_score:g} and pass {t.pass_score:g}"
        )
        return "inconclusive", score, [between, *failed_other]
    return "fail", score, [f"score {score:g} is below marginal {t.marginal_score:g}", *failed_other]


def judge(observation: Observation, policy: Policy) -> Judgement:
    canary = side_stats(observation.canary, policy)
    baseline = side_stats(observation.baseline, policy)
    budget = budget_of(canary, baseline, policy, observation.window_seconds)
    look = Look(canary, baseline, budget, policy, alpha_each(policy))
    checks = [
        check
        for group, classifier in PIPELINE
        if policy.check(group).enabled  # a disabled check is never run
        for check in classifier(look)
    ]
    missing = starved(canary, baseline, policy, "in the window")
    verdict, score, reasons = decide(checks, missing, policy.thresholds)
    return Judgement(verdict, score, reasons, canary, baseline, budget, checks)
