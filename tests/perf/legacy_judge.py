"""The judge: a pipeline of classifiers over one observation, a weighted score, a verdict.

Each classifier looks at one thing (absolute SLO, regression against the baseline, burn) and
says pass or fail with the numbers and a sentence; it says nothing when its data is missing.
A critical failure fails the canary; too little traffic is inconclusive; otherwise the score
decides (as Kayenta's metric-group scoring does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from analysis.budget import ErrorBudget, error_budget
from analysis.histogram import histogram_quantile, mann_whitney_greater, share_above
from analysis.observation import Observation, SideCounts
from analysis.policy import Policy, quantile_label
from analysis.stats import binomial_greater, two_proportions_greater, wilson_lower

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


@dataclass(frozen=True)
class SideStats:
    total: float
    errors: float
    success_rate: float
    error_ratio: float
    observations: float  # in the latency histogram
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
    quantiles = {quantile_label(q): histogram_quantile(q, buckets) for q in policy.quantiles}
    return SideStats(total, errors, 1 - ratio, ratio, observations, quantiles, buckets)


# Formatting: the reasons are read by people at 3 a.m.; units and both sides, always.
def pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 100:.2f}%"


def secs(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.3f} s"


def pval(p: float) -> str:
    return f"p={p:.1g}" if p >= 1e-300 else "p<1e-300"


Classifier = Callable[[SideStats, SideStats, ErrorBudget, Policy], Iterator[Check]]


def _check(policy: Policy, group: str, name: str, failed: bool, **values: object) -> Check:
    rule = policy.check(group)
    return Check(
        name=name,
        group=group,
        verdict="fail" if failed else "pass",
        critical=rule.critical,
        weight=rule.weight,
        **values,  # type: ignore[arg-type]
    )


def success_rate_slo(c: SideStats, b: SideStats, _: ErrorBudget, policy: Policy) -> Iterator[Check]:
    """Absolute: the canary's error ratio is above the SLO's allowance beyond noise."""
    t = policy.thresholds
    if c.total < t.min_requests:
        return
    allowed = 1 - t.slo
    lower = wilson_lower(c.errors, c.total, t.alpha)
    test = binomial_greater(round(c.errors), round(c.total), allowed)
    failed = lower > allowed
    confidence = f"{(1 - t.alpha) * 100:g}%"
    relation = "above" if failed else "not above"
    reason = (
        f"success rate {pct(c.success_rate)} (canary) vs SLO {pct(t.slo)}: error ratio at least "
        f"{pct(lower)} at {confidence} confidence, {relation} the allowed {pct(allowed)}, "
        f"{pval(test.p_value)}"
    )
    yield _check(
        policy, "success_rate.slo", "success_rate.slo", failed,
        canary=c.success_rate, baseline=b.success_rate, limit=t.slo, reason=reason,
        p_value=test.p_value, method=f"wilson+{test.method}",
    )  # fmt: skip


def success_rate_regression(
    c: SideStats, b: SideStats, _: ErrorBudget, policy: Policy
) -> Iterator[Check]:
    """Relative: canary errors significantly above the baseline's, by more than the tolerance."""
    t = policy.thresholds
    if c.total < t.min_requests or b.total < t.min_requests:
        return
    delta_pp = (c.error_ratio - b.error_ratio) * 100
    test = two_proportions_greater(round(c.errors), round(c.total), round(b.errors), round(b.total))
    significant = test.p_value < t.alpha
    failed = delta_pp > t.error_ratio_tolerance_pp and significant
    relation = ">" if delta_pp > t.error_ratio_tolerance_pp else "≤"
    reason = (
        f"success rate {pct(c.success_rate)} (canary) vs {pct(b.success_rate)} (baseline): "
        f"{delta_pp:+.2f} pp {relation} tolerance {t.error_ratio_tolerance_pp:g} pp, "
        f"{pval(test.p_value)}"
    )
    if delta_pp > t.error_ratio_tolerance_pp and not significant:
        reason += f" (not significant at alpha={t.alpha:g})"
    yield _check(
        policy, "success_rate.regression", "success_rate.regression", failed,
        canary=c.success_rate, baseline=b.success_rate, limit=t.error_ratio_tolerance_pp,
        reason=reason, p_value=test.p_value, method=test.method,
    )  # fmt: skip


def fast_burn(c: SideStats, b: SideStats, budget: ErrorBudget, policy: Policy) -> Iterator[Check]:
    """The SRE workbook's fast-burn page, whatever the baseline does (beyond noise)."""
    t = policy.thresholds
    if c.total < t.min_requests:
        return
    lower_burn = wilson_lower(c.errors, c.total, t.alpha) / (1 - t.slo)
    failed = lower_burn >= t.fast_burn
    reason = (
        f"error-budget burn {budget.burn_canary:.2f}x (canary) vs "
        f"{_num(budget.burn_baseline)}x (baseline): at least {lower_burn:.2f}x at "
        f"{(1 - t.alpha) * 100:g}% confidence, {'≥' if failed else '<'} fast-burn limit "
        f"{t.fast_burn:g}x"
    )
    yield _check(
        policy, "error_budget.fast_burn", "error_budget.fast_burn", failed,
        canary=budget.burn_canary, baseline=budget.burn_baseline, limit=t.fast_burn,
        reason=reason, method="wilson",
    )  # fmt: skip


def budget_spend(
    c: SideStats, b: SideStats, budget: ErrorBudget, policy: Policy
) -> Iterator[Check]:
    t = policy.thresholds
    if c.total < t.min_requests or b.total < t.min_requests or math.isnan(budget.budget_delta):
        return
    failed = budget.budget_delta > t.max_budget_spend
    reason = (
        f"canary spent {pct(max(budget.budget_delta, 0.0))} of the {t.slo_period_days:g}-day "
        f"error budget ({budget.excess_errors:.1f} errors beyond the baseline's rate), "
        f"{'>' if failed else '≤'} {pct(t.max_budget_spend)}"
    )
    yield _check(
        policy, "error_budget.spend", "error_budget.spend", failed,
        canary=budget.budget_delta, baseline=0.0, limit=t.max_budget_spend, reason=reason,
    )  # fmt: skip


def latency_slo(c: SideStats, b: SideStats, _: ErrorBudget, policy: Policy) -> Iterator[Check]:
    """'pq ≤ L' means 'at most 1-q of requests slower than L': tested on that share."""
    t = policy.thresholds
    if c.observations < t.min_requests:
        return
    for q in policy.quantiles:
        label = quantile_label(q)
        limit = t.max_latency(label)
        if limit is None:
            continue
        share = share_above(limit, c.buckets)
        slow = share * c.observations
        lower = wilson_lower(slow, c.observations, t.alpha)
        test = binomial_greater(round(slow), round(c.observations), 1 - q)
        failed = lower > 1 - q
        reason = (
            f"{label} latency {secs(c.quantiles[label])} (canary) vs SLO {secs(limit)}: "
            f"{pct(share)} of requests slower than {secs(limit)}, "
            f"{'above' if failed else 'not above'} the allowed {pct(1 - q)}, {pval(test.p_value)}"
        )
        yield _check(
            policy, "latency.slo", f"latency.{label}.slo", failed,
            canary=c.quantiles[label], baseline=b.quantiles[label], limit=limit, reason=reason,
            p_value=test.p_value, method=f"wilson+{test.method}",
        )  # fmt: skip


def latency_regression(
    c: SideStats, b: SideStats, _: ErrorBudget, policy: Policy
) -> Iterator[Check]:
    """Per quantile: share of canary requests above the baseline's q-quantile vs 1-q."""
    t = policy.thresholds
    if c.observations < t.min_requests or b.observations < t.min_requests:
        return
    for q in policy.quantiles:
        label = quantile_label(q)
        base_q, can_q = b.quantiles[label], c.quantiles[label]
        if math.isnan(base_q) or math.isnan(can_q) or base_q <= 0:
            continue
        ratio = can_q / base_q
        share = share_above(base_q, c.buckets)
        test = binomial_greater(round(share * c.observations), round(c.observations), 1 - q)
        significant = test.p_value < t.alpha
        failed = ratio > t.latency_ratio_tolerance and significant
        reason = (
            f"{label} latency {secs(can_q)} (canary) vs {secs(base_q)} (baseline): "
            f"x{ratio:.2f} {'>' if ratio > t.latency_ratio_tolerance else '≤'} tolerance "
            f"x{t.latency_ratio_tolerance:g}; {pct(share)} of canary requests above the "
            f"baseline's {label} (expected {pct(1 - q)}), {pval(test.p_value)}"
        )
        yield _check(
            policy, "latency.regression", f"latency.{label}.regression", failed,
            canary=can_q, baseline=base_q, limit=t.latency_ratio_tolerance, reason=reason,
            p_value=test.p_value, method=test.method,
        )  # fmt: skip


def latency_distribution(
    c: SideStats, b: SideStats, _: ErrorBudget, policy: Policy
) -> Iterator[Check]:
    """Mann-Whitney U on the two histograms (ties = same bucket), as Kayenta's judge does."""
    t = policy.thresholds
    if c.observations < t.min_requests or b.observations < t.min_requests:
        return
    mw = mann_whitney_greater(c.buckets, b.buckets)
    ratios = [
        c.quantiles[k] / b.quantiles[k]
        for k in c.quantiles
        if b.quantiles[k] > 0 and not math.isnan(c.quantiles[k] / b.quantiles[k])
    ]
    worst = max(ratios, default=NAN)
    failed = mw.p_value < t.alpha and worst > t.latency_ratio_tolerance
    p50 = quantile_label(policy.quantiles[0])
    reason = (
        f"latency distribution (Mann-Whitney U): canary "
        f"{'slower' if mw.p_value < t.alpha else 'not slower'} "
        f"than baseline, {pval(mw.p_value)}; worst quantile ratio x{_num(worst)} "
        f"(tolerance x{t.latency_ratio_tolerance:g}); {p50} {secs(c.quantiles[p50])} vs "
        f"{secs(b.quantiles[p50])}"
    )
    yield _check(
        policy, "latency.distribution", "latency.distribution", failed,
        canary=c.quantiles[p50], baseline=b.quantiles[p50], limit=t.latency_ratio_tolerance,
        reason=reason, p_value=mw.p_value, method="mann-whitney-u",
    )  # fmt: skip


def _latency_checked(policy: Policy) -> bool:
    return any(
        policy.check(name).enabled
        for name in ("latency.slo", "latency.regression", "latency.distribution")
    )


def _num(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


PIPELINE: tuple[Classifier, ...] = (
    success_rate_slo,
    success_rate_regression,
    fast_burn,
    budget_spend,
    latency_slo,
    latency_regression,
    latency_distribution,
)


def judge(observation: Observation, policy: Policy) -> Judgement:
    t = policy.thresholds
    canary = side_stats(observation.canary, policy)
    baseline = side_stats(observation.baseline, policy)
    budget = error_budget(
        errors_canary=canary.errors,
        total_canary=canary.total,
        errors_baseline=baseline.errors,
        total_baseline=baseline.total,
        slo=t.slo,
        period_seconds=t.slo_period_days * 86400,
        window_seconds=observation.window_seconds,
    )
    checks = [
        check
        for classifier in PIPELINE
        for check in classifier(canary, baseline, budget, policy)
        if policy.check(check.group).enabled
    ]
    weight = sum(ch.weight for ch in checks)
    passed = sum(ch.weight for ch in checks if ch.verdict == "pass")
    score = round(100 * passed / weight, 1) if weight > 0 else 0.0

    critical = [ch for ch in checks if ch.verdict == "fail" and ch.critical]
    failed_other = [ch for ch in checks if ch.verdict == "fail" and not ch.critical]
    starved = [
        f"{name} has {n:.0f} requests in the window, below the minimum {t.min_requests:g}"
        for name, n in (("canary", canary.total), ("baseline", baseline.total))
        if n < t.min_requests
    ]
    # Requests without their latency histogram is missing data, not a clean bill of health.
    if not starved and _latency_checked(policy):
        starved = [
            f"{name} has {side.total:.0f} requests but {side.observations:.0f} latency "
            f"observations (histogram {policy.conventions.latency_bucket_metric} missing?)"
            for name, side in (("canary", canary), ("baseline", baseline))
            if side.observations < t.min_requests
        ]
    verdict: Verdict
    if critical:
        verdict = "fail"
        reasons = [ch.reason for ch in critical] + [ch.reason for ch in failed_other]
    elif starved:
        verdict = "inconclusive"
        reasons = [f"not enough data: {s}" for s in starved]
    elif score >= t.pass_score:
        verdict = "pass"
        reasons = [ch.reason for ch in failed_other] or [
            f"all {len(checks)} checks passed (score {score:g})"
        ]
    elif score >= t.marginal_score:
        verdict = "inconclusive"
        reasons = [f"score {score:g} is between marginal {t.marginal_score:g} and pass "
                   f"{t.pass_score:g}"] + [ch.reason for ch in failed_other]  # fmt: skip
    else:
        verdict = "fail"
        reasons = [f"score {score:g} is below marginal {t.marginal_score:g}"] + [
            ch.reason for ch in failed_other
        ]
    return Judgement(verdict, score, reasons, canary, baseline, budget, checks)
