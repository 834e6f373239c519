"""Error budget: how fast each side spends it, and what the canary added."""

from __future__ import annotations

import math
from dataclasses import dataclass

NAN = math.nan


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else NAN


@dataclass(frozen=True)
class ErrorBudget:
    slo: float
    burn_canary: float
    burn_baseline: float
    burn_delta: float
    excess_errors: float
    budget_delta: float


def error_budget(
    *,
    errors_canary: float,
    total_canary: float,
    errors_baseline: float,
    total_baseline: float,
    slo: float,
    period_seconds: float,
    window_seconds: float,
) -> ErrorBudget:
    """Burn rates (1.0 = spending exactly as fast as the SLO allows) and the canary's excess.

    `budget_delta` is the share of the whole SLO period's budget that the canary's excess errors
    used up, the period's traffic extrapolated from both sides' rate over the window.
    """
    allowed = 1.0 - slo
    burn_canary = _ratio(errors_canary, total_canary) / allowed
    burn_baseline = _ratio(errors_baseline, total_baseline) / allowed
    excess = NAN
    if total_canary > 0 and total_baseline > 0:
        excess = errors_canary - total_canary * errors_baseline / total_baseline
    period_requests = (total_canary + total_baseline) / window_seconds * period_seconds
    budget_delta = _ratio(excess, allowed * period_requests) if not math.isnan(excess) else NAN
    return ErrorBudget(
        slo=slo,
        burn_canary=burn_canary,
        burn_baseline=burn_baseline,
        burn_delta=burn_canary - burn_baseline,
        excess_errors=excess,
        budget_delta=budget_delta,
    )
