"""Quantiles, tail shares and a rank test on Prometheus classic histograms.

A histogram is a sequence of ``(le, cumulative_count)`` pairs: the upper bound of each bucket and
the number of observations at or below it, as returned by ``increase(x_bucket[w])`` by ``le``.
Pairs may come in any order, ``le`` may repeat (series that differ only in dropped labels) and
counts may be non-integer (``increase()`` extrapolates to the window edges).

Every function first normalises the buckets the way Prometheus 2.42's ``bucketQuantile``
(promql/quantile.go) does: sort by ``le``, sum the counts of equal ``le``, then raise any count
that is lower than an earlier one to the running maximum.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

Bucket = tuple[float, float]
"""``(upper_bound_le, cumulative_count)``."""


def _normalised(buckets: Sequence[Bucket]) -> tuple[tuple[float, float], ...]:
    """Sorted, equal bounds coalesced, counts made monotonic: Prometheus 2.42's pre-processing."""
    # One judgement asks it of the same two histograms ~20 times: computed once per histogram.
    key = buckets if isinstance(buckets, tuple) else tuple(buckets)
    try:
        return _normalised_once(key)
    except TypeError:  # unhashable pairs (lists): computed without the cache
        return _normalised_once.__wrapped__(key)


@lru_cache(maxsize=256)
def _normalised_once(buckets: tuple[Bucket, ...]) -> tuple[tuple[float, float], ...]:
    ordered = sorted(((float(le), float(count)) for le, count in buckets), key=lambda b: b[0])
    if not ordered:
        return ()
    # coalesceBuckets: a running sum in sorted order. Go's sort is not stable, so with repeated
    # non-integer counts the last bit may depend on Prometheus' internal order; integers are exact.
    merged: list[list[float]] = [[ordered[0][0], ordered[0][1]]]
    for le, count in ordered[1:]:
        if le == merged[-1][0]:
            merged[-1][1] += count
        else:
            merged.append([le, count])
    # ensureMonotonic (2.42): start from the first count; a lower count is raised to the max.
    # Written with the same two comparisons as Go so NaN counts behave identically.
    running_max = merged[0][1]
    for entry in merged[1:]:
        if entry[1] > running_max:
            running_max = entry[1]
        elif entry[1] < running_max:
            entry[1] = running_max
    return tuple((le, count) for le, count in merged)


def _go_sort_search(n: int, reached: Callable[[int], bool]) -> int:
    """Go's sort.Search: the smallest index in [0, n) where ``reached`` holds, else n.

    Mirrored as a binary search (not a scan) so odd inputs, e.g. NaN counts, pick the same bucket.
    """
    low, high = 0, n
    while low < high:
        middle = (low + high) // 2
        if reached(middle):
            high = middle
        else:
            low = middle + 1
    return low


def _go_divide(numerator: float, denominator: float) -> float:
    """IEEE-754 division as Go does it: x/0 is +-Inf or NaN instead of an exception.

    Reached e.g. by q=0 with an empty first bucket, where Prometheus answers NaN (0/0).
    """
    if denominator != 0:
        return numerator / denominator
    if numerator == 0 or math.isnan(numerator):
        return math.nan
    return math.copysign(math.inf, numerator) * math.copysign(1.0, denominator)


def _clamp_unit(value: float) -> float:
    """Clamp into [0, 1] but keep NaN (max/min would silently turn NaN into a bound)."""
    if math.isnan(value):
        return value
    return min(1.0, max(0.0, value))


def histogram_quantile(q: float, buckets: Sequence[Bucket]) -> float:
    """The q-quantile exactly as Prometheus 2.42's ``histogram_quantile`` computes it.

    NaN q -> NaN; q < 0 -> -Inf; q > 1 -> +Inf; highest bucket not +Inf -> NaN; fewer than two
    buckets after coalescing -> NaN; no observations -> NaN. A rank in the +Inf bucket returns the
    highest finite bound; a rank in a first bucket whose bound is <= 0 returns that bound;
    otherwise linear interpolation inside the bucket, from 0 for the first bucket.
    """
    if math.isnan(q):
        return math.nan
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    normal = _normalised(buckets)
    # Prometheus checks for +Inf before coalescing; equal bounds cannot change the maximum.
    if not normal or normal[-1][0] != math.inf:
        return math.nan
    if len(normal) < 2:
        return math.nan
    observations = normal[-1][1]
    if observations == 0:
        return math.nan
    rank = q * observations
    found = _go_sort_search(len(normal) - 1, lambda index: normal[index][1] >= rank)
    if found == len(normal) - 1:
        return normal[-2][0]
    if found == 0 and normal[0][0] <= 0:
        return normal[0][0]
    bucket_start = 0.0
    bucket_end, count = normal[found]
    if found > 0:
        bucket_start = normal[found - 1][0]
        count -= normal[found - 1][1]
        rank -= normal[found - 1][1]
    return bucket_start + (bucket_end - bucket_start) * _go_divide(rank, count)


def quantiles(qs: Sequence[float], buckets: Sequence[Bucket]) -> dict[float, float]:
    """``{q: histogram_quantile(q, buckets)}`` for every requested q."""
    return {q: histogram_quantile(q, buckets) for q in qs}


def bucket_counts(buckets: Sequence[Bucket]) -> list[tuple[float, float]]:
    """Per-bucket (non-cumulative) ``(le, count)`` after sorting, coalescing and the monotonic fix.

    The first bucket keeps its cumulative count; each later one holds the increase over the
    previous bound. No +Inf bucket is required here.
    """
    normal = _normalised(buckets)
    per_bucket: list[tuple[float, float]] = []
    previous = 0.0
    for le, cumulative in normal:
        per_bucket.append((le, cumulative - previous))
        previous = cumulative
    return per_bucket


def _count_at_or_below(
    threshold: float,
    normal: Sequence[tuple[float, float]],
    bounds: Sequence[float] | None = None,
) -> float:
    """Cumulative count at ``threshold`` under histogram_quantile's model of the distribution.

    That model spreads each finite bucket's observations evenly between its bounds (from 0 for a
    first bucket with a positive bound), puts a first bucket with a bound <= 0 entirely at that
    bound, and puts the +Inf bucket's observations above every finite value (histogram_quantile
    never returns more than the highest finite bound, so they can only be "beyond" it).
    """
    if bounds is None:  # `normal`'s bounds, given by a caller that reads it at many thresholds
        bounds = [le for le, _ in normal]
    index = bisect_left(bounds, threshold)
    if index == len(normal):
        return normal[-1][1]
    upper, cumulative = normal[index]
    if upper == threshold:
        return cumulative
    if index == 0:
        if upper <= 0 or threshold <= 0:
            return 0.0
        return cumulative * (threshold / upper)
    lower, below = normal[index - 1]
    if upper == math.inf:
        return below
    return below + (cumulative - below) * ((threshold - lower) / (upper - lower))


def _usable(normal: Sequence[tuple[float, float]]) -> bool:
    return len(normal) >= 2 and normal[-1][0] == math.inf and normal[-1][1] > 0


def count_above(threshold: float, buckets: Sequence[Bucket]) -> float:
    """Number of observations above ``threshold`` (same model and NaN rules as share_above)."""
    normal = _normalised(buckets)
    if math.isnan(threshold) or not _usable(normal):
        return math.nan
    above = normal[-1][1] - _count_at_or_below(threshold, normal)
    return above if math.isnan(above) else max(0.0, above)


def share_above(threshold: float, buckets: Sequence[Bucket]) -> float:
    """Fraction of observations above ``threshold``, the inverse of histogram_quantile.

    Uses histogram_quantile's linear-interpolation model, so for q whose rank falls inside a
    finite bucket ``share_above(histogram_quantile(q, b), b) == 1 - q`` (up to rounding).
    Observations in the +Inf bucket count as above every finite threshold at or beyond the
    highest finite bound; nothing is above a threshold of +Inf. NaN when there are no
    observations, when the highest bucket is not +Inf (the total is unknown), with fewer than
    two buckets (as histogram_quantile), or for a NaN threshold.
    """
    normal = _normalised(buckets)
    if math.isnan(threshold) or not _usable(normal):
        return math.nan
    total = normal[-1][1]
    above = total - _count_at_or_below(threshold, normal)
    return _clamp_unit(above / total)


@dataclass(frozen=True)
class MannWhitney:
    """Mann-Whitney U of canary vs baseline: ``u`` is the canary's U statistic (scipy's U1)."""

    u: float
    z: float
    p_value: float


def _per_bucket_on(bounds: Sequence[float], normal: Sequence[tuple[float, float]]) -> list[float]:
    """Per-bucket counts of one side re-expressed on a common set of bounds."""
    counts: list[float] = []
    previous = 0.0
    own = [le for le, _ in normal]
    for bound in bounds:
        cumulative = _count_at_or_below(bound, normal, own) if normal else 0.0
        counts.append(cumulative - previous)
        previous = cumulative
    return counts


def mann_whitney_greater(canary: Sequence[Bucket], baseline: Sequence[Bucket]) -> MannWhitney:
    """One-sided Mann-Whitney U test, H1: canary values are stochastically greater (slower).

    Observations in the same bucket are ties. Both sides are put on the union of their bounds;
    where one side lacks a bound, its cumulative count there is read off the same interpolation
    model as share_above. The statistic, tie-corrected variance and normal approximation with
    continuity correction equal ``scipy.stats.mannwhitneyu(x, y, alternative='greater',
    method='asymptotic', use_continuity=True)`` on the expanded samples (each observation = its
    bucket index). Works in closed form over buckets, so non-integer counts need no expansion.

    Degenerate inputs (a side without observations, or every observation tied) carry no evidence
    of a regression: they return ``p_value=1.0`` and ``z=0.0``.
    """
    canary_normal = _normalised(canary)
    baseline_normal = _normalised(baseline)
    bounds = sorted({le for le, _ in canary_normal} | {le for le, _ in baseline_normal})
    canary_counts = _per_bucket_on(bounds, canary_normal)
    baseline_counts = _per_bucket_on(bounds, baseline_normal)
    n_canary = math.fsum(canary_counts)
    n_baseline = math.fsum(baseline_counts)

    # U1 = sum over canary observations of (#baseline below + half the baseline ties).
    u_canary = 0.0
    baseline_below = 0.0
    tie_term = 0.0
    for canary_count, baseline_count in zip(canary_counts, baseline_counts, strict=True):
        u_canary += canary_count * (baseline_below + baseline_count / 2)
        baseline_below += baseline_count
        tied = canary_count + baseline_count
        tie_term += tied**3 - tied
    if not n_canary > 0 or not n_baseline > 0:
        return MannWhitney(u=u_canary, z=0.0, p_value=1.0)

    n_total = n_canary + n_baseline
    if not n_total > 1:
        # Fractional counts can sum to one observation or less: no ranking to speak of.
        return MannWhitney(u=u_canary, z=0.0, p_value=1.0)
    mean = n_canary * n_baseline / 2
    variance = n_canary * n_baseline / 12 * ((n_total + 1) - tie_term / (n_total * (n_total - 1)))
    if not variance > 0 or not math.isfinite(variance):
        return MannWhitney(u=u_canary, z=0.0, p_value=1.0)
    z = (u_canary - mean - 0.5) / math.sqrt(variance)
    p_value = 0.5 * math.erfc(z / math.sqrt(2))
    return MannWhitney(u=u_canary, z=z, p_value=_clamp_unit(p_value))


@dataclass(frozen=True)
class TailTable:
    """Both sides' counts above one common bucket bound: the 2x2 table of a two-sample tail test.

    The bound is a bucket boundary both histograms share, so every count is a whole bucket sum (no
    interpolation). It is chosen from the *pooled* histogram, which treats the two sides alike:
    when the canary is no different from the baseline, which requests are the canary's is then
    still a fair draw from the pool, and the tests on this table keep their level.
    """

    bound: float
    canary_above: float
    canary_total: float
    baseline_above: float
    baseline_total: float


def tail_table(q: float, canary: Sequence[Bucket], baseline: Sequence[Bucket]) -> TailTable | None:
    """The table at the shared bound whose pooled share above is nearest ``1 - q``.

    None when either side has no usable histogram (no +Inf bucket, no observations, NaN counts)
    or the two share no finite bound.
    """
    return tail_tables((q,), canary, baseline)[q]


def tail_tables(
    quantiles: Sequence[float], canary: Sequence[Bucket], baseline: Sequence[Bucket]
) -> dict[float, TailTable | None]:
    """`tail_table` for each quantile, the two histograms read once for all of them."""
    c_normal, b_normal = _normalised(canary), _normalised(baseline)
    if not (_usable(c_normal) and _usable(b_normal)):
        return dict.fromkeys(quantiles)
    if any(math.isnan(n) for _, n in (*c_normal, *b_normal)):
        return dict.fromkeys(quantiles)
    c_cum, b_cum = dict(c_normal), dict(b_normal)
    bounds = sorted(le for le in c_cum.keys() & b_cum.keys() if math.isfinite(le))
    if not bounds:
        return dict.fromkeys(quantiles)
    c_total, b_total = c_normal[-1][1], b_normal[-1][1]
    pooled_total = c_total + b_total
    pooled_above = {le: pooled_total - c_cum[le] - b_cum[le] for le in bounds}
    tables: dict[float, TailTable | None] = {}
    for q in quantiles:
        target = (1 - q) * pooled_total
        # Nearest in the pooled share; ties go to the higher bound (the tail proper).
        best = min(bounds, key=lambda le: (abs(pooled_above[le] - target), -le))
        tables[q] = TailTable(best, c_total - c_cum[best], c_total, b_total - b_cum[best], b_total)
    return tables


def beyond_top_bound(q: float, buckets: Sequence[Bucket]) -> bool:
    """True when the q-quantile's rank falls in the +Inf bucket (histogram_quantile then clamps
    to the highest finite bound and can no longer tell a slow tail from a very slow one)."""
    normal = _normalised(buckets)
    if not _usable(normal):
        return False
    return normal[-2][1] < q * normal[-1][1]


def count_above_bound(threshold: float, buckets: Sequence[Bucket]) -> float:
    """Observations above the smallest bucket bound at or above ``threshold``: whole buckets only,
    so never more than are truly above ``threshold`` (a test on it errs on the side of passing)."""
    normal = _normalised(buckets)
    if math.isnan(threshold) or not _usable(normal):
        return math.nan
    for le, cumulative in normal:
        if le >= threshold:
            return max(0.0, normal[-1][1] - cumulative)
    return 0.0
