"""Wilson bounds, Fisher / z two-proportion test and binomial tail, with scipy as the oracle."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats as scipy_stats

from analysis.stats import (
    EXACT_BELOW_BINOMIAL_VARIANCE,
    EXACT_BELOW_EXPECTED_CELL,
    TestResult,
    binomial_greater,
    two_proportions_greater,
    wilson_lower,
    wilson_upper,
)


def _fisher_greater(k1: int, n1: int, k2: int, n2: int) -> float:
    table = [[k1, n1 - k1], [k2, n2 - k2]]
    return float(scipy_stats.fisher_exact(table, alternative="greater").pvalue)


def _binomial_greater(k: int, n: int, p0: float) -> float:
    return float(scipy_stats.binomtest(k, n, p0, alternative="greater").pvalue)


# --- Wilson bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "alpha"),
    [
        (0, 10, 0.05),
        (1, 10, 0.05),
        (10, 10, 0.05),
        (1, 300, 0.05),
        (30, 3000, 0.01),
        (499, 1000, 0.1),
        (1, 100_000_000, 0.05),
        (99_999_999, 100_000_000, 0.001),
        (5_000_000, 100_000_000, 0.05),
    ],
)
def test_wilson_bounds_match_scipy_two_sided_interval_at_double_alpha(
    k: int, n: int, alpha: float
) -> None:
    interval = scipy_stats.binomtest(k, n).proportion_ci(
        confidence_level=1 - 2 * alpha, method="wilson"
    )
    assert wilson_lower(k, n, alpha) == pytest.approx(interval.low, rel=1e-9, abs=1e-15)
    assert wilson_upper(k, n, alpha) == pytest.approx(interval.high, rel=1e-9, abs=1e-15)


def test_wilson_bounds_match_scipy_on_random_counts() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = int(10 ** rng.uniform(0, 8))
        k = rng.randint(0, n)
        alpha = rng.choice([0.001, 0.01, 0.05, 0.1])
        interval = scipy_stats.binomtest(k, n).proportion_ci(
            confidence_level=1 - 2 * alpha, method="wilson"
        )
        assert wilson_lower(k, n, alpha) == pytest.approx(interval.low, rel=1e-9, abs=1e-15)
        assert wilson_upper(k, n, alpha) == pytest.approx(interval.high, rel=1e-9, abs=1e-15)


def test_one_unlucky_error_does_not_breach_but_thirty_in_3000_do() -> None:
    # The spec's example for a 99.9 % SLO (allowed error ratio 0.001) at alpha = 0.05.
    assert wilson_lower(1, 300, 0.05) < 0.001
    assert wilson_lower(30, 3000, 0.05) > 0.001


def test_wilson_bounds_bracket_the_observed_ratio_and_accept_fractional_counts() -> None:
    k, n = 12.4, 1003.7
    assert wilson_lower(k, n, 0.05) < k / n < wilson_upper(k, n, 0.05)
    assert wilson_lower(k, n, 0.05) > wilson_lower(12, 1003.7, 0.05)


def test_wilson_clamps_overshooting_error_counts_and_rejects_bad_input() -> None:
    assert wilson_upper(101, 100, 0.05) == 1.0
    assert wilson_lower(101, 100, 0.05) == wilson_lower(100, 100, 0.05)
    assert math.isnan(wilson_lower(0, 0, 0.05))
    assert math.isnan(wilson_upper(0, 0, 0.05))
    with pytest.raises(ValueError):
        wilson_lower(1, 10, 0.0)
    with pytest.raises(ValueError):
        wilson_upper(1, 10, 0.5)
    with pytest.raises(ValueError):
        wilson_lower(1, -10, 0.05)


# --- two proportions -------------------------------------------------------------------------


def test_fisher_branch_matches_scipy_on_small_random_tables() -> None:
    rng = random.Random(11)
    checked = 0
    for _ in range(300):
        n1, n2 = rng.randint(1, 3000), rng.randint(1, 3000)
        rate = rng.choice([0.001, 0.01, 0.05, 0.3])
        k2 = min(n2, round(n2 * rate * rng.uniform(0.5, 1.5)))
        k1 = min(n1, round(n1 * rate * rng.uniform(0.2, 3)))
        result = two_proportions_greater(k1, n1, k2, n2)
        if result.method != "fisher-exact":
            continue  # a few high-rate tables reach the z-test threshold
        assert result.p_value == pytest.approx(_fisher_greater(k1, n1, k2, n2), rel=1e-9)
        checked += 1
    assert checked > 250


def test_fisher_branch_matches_scipy_with_huge_totals_and_few_errors() -> None:
    # 1e8-request sides with at most a few hundred errors still use the exact test. The tolerance
    # is scipy's: its hypergeometric tail drifts by up to ~1e-8 relative at these sizes, while
    # ours agreed with a 40-digit mpmath sum to ~1e-13 when this module was written.
    rng = random.Random(12)
    for _ in range(100):
        n1 = rng.randint(10_000_000, 100_000_000)
        n2 = rng.randint(10_000_000, 100_000_000)
        k2 = rng.randint(0, 400)
        k1 = rng.randint(0, 400)
        result = two_proportions_greater(k1, n1, k2, n2)
        assert result.method == "fisher-exact"
        assert result.p_value == pytest.approx(_fisher_greater(k1, n1, k2, n2), rel=1e-7)


@pytest.mark.parametrize(
    ("k1", "n1", "k2", "n2"),
    [
        (300, 1000, 0, 1000),  # ~1.5e-102
        (700, 1000, 0, 1000),  # ~1.3e-297
        (710, 1000, 0, 1000),  # ~4.8e-304
    ],
)
def test_fisher_tiny_p_values_stay_positive_and_accurate(
    k1: int, n1: int, k2: int, n2: int
) -> None:
    result = two_proportions_greater(k1, n1, k2, n2)
    expected = _fisher_greater(k1, n1, k2, n2)
    assert expected > 0
    assert result.p_value == pytest.approx(expected, rel=1e-9)


def test_z_branch_is_yates_chi_square_made_one_sided() -> None:
    # The pooled z-test with continuity correction is exactly Yates' corrected chi-square for a
    # 2x2 table (z**2 == chi2) whenever the canary is worse by more than the correction.
    rng = random.Random(13)
    for _ in range(100):
        n1, n2 = rng.randint(200_000, 100_000_000), rng.randint(200_000, 100_000_000)
        rate = rng.uniform(0.005, 0.3)
        k2 = round(n2 * rate)
        k1 = round(n1 * rate + rng.uniform(0.5, 5) * math.sqrt(n1 * rate))
        result = two_proportions_greater(k1, n1, k2, n2)
        assert result.method == "z-test"
        chi2 = scipy_stats.chi2_contingency([[k1, n1 - k1], [k2, n2 - k2]], correction=True)
        assert result.p_value == pytest.approx(chi2.pvalue / 2, rel=1e-9, abs=1e-300)


def test_z_branch_stays_close_to_fisher() -> None:
    # The z branch only runs when every expected cell is >= EXACT_BELOW_EXPECTED_CELL (1000), so
    # the hypergeometric variance is >= ~250 and its skewness <= ~0.07. The first Edgeworth term
    # of a continuity-corrected normal tail is skew/6 * |z**2 - 1| * phi(z) <= skew * 0.07, i.e.
    # ~5e-3 at worst: that bounds the absolute difference from Fisher's exact p-value.
    assert EXACT_BELOW_EXPECTED_CELL == 1000
    rng = random.Random(14)
    for _ in range(100):
        n1, n2 = rng.randint(50_000, 2_000_000), rng.randint(50_000, 2_000_000)
        rate = rng.uniform(0.02, 0.5)
        k2 = round(n2 * rate)
        k1 = round(n1 * rate + rng.gauss(0, 2) * math.sqrt(n1 * rate))
        result = two_proportions_greater(k1, n1, k2, n2)
        assert result.method == "z-test"
        assert result.p_value == pytest.approx(_fisher_greater(k1, n1, k2, n2), abs=5e-3)


def test_method_switches_on_the_smallest_expected_cell() -> None:
    # 20 errors expected in each row: exact; 10,000 expected: normal approximation.
    assert two_proportions_greater(20, 100_000, 20, 100_000).method == "fisher-exact"
    assert two_proportions_greater(10_000, 100_000, 10_000, 100_000).method == "z-test"


@pytest.mark.parametrize(
    ("errors", "total"),
    [(3, 1000), (12, 5000), (2_000, 100_000), (5_000_000, 100_000_000)],
)
def test_identical_canary_and_baseline_is_not_significant(errors: int, total: int) -> None:
    assert two_proportions_greater(errors, total, errors, total).p_value > 0.4


def test_clear_regression_is_significant_even_at_1e8_requests() -> None:
    # The spec's example: 97.9 % vs 99.9 % success.
    assert two_proportions_greater(210, 10_000, 10, 10_000).p_value < 1e-12
    huge = two_proportions_greater(5_100_000, 100_000_000, 5_000_000, 100_000_000)
    assert huge.method == "z-test"
    assert 0 < huge.p_value < 1e-200


def test_two_proportions_edge_cases() -> None:
    assert math.isnan(two_proportions_greater(0, 0, 3, 100).p_value)
    assert math.isnan(two_proportions_greater(1, 10, 0, 0).p_value)
    # No errors anywhere: nothing can be worse.
    assert two_proportions_greater(0, 100, 0, 100).p_value == 1.0
    # Fractional counts (from increase()) are rounded.
    assert two_proportions_greater(4.6, 99.8, 0.2, 100.4) == two_proportions_greater(5, 100, 0, 100)
    with pytest.raises(ValueError):
        two_proportions_greater(-1, 100, 0, 100)


# --- binomial tail ---------------------------------------------------------------------------


def test_binomial_exact_branch_matches_scipy() -> None:
    # scipy's own binomial tail is good to ~1e-9 relative here (ours agreed with mpmath to
    # ~1e-15 when written), hence rel=1e-8.
    rng = random.Random(21)
    checked = 0
    for _ in range(400):
        n = int(10 ** rng.uniform(0, 8))
        p0 = 10 ** rng.uniform(-7, -0.01)
        if n * p0 * (1 - p0) >= EXACT_BELOW_BINOMIAL_VARIANCE:
            continue
        spread = math.sqrt(n * p0 * (1 - p0) + 1)
        k = min(n, max(0, round(n * p0 + rng.gauss(0, 3) * spread)))
        result = binomial_greater(k, n, p0)
        assert result.method == "binomial-exact"
        assert result.p_value == pytest.approx(_binomial_greater(k, n, p0), rel=1e-8, abs=1e-300)
        checked += 1
    assert checked > 100


def test_binomial_normal_branch_is_close_to_scipy_exact() -> None:
    # Normal branch only when n*p0*(1-p0) >= 1000: skewness (1-2p0)/sd <= 0.032, and the
    # first Edgeworth correction of the continuity-corrected tail, skew/6 * |z**2-1| * phi(z),
    # is then <= ~2.1e-3 in absolute terms.
    rng = random.Random(22)
    checked = 0
    for _ in range(200):
        n = int(10 ** rng.uniform(4, 8))
        p0 = 10 ** rng.uniform(-3, -0.01)
        variance = n * p0 * (1 - p0)
        if variance < EXACT_BELOW_BINOMIAL_VARIANCE:
            continue
        k = min(n, round(n * p0 + rng.gauss(0, 2) * math.sqrt(variance)))
        result = binomial_greater(k, n, p0)
        assert result.method == "binomial-normal"
        assert result.p_value == pytest.approx(_binomial_greater(k, n, p0), abs=2.5e-3)
        checked += 1
    assert checked > 50


@pytest.mark.parametrize(
    ("k", "n", "p0"),
    [(200, 1000, 0.01), (270, 1000, 0.01), (276, 1000, 0.01), (278, 1000, 0.01)],
)
def test_binomial_tiny_p_values_down_to_1e_minus_300(k: int, n: int, p0: float) -> None:
    expected = _binomial_greater(k, n, p0)
    assert expected > 0
    assert binomial_greater(k, n, p0).p_value == pytest.approx(expected, rel=1e-9)


def test_binomial_at_expectation_is_not_significant() -> None:
    assert binomial_greater(10, 1000, 0.01).p_value > 0.4
    assert binomial_greater(1_000_000, 100_000_000, 0.01).p_value > 0.4


def test_binomial_edge_cases() -> None:
    assert binomial_greater(0, 50, 0.1) == TestResult(p_value=1.0, method="binomial-exact")
    assert binomial_greater(51, 50, 0.1).p_value == 0.0
    assert binomial_greater(0, 50, 0.0).p_value == 1.0
    assert binomial_greater(1, 50, 0.0).p_value == 0.0
    assert binomial_greater(50, 50, 1.0).p_value == 1.0
    assert math.isnan(binomial_greater(0, 0, 0.1).p_value)
    assert binomial_greater(4.6, 100.2, 0.01) == binomial_greater(5, 100, 0.01)
    with pytest.raises(ValueError):
        binomial_greater(1, 10, 1.5)
    with pytest.raises(ValueError):
        binomial_greater(math.nan, 10, 0.5)


def test_p_values_stay_in_the_unit_interval_at_extreme_counts() -> None:
    for k in (0, 1, 10**6, 5 * 10**7, 10**8):
        for p0 in (1e-9, 1e-3, 0.5, 0.999999):
            p_value = binomial_greater(k, 10**8, p0).p_value
            assert 0.0 <= p_value <= 1.0
        for k2 in (0, 10**4, 10**8):
            p_value = two_proportions_greater(k, 10**8, k2, 10**8).p_value
            assert 0.0 <= p_value <= 1.0
