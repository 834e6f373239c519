"""Histogram quantiles (Prometheus 2.42 rules), tail shares and the bucketed Mann-Whitney test."""

from __future__ import annotations

import math
import random

import pytest
from scipy import stats as scipy_stats

from analysis.histogram import (
    MannWhitney,
    bucket_counts,
    count_above,
    histogram_quantile,
    mann_whitney_greater,
    quantiles,
    share_above,
)

INF = math.inf
# 10 observations <= 0.1 s, 20 in (0.1, 0.5], 10 in (0.5, 1], 10 above 1 s.
BASIC = [(0.1, 10.0), (0.5, 30.0), (1.0, 40.0), (INF, 50.0)]


# --- histogram_quantile ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (0.1, 0.05),  # rank 5 in the first bucket: 0 + 0.1 * 5/10
        (0.5, 0.4),  # rank 25: 0.1 + 0.4 * (25-10)/20
        (0.8, 1.0),  # rank 40 exactly reaches le=1: its upper bound, not the next bucket
        (0.9, 1.0),  # rank 45 in +Inf: the highest finite bound
        (0.0, 0.0),  # rank 0: first bucket, interpolated from its lower bound 0
        (1.0, 1.0),  # rank 50 in +Inf
    ],
)
def test_quantile_interpolates_inside_the_bucket(q: float, expected: float) -> None:
    assert histogram_quantile(q, BASIC) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_quantile_matches_the_float_prometheus_printed() -> None:
    # promtool 2.42 (`promtool test rules`) printed 8.000000000000002E-02 for this series set;
    # the le=1 count (5) is below le=0.1's (10) and is raised to 10 by the monotonic fix.
    assert histogram_quantile(0.4, [(0.1, 10.0), (1.0, 5.0), (INF, 20.0)]) == 0.08000000000000002


def test_quantile_ignores_input_order() -> None:
    shuffled = [BASIC[2], BASIC[0], BASIC[3], BASIC[1]]
    assert histogram_quantile(0.5, shuffled) == histogram_quantile(0.5, BASIC)


def test_duplicate_bounds_are_summed() -> None:
    duplicated = [(0.1, 4.0), (0.5, 30.0), (INF, 25.0), (0.1, 6.0), (1.0, 40.0), (INF, 25.0)]
    assert histogram_quantile(0.5, duplicated) == histogram_quantile(0.5, BASIC)
    assert histogram_quantile(0.1, duplicated) == pytest.approx(0.05)


def test_non_monotonic_counts_are_raised_to_the_running_maximum() -> None:
    # le=1 says 5 < 10: Prometheus treats it as 10, so (0.1, 1] is empty and rank 12 of 20 is
    # already in +Inf.
    broken = [(0.1, 10.0), (1.0, 5.0), (INF, 20.0)]
    assert histogram_quantile(0.6, broken) == 1.0
    assert bucket_counts(broken) == [(0.1, 10.0), (1.0, 0.0), (INF, 10.0)]


def test_q_outside_unit_interval_and_nan() -> None:
    assert histogram_quantile(-0.01, BASIC) == -INF
    assert histogram_quantile(1.01, BASIC) == INF
    assert math.isnan(histogram_quantile(math.nan, BASIC))
    # The q checks come first, as in Prometheus, even for unusable buckets.
    assert histogram_quantile(-1, []) == -INF
    assert histogram_quantile(2, [(1.0, 3.0)]) == INF


def test_q_one_without_observations_in_inf_bucket_is_the_last_filled_bound() -> None:
    assert histogram_quantile(1.0, [(0.1, 0.0), (1.0, 5.0), (INF, 5.0)]) == 1.0


def test_q_zero_with_empty_first_bucket_is_nan_like_prometheus() -> None:
    # Prometheus computes 0.1 * (0/0); promtool 2.42 prints NaN.
    assert math.isnan(histogram_quantile(0.0, [(0.1, 0.0), (1.0, 5.0), (INF, 5.0)]))


def test_first_bucket_with_non_positive_bound_returns_that_bound() -> None:
    negative = [(-1.0, 2.0), (1.0, 6.0), (INF, 6.0)]
    assert histogram_quantile(0.2, negative) == -1.0  # promtool 2.42: -1
    assert histogram_quantile(0.5, negative) == -0.5  # promtool 2.42: -0.5 (-1 + 2 * 1/4)
    assert histogram_quantile(0.25, [(0.0, 4.0), (1.0, 8.0), (INF, 8.0)]) == 0.0


@pytest.mark.parametrize(
    "buckets",
    [
        pytest.param([(0.1, 10.0), (1.0, 20.0)], id="missing +Inf"),
        pytest.param([(INF, 10.0)], id="single bucket"),
        pytest.param([(INF, 4.0), (INF, 6.0)], id="duplicates coalesce to one bucket"),
        pytest.param([(0.1, 0.0), (1.0, 0.0), (INF, 0.0)], id="zero observations"),
        pytest.param([], id="no buckets"),
    ],
)
def test_unusable_histograms_give_nan(buckets: list[tuple[float, float]]) -> None:
    assert math.isnan(histogram_quantile(0.5, buckets))


def test_non_integer_counts_from_increase() -> None:
    # rank 5 of 10 lies in (0.1, 1] which holds 5 of its 7.5 - 2.5: 0.1 + 0.9 * 2.5/5
    assert histogram_quantile(0.5, [(0.1, 2.5), (1.0, 7.5), (INF, 10.0)]) == pytest.approx(0.55)


def test_quantiles_returns_each_requested_quantile() -> None:
    result = quantiles([0.5, 0.9, 0.99], BASIC)
    assert result == {0.5: pytest.approx(0.4), 0.9: 1.0, 0.99: 1.0}


# --- share_above / count_above ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        (0.05, 0.9),  # 5 of the first bucket's 10 are at or below 0.05
        (0.4, 0.5),  # 10 + 20 * 0.3/0.4 = 25 at or below
        (1.0, 0.2),  # only the +Inf bucket is above the highest finite bound
        (5.0, 0.2),  # ... and above anything beyond it
        (0.0, 1.0),
        (-3.0, 1.0),
        (-INF, 1.0),
        (INF, 0.0),  # nothing is above +Inf
    ],
)
def test_share_above_reads_the_interpolated_tail(threshold: float, expected: float) -> None:
    assert share_above(threshold, BASIC) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_share_above_inverts_histogram_quantile_inside_finite_buckets() -> None:
    for step in range(1, 80):
        q = step / 100
        assert share_above(histogram_quantile(q, BASIC), BASIC) == pytest.approx(1 - q, rel=1e-12)


def test_share_above_with_a_negative_first_bound() -> None:
    negative = [(-1.0, 2.0), (1.0, 6.0), (INF, 6.0)]
    assert share_above(-1.5, negative) == 1.0  # the 2 observations sit at -1
    assert share_above(-1.0, negative) == pytest.approx(4 / 6)
    assert share_above(0.0, negative) == pytest.approx(2 / 6)  # half of (-1, 1] is above 0


def test_share_above_uses_the_same_normalisation() -> None:
    messy = [(INF, 50.0), (0.5, 30.0), (0.1, 10.0), (1.0, 25.0), (1.0, 15.0)]
    assert share_above(0.4, messy) == pytest.approx(0.5)
    assert count_above(0.4, messy) == pytest.approx(25.0)


@pytest.mark.parametrize(
    "buckets",
    [
        pytest.param([(0.1, 0.0), (INF, 0.0)], id="no observations"),
        pytest.param([(0.1, 3.0), (1.0, 5.0)], id="missing +Inf"),
        pytest.param([(INF, 5.0)], id="single bucket"),
    ],
)
def test_share_above_is_nan_without_a_usable_histogram(buckets: list[tuple[float, float]]) -> None:
    assert math.isnan(share_above(0.5, buckets))
    assert math.isnan(count_above(0.5, buckets))


def test_share_above_nan_threshold() -> None:
    assert math.isnan(share_above(math.nan, BASIC))


# --- bucket_counts ---------------------------------------------------------------------------


def test_bucket_counts_are_per_bucket_after_normalisation() -> None:
    messy = [(INF, 50.0), (0.5, 30.0), (0.1, 4.0), (0.1, 6.0), (1.0, 40.0)]
    assert bucket_counts(messy) == [(0.1, 10.0), (0.5, 20.0), (1.0, 10.0), (INF, 10.0)]
    assert bucket_counts([]) == []


# --- Mann-Whitney U ---------------------------------------------------------------------------


def _cumulative(bounds: list[float], per_bucket: list[int]) -> list[tuple[float, float]]:
    running = 0
    result = []
    for bound, count in zip(bounds, per_bucket, strict=True):
        running += count
        result.append((bound, float(running)))
    return result


def _expanded(per_bucket: list[int]) -> list[int]:
    """Each observation becomes its bucket index: what the closed form must agree with."""
    return [index for index, count in enumerate(per_bucket) for _ in range(count)]


def _scipy_greater(x: list[int], y: list[int]) -> tuple[float, float]:
    result = scipy_stats.mannwhitneyu(
        x, y, alternative="greater", method="asymptotic", use_continuity=True
    )
    return float(result.statistic), float(result.pvalue)


def test_mann_whitney_matches_scipy_on_random_histograms() -> None:
    rng = random.Random(20240607)
    p_values = []
    for _ in range(60):
        finite = sorted(rng.sample([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], 6))
        bounds = [*finite, INF]
        shift = rng.choice([0, 0, 1, 2])  # canary often slower by a bucket or two
        baseline_counts = [rng.choice([0, rng.randint(1, 60)]) for _ in bounds]
        canary_counts = [0] * len(bounds)
        for index, count in enumerate([rng.randint(0, 60) for _ in bounds]):
            canary_counts[min(len(bounds) - 1, index + shift)] += count
        if sum(baseline_counts) == 0 or sum(canary_counts) == 0:
            continue
        ours = mann_whitney_greater(
            _cumulative(bounds, canary_counts), _cumulative(bounds, baseline_counts)
        )
        u, p_value = _scipy_greater(_expanded(canary_counts), _expanded(baseline_counts))
        assert ours.u == pytest.approx(u, rel=1e-12)
        assert ours.p_value == pytest.approx(p_value, rel=1e-9, abs=1e-300)
        p_values.append(p_value)
    # The seeded cases cover clear regressions, clear non-regressions and the middle.
    assert len(p_values) > 50
    assert min(p_values) < 1e-6 and max(p_values) > 0.9
    assert any(0.01 < p < 0.9 for p in p_values)


def test_mann_whitney_puts_both_sides_on_the_union_of_bounds() -> None:
    # The canary lacks le=0.5 but has nothing in (0.1, 1]: its count at 0.5 is exactly 7, so the
    # test must equal scipy on the four union buckets.
    canary = [(0.1, 7.0), (1.0, 7.0), (INF, 12.0)]
    baseline = [(0.1, 9.0), (0.5, 14.0), (1.0, 20.0), (INF, 22.0)]
    ours = mann_whitney_greater(canary, baseline)
    u, p_value = _scipy_greater(_expanded([7, 0, 0, 5]), _expanded([9, 5, 6, 2]))
    assert ours.u == pytest.approx(u)
    assert ours.p_value == pytest.approx(p_value, rel=1e-9)


def test_missing_bound_is_read_off_the_interpolation_model() -> None:
    # 8 canary observations in (0.1, 1]: at le=0.5 the model puts 8 * 0.4/0.9 of them below.
    canary = [(0.1, 2.0), (1.0, 10.0), (INF, 12.0)]
    explicit = [(0.1, 2.0), (0.5, 2.0 + 8 * 0.4 / 0.9), (1.0, 10.0), (INF, 12.0)]
    baseline = [(0.1, 9.0), (0.5, 14.0), (1.0, 20.0), (INF, 22.0)]
    implicit_result = mann_whitney_greater(canary, baseline)
    explicit_result = mann_whitney_greater(explicit, baseline)
    assert implicit_result.u == pytest.approx(explicit_result.u, rel=1e-12)
    assert implicit_result.p_value == pytest.approx(explicit_result.p_value, rel=1e-12)


def test_mann_whitney_closed_form_with_non_integer_counts() -> None:
    # per bucket: canary [1.5, 0.5], baseline [2.0, 1.0] on bounds (0.1, +Inf)
    result = mann_whitney_greater([(0.1, 1.5), (INF, 2.0)], [(0.1, 2.0), (INF, 3.0)])
    u = 1.5 * (0 + 2.0 / 2) + 0.5 * (2.0 + 1.0 / 2)
    n1, n2, n = 2.0, 3.0, 5.0
    ties = (3.5**3 - 3.5) + (1.5**3 - 1.5)
    sigma = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    z = (u - n1 * n2 / 2 - 0.5) / sigma
    assert result.u == pytest.approx(u)
    assert result.z == pytest.approx(z)
    assert result.p_value == pytest.approx(1 - scipy_stats.norm.cdf(z))


def test_identical_canary_and_baseline_give_p_near_one_half() -> None:
    latency = [(0.05, 4000.0), (0.1, 9000.0), (0.25, 9800.0), (1.0, 9990.0), (INF, 10000.0)]
    result = mann_whitney_greater(latency, latency)
    # U equals its mean; only the continuity correction moves p a hair above 1/2.
    assert result.u == pytest.approx(10000.0 * 10000.0 / 2)
    assert 0.5 < result.p_value < 0.501


def test_slower_canary_is_significant_and_faster_is_not() -> None:
    baseline = [(0.05, 400.0), (0.1, 900.0), (0.25, 980.0), (INF, 1000.0)]
    slower = [(0.05, 200.0), (0.1, 600.0), (0.25, 950.0), (INF, 1000.0)]
    assert mann_whitney_greater(slower, baseline).p_value < 1e-6
    assert mann_whitney_greater(baseline, slower).p_value > 0.999


@pytest.mark.parametrize(
    ("canary", "baseline"),
    [
        pytest.param([(0.1, 0.0), (INF, 0.0)], [(0.1, 5.0), (INF, 9.0)], id="empty canary"),
        pytest.param([(0.1, 5.0), (INF, 9.0)], [], id="no baseline buckets"),
        pytest.param([(0.1, 5.0), (INF, 5.0)], [(0.1, 7.0), (INF, 7.0)], id="all tied"),
        pytest.param([(0.1, 0.4), (INF, 0.4)], [(0.1, 0.3), (INF, 0.3)], id="under one obs"),
    ],
)
def test_degenerate_inputs_carry_no_evidence(
    canary: list[tuple[float, float]], baseline: list[tuple[float, float]]
) -> None:
    result = mann_whitney_greater(canary, baseline)
    assert result.p_value == 1.0
    assert result.z == 0.0


def test_all_tied_agrees_with_scipy() -> None:
    _, p_value = _scipy_greater([0] * 5, [0] * 7)
    assert p_value == 1.0
    assert mann_whitney_greater([(0.1, 5.0), (INF, 5.0)], [(0.1, 7.0), (INF, 7.0)]).p_value == 1.0


def test_mann_whitney_result_is_frozen() -> None:
    result = MannWhitney(u=1.0, z=0.0, p_value=0.5)
    with pytest.raises(AttributeError):
        result.u = 2.0  # type: ignore[misc]
