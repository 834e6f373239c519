"""Confidence bounds and one-sided tests on counts, in pure standard-library Python.

Counts may be non-integer (Prometheus' ``increase()`` extrapolates); the exact tests round them.
Everything is meant to stay accurate for counts up to 1e8 and p-values down to ~1e-300:
probabilities are built in log space from Loader's saddle-point binomial density (the method
behind R's ``dbinom``/``dhyper``), which avoids the cancellation of ``lgamma`` differences at
large counts, and tails are summed relative to their first term with an explicit error bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

_LOG_2PI = math.log(2 * math.pi)
_TAIL_RELATIVE_TOLERANCE = 1e-17


@dataclass(frozen=True)
class TestResult:
    """A one-sided p-value and the method that produced it.

    ``method`` is one of "fisher-exact", "z-test", "binomial-exact", "binomial-normal".
    """

    __test__ = False  # not a pytest test class despite its name

    p_value: float
    method: str


def _z_for(alpha: float) -> float:
    # alpha >= 0.5 would make the "lower" bound the upper one (z <= 0).
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    return NormalDist().inv_cdf(1 - alpha)


def _wilson_bounds(k: float, n: float, alpha: float) -> tuple[float, float]:
    """Both roots of the Wilson score quadratic, each at one-sided confidence 1 - alpha."""
    z = _z_for(alpha)
    if n < 0 or math.isnan(n) or math.isinf(n) or math.isnan(k):
        raise ValueError(f"invalid counts k={k}, n={n}")
    if n == 0:
        return math.nan, math.nan
    # Extrapolated counts can overshoot by a hair; the ratio is a proportion whatever they say.
    k = min(max(k, 0.0), n)
    share = k / n
    z2_over_n = z * z / n
    scale = 1 + z2_over_n
    center = (share + z2_over_n / 2) / scale
    half_width = z * math.sqrt(share * (1 - share) / n + z2_over_n / (4 * n)) / scale
    # With k == n the upper root is exactly 1; the sum could round to a hair either side.
    upper = 1.0 if k == n else min(1.0, center + half_width)
    # lower * upper = share**2 / scale (product of the roots): no cancellation for small shares,
    # where center - half_width would subtract two nearly equal numbers.
    lower = share * share / (scale * upper)
    return min(1.0, max(0.0, lower)), upper


def wilson_lower(k: float, n: float, alpha: float) -> float:
    """Lower Wilson score bound of the proportion k/n, one-sided at confidence 1 - alpha.

    NaN when n == 0; ValueError unless 0 < alpha < 0.5. Equals the lower end of the two-sided
    Wilson interval at confidence 1 - 2*alpha.
    """
    return _wilson_bounds(k, n, alpha)[0]


def wilson_upper(k: float, n: float, alpha: float) -> float:
    """Upper Wilson score bound of the proportion k/n, one-sided at confidence 1 - alpha."""
    return _wilson_bounds(k, n, alpha)[1]


def _normal_sf(z: float) -> float:
    """P(Z > z), accurate in the far upper tail (erfc, not 1 - cdf)."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def _clamp_probability(value: float) -> float:
    if math.isnan(value):
        return value
    return min(1.0, max(0.0, value))


def _stirling_error(n: float) -> float:
    """log(n!) - log(sqrt(2 pi n) (n/e)^n), Loader's series for large n."""
    if n <= 15:
        if n == 0:
            return 0.0
        return math.lgamma(n + 1) - (n + 0.5) * math.log(n) + n - _LOG_2PI / 2
    n2 = n * n
    s0, s1, s2, s3, s4 = 1 / 12, 1 / 360, 1 / 1260, 1 / 1680, 1 / 1188
    if n > 500:
        return (s0 - s1 / n2) / n
    if n > 80:
        return (s0 - (s1 - s2 / n2) / n2) / n
    if n > 35:
        return (s0 - (s1 - (s2 - s3 / n2) / n2) / n2) / n
    return (s0 - (s1 - (s2 - (s3 - s4 / n2) / n2) / n2) / n2) / n


def _deviance(x: float, mean: float) -> float:
    """x log(x / mean) + mean - x, without cancellation when x is close to mean."""
    if abs(x - mean) < 0.1 * (x + mean):
        ratio = (x - mean) / (x + mean)
        total = (x - mean) * ratio
        term = 2 * x * ratio
        ratio_sq = ratio * ratio
        j = 1
        while True:
            term *= ratio_sq
            updated = total + term / (2 * j + 1)
            if updated == total:
                return updated
            total = updated
            j += 1
    return x * math.log(x / mean) + mean - x


def _log_binomial_pmf(x: int, n: int, p: float, q: float) -> float:
    """log P(X = x) for X ~ Binomial(n, p), q = 1 - p passed separately to keep precision."""
    if x < 0 or x > n:
        return -math.inf
    if n == 0:
        return 0.0
    if p == 0:
        return 0.0 if x == 0 else -math.inf
    if q == 0:
        return 0.0 if x == n else -math.inf
    if x == 0:
        return -_deviance(n, n * q) - n * p if p < 0.1 else n * math.log(q)
    if x == n:
        return -_deviance(n, n * p) - n * q if q < 0.1 else n * math.log(p)
    log_core = (
        _stirling_error(n)
        - _stirling_error(x)
        - _stirling_error(n - x)
        - _deviance(x, n * p)
        - _deviance(n - x, n * q)
    )
    return log_core - 0.5 * (_LOG_2PI + math.log(x) + math.log1p(-x / n))


def _log_hypergeometric_pmf(x: int, successes: int, failures: int, draws: int) -> float:
    """log P(X = x): x successes in ``draws`` draws without replacement (R's dhyper identity)."""
    population = successes + failures
    p = draws / population
    q = (population - draws) / population
    return (
        _log_binomial_pmf(x, successes, p, q)
        + _log_binomial_pmf(draws - x, failures, p, q)
        - _log_binomial_pmf(draws, population, p, q)
    )


# The pmfs whose tails are walked, each in one direction: the ratio of neighbouring terms is
# written out for each in `_relative_tail_sum` (a Python call per term was a tenth of a judgement).
_HYPERGEOMETRIC_UP = 0  # pmf(x + 1) / pmf(x), with a = successes, b = failures - draws, c = draws
_HYPERGEOMETRIC_DOWN = 1  # pmf(x - 1) / pmf(x), same a, b, c
_BINOMIAL_UP = 2  # pmf(x + 1) / pmf(x), with a = n, b = p / q
_BINOMIAL_DOWN = 3  # pmf(x - 1) / pmf(x), same a, b


def _relative_tail_sum(start: int, stop: int, pmf: int, a: int, b: float, c: int = 0) -> float:
    """Sum of pmf(x) / pmf(start) for x = start, start +- 1, ... up to ``stop`` (inclusive).

    Callers start on one side of the mode and walk away from it, where the terms of these
    log-concave pmfs shrink by a falling ratio r: the rest of the tail is then at most
    term / (1 - r), and the walk stops once that is negligible against the sum so far.
    """
    step = 1 if pmf in (_HYPERGEOMETRIC_UP, _BINOMIAL_UP) else -1
    total = 0.0
    term = 1.0
    x = start
    while True:
        total += term
        if x == stop:
            return total
        if pmf == _HYPERGEOMETRIC_UP:
            ratio = (a - x) * (c - x) / ((x + 1) * (b + x + 1))
        elif pmf == _HYPERGEOMETRIC_DOWN:
            ratio = x * (b + x) / ((a - x + 1) * (c - x + 1))
        elif pmf == _BINOMIAL_UP:
            ratio = (a - x) * b / (x + 1)
        else:
            ratio = x / ((a - x + 1) * b)
        term *= ratio
        x += step
        if ratio < 1 and term / (1 - ratio) <= total * _TAIL_RELATIVE_TOLERANCE:
            return total + term


def _hypergeometric_upper_tail(k: int, successes: int, failures: int, draws: int) -> float:
    """P(X >= k), X = successes among ``draws`` taken without replacement."""
    low = max(0, draws - failures)
    high = min(draws, successes)
    if k <= low:
        return 1.0
    if k > high:
        return 0.0
    mode = (draws + 1) * (successes + 1) // (successes + failures + 2)
    if k > mode:
        log_first = _log_hypergeometric_pmf(k, successes, failures, draws)
        up = _relative_tail_sum(k, high, _HYPERGEOMETRIC_UP, successes, failures - draws, draws)
        return math.exp(log_first) * up
    # k is at or below the mode: sum the complement, which lies beyond the mode on the other side.
    log_first = _log_hypergeometric_pmf(k - 1, successes, failures, draws)
    down = _relative_tail_sum(k - 1, low, _HYPERGEOMETRIC_DOWN, successes, failures - draws, draws)
    lower_tail = math.exp(log_first) * down
    return 1.0 - lower_tail


def _binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), 0 < p < 1."""
    q = 1 - p
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    mode = math.floor((n + 1) * p)
    odds = p / q
    if k > mode:
        log_first = _log_binomial_pmf(k, n, p, q)
        return math.exp(log_first) * _relative_tail_sum(k, n, _BINOMIAL_UP, n, odds)
    log_first = _log_binomial_pmf(k - 1, n, p, q)
    lower_tail = math.exp(log_first) * _relative_tail_sum(k - 1, 0, _BINOMIAL_DOWN, n, odds)
    return 1.0 - lower_tail


def _rounded_count(value: float, name: str) -> int:
    if math.isnan(value) or value < 0 or math.isinf(value):
        raise ValueError(f"{name} must be a finite count >= 0, got {value}")
    return round(value)


# Fisher's exact test is used while the smallest expected cell of the 2x2 table is below this.
# The hypergeometric variance is then below it too, so the tail sum stays at a few hundred terms;
# above it the continuity-corrected normal approximation is within ~1e-3 of Fisher's p-value.
EXACT_BELOW_EXPECTED_CELL = 1000.0
# The binomial tail is summed exactly while n * p0 * (1 - p0) is below this, for the same reasons.
EXACT_BELOW_BINOMIAL_VARIANCE = 1000.0


def two_proportions_greater(k1: float, n1: float, k2: float, n2: float) -> TestResult:
    """One-sided test of H1: p1 > p2 (canary errors k1 of n1 vs baseline errors k2 of n2).

    Counts are rounded (and each k clamped into [0, n]). If the smallest expected cell count of
    the 2x2 table is below ``EXACT_BELOW_EXPECTED_CELL``, Fisher's exact test (one-sided, the
    hypergeometric tail P(X >= k1) given the margins); otherwise the pooled two-proportion z-test
    with continuity correction (the same statistic as Yates' chi-square). n1 or n2 == 0 -> NaN.
    """
    n1_int = _rounded_count(n1, "n1")
    n2_int = _rounded_count(n2, "n2")
    if n1_int == 0 or n2_int == 0:
        return TestResult(p_value=math.nan, method="fisher-exact")
    k1_int = min(_rounded_count(k1, "k1"), n1_int)
    k2_int = min(_rounded_count(k2, "k2"), n2_int)
    population = n1_int + n2_int
    errors = k1_int + k2_int
    successes = population - errors
    smallest_expected = min(n1_int, n2_int) * min(errors, successes) / population
    if smallest_expected < EXACT_BELOW_EXPECTED_CELL:
        p_value = _hypergeometric_upper_tail(k1_int, errors, successes, n1_int)
        return TestResult(p_value=_clamp_probability(p_value), method="fisher-exact")
    pooled = errors / population
    standard_error = math.sqrt(pooled * (1 - pooled) * (1 / n1_int + 1 / n2_int))
    continuity = 0.5 * (1 / n1_int + 1 / n2_int)
    difference = k1_int / n1_int - k2_int / n2_int
    z = (difference - continuity) / standard_error
    return TestResult(p_value=_clamp_probability(_normal_sf(z)), method="z-test")


def binomial_greater(k: float, n: float, p0: float) -> TestResult:
    """P(X >= k) under X ~ Binomial(n, p0): one-sided test of H1 "the true rate exceeds p0".

    Counts are rounded. Exact (log-space terms, summed until the rest is negligible) while
    n * p0 * (1 - p0) < ``EXACT_BELOW_BINOMIAL_VARIANCE``; otherwise the normal approximation with
    continuity correction. n == 0 -> NaN.
    """
    if not 0 <= p0 <= 1:
        raise ValueError(f"p0 must be in [0, 1], got {p0}")
    n_int = _rounded_count(n, "n")
    k_int = _rounded_count(k, "k")
    if n_int == 0:
        return TestResult(p_value=math.nan, method="binomial-exact")
    variance = n_int * p0 * (1 - p0)
    if variance < EXACT_BELOW_BINOMIAL_VARIANCE:
        if p0 == 0:
            p_value = 1.0 if k_int == 0 else 0.0
        elif p0 == 1:
            p_value = 1.0 if k_int <= n_int else 0.0
        else:
            p_value = _binomial_upper_tail(k_int, n_int, p0)
        return TestResult(p_value=_clamp_probability(p_value), method="binomial-exact")
    if k_int > n_int:
        return TestResult(p_value=0.0, method="binomial-normal")
    z = (k_int - 0.5 - n_int * p0) / math.sqrt(variance)
    return TestResult(p_value=_clamp_probability(_normal_sf(z)), method="binomial-normal")
