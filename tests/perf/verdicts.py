"""`make verdicts`: how often the judges are right, measured the way Argo asks.

Simulated rollouts drive the real analysis code. Each side's requests per interval are Poisson,
errors binomial and latencies log-normal, binned into the bucket layout of client_golang's
defaults; the counts are the whole numbers our queries return (the counter's value at the poll
minus at the previous poll). Argo's schedule: the canary starts at t=0, initialDelay 1 m, then
5 polls 1 m apart, failureLimit 0 (one fail aborts), inconclusiveLimit 1 (a second inconclusive
pauses). Fixed seeds: the same run prints the same table.

Compared: the live sequential judge (analysis.sequential), the calibrated one-look judge asked
at every poll over a 5 m window (analysis.judge), and the judge this project had before
(tests/perf/legacy_judge.py, kept frozen for this comparison), and an oracle that looks once, at
the last poll, with the single test that fits the regression (the information limit).

    python -m tests.perf.verdicts [--quick]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from analysis.histogram import tail_table
from analysis.judge import judge
from analysis.observation import Observation, SideCounts
from analysis.policy import Policy
from analysis.sequential import Poll, Sequence, add_counts, advance
from analysis.stats import two_proportions_greater
from tests.perf import legacy_judge

BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
POLL_TIMES = (60.0, 120.0, 180.0, 240.0, 300.0)  # initialDelay 1 m, then every 1 m
WINDOW = 300.0
POLICY = Policy()


@dataclass(frozen=True)
class Side:
    rate: float  # requests per second
    error_ratio: float = 0.0005
    median: float = 0.05
    sigma: float = 0.6
    slow_share: float = 0.0  # a share of requests taking `slow_factor` times as long
    slow_factor: float = 1.0

    def bucket_probabilities(self) -> np.ndarray:
        def cdf(x: float, median: float) -> float:
            return 0.5 * (1 + math.erf(math.log(x / median) / (self.sigma * math.sqrt(2))))

        cum = [
            (1 - self.slow_share) * cdf(le, self.median)
            + self.slow_share * cdf(le, self.median * self.slow_factor)
            for le in BOUNDS
        ]
        per = np.diff([0.0, *cum, 1.0])
        return np.clip(per, 0, None) / np.clip(per, 0, None).sum()


def counts(rng: np.random.Generator, side: Side, seconds: float) -> SideCounts:
    if seconds <= 0:
        return SideCounts()
    n = int(rng.poisson(side.rate * seconds))
    errors = int(rng.binomial(n, side.error_ratio))
    per_bucket = rng.multinomial(n, side.bucket_probabilities())
    cumulative = np.cumsum(per_bucket)
    buckets = (*zip(BOUNDS, (float(x) for x in cumulative[:-1]), strict=True), (math.inf, float(n)))
    return SideCounts({"200": float(n - errors), "500": float(errors)}, tuple(buckets))


@dataclass
class Outcome:
    aborted_at: int | None = None  # poll number (1-based) of the first fail
    paused: bool = False
    inconclusive: int = 0

    def see(self, verdict: str, poll: int) -> bool:
        """Argo's bookkeeping; True when the metric has ended (aborted or paused)."""
        if verdict == "fail":
            self.aborted_at = poll
            return True
        if verdict == "inconclusive":
            self.inconclusive += 1
            if self.inconclusive > 1:
                self.paused = True
                return True
        return False


Judge = Callable[[list[tuple[float, SideCounts, SideCounts]], int], str]


def rollout(
    rng: np.random.Generator, canary: Side, baseline: Side, canary_from: float = -240.0
) -> dict[str, Outcome]:
    """One rollout: every judge sees the same data. Returns each judge's Argo outcome.

    Data come in 60 s slices: the baseline's from t=-240 s, the canary's from `canary_from`
    (-240: it has served a whole window when the first poll comes; 0: a cold start, the first
    poll sees one minute of it).
    """
    slices = {}
    for start in range(-240, 300, 60):
        c = counts(rng, canary, 60.0) if start >= canary_from else SideCounts()
        slices[start] = (c, counts(rng, baseline, 60.0))

    def window(end: float, seconds: float) -> tuple[SideCounts, SideCounts]:
        c, b = SideCounts(), SideCounts()
        for start, (sc, sb) in slices.items():
            if end - seconds <= start < end:
                c, b = add_counts(c, sc), add_counts(b, sb)
        return c, b

    outcomes = {name: Outcome() for name in ("sequential", "fixed", "legacy")}
    sequence: Sequence | None = None
    previous = None
    for poll, end in enumerate(POLL_TIMES, start=1):
        seconds = WINDOW if previous is None else end - previous
        c, b = window(end, seconds)
        result = advance(sequence, Poll(end, seconds, c, b), POLICY)
        sequence = result.sequence
        previous = end
        verdicts = {"sequential": result.judgement.verdict}
        wc, wb = window(end, WINDOW)
        observation = Observation(end, WINDOW, wc, wb)
        verdicts["fixed"] = judge(observation, POLICY).verdict
        verdicts["legacy"] = legacy_judge.judge(observation, POLICY).verdict
        for name, verdict in verdicts.items():
            out = outcomes[name]
            if out.aborted_at is None and not out.paused:
                out.see(verdict, poll)
    # The oracle: one test, at the last poll, on all the data, at the sequential alpha.
    c, b = window(POLL_TIMES[-1], 600.0)
    outcomes["oracle"] = Outcome(aborted_at=5 if _oracle_rejects(canary, baseline, c, b) else None)
    return outcomes


def _oracle_rejects(canary: Side, baseline: Side, c: SideCounts, b: SideCounts) -> bool:
    alpha = POLICY.thresholds.sequential_alpha
    conv = POLICY.conventions
    if canary.error_ratio != baseline.error_ratio:
        p = two_proportions_greater(c.errors(conv), c.total, b.errors(conv), b.total).p_value
        return p < alpha
    q = 0.5 if canary.median != baseline.median else 0.99
    table = tail_table(q, c.latency_buckets, b.latency_buckets)
    if table is None:
        return False
    p = two_proportions_greater(
        table.canary_above, table.canary_total, table.baseline_above, table.baseline_total
    ).p_value
    return p < alpha


def _rate(hits: int, trials: int) -> str:
    return f"{hits}/{trials} ({100 * hits / trials:.1f}%)"


def aa_rows(trials: int) -> list[str]:
    rows = [
        "| split (canary/baseline) | rollouts | sequential: aborted / paused | fixed 5 m look "
        "per poll: aborted / paused | previous judge: aborted / paused |",
        "|---|---|---|---|---|",
    ]
    for label, share in (("equal", 0.5), ("10/90", 0.1), ("5/95", 0.05)):
        rng = np.random.default_rng(1000 + int(share * 100))
        tallies = {name: [0, 0] for name in ("sequential", "fixed", "legacy")}
        for _ in range(trials):
            volume = float(np.exp(rng.uniform(math.log(2), math.log(200))))
            # A healthy service meets its SLO (0.1 % errors allowed): 0.1 % is the worst case.
            ratio = float(rng.choice([0.0, 0.0002, 0.0005, 0.001]))
            median = float(rng.choice([0.02, 0.05, 0.2]))
            c = Side(volume * share, ratio, median)
            b = Side(volume * (1 - share), ratio, median)
            for name, out in rollout(rng, c, b).items():
                if name in tallies:
                    tallies[name][0] += out.aborted_at is not None
                    tallies[name][1] += out.paused
        rows.append(
            f"| {label} | {trials} | "
            + " | ".join(f"{_rate(a, trials)} / {_rate(p, trials)}" for a, p in tallies.values())
            + " |"
        )
    return rows


POWER_CASES = (
    ("errors 6x (0.05% → 0.3%)", dict(error_ratio=0.003), 20.0, 0.5, None),
    ("errors 10x, caught at the first poll", dict(error_ratio=0.005), 20.0, 0.5, 1),
    ("median latency +40%", dict(median=0.07), 20.0, 0.5, None),
    ("2% of requests 5x slower (p99 x1.4, same median)", dict(slow_share=0.02, slow_factor=5.0),
     20.0, 0.5, None),
    ("errors 3x at 200 req/s per side", dict(error_ratio=0.0015), 200.0, 0.5, None),
    ("errors 3x at 20 req/s per side", dict(error_ratio=0.0015), 20.0, 0.5, None),
)  # fmt: skip


def power_rows(trials: int, canary_from: float = -240.0) -> list[str]:
    rows = [
        "| regression | split | rollouts | sequential | fixed 5 m look per poll | "
        "previous judge | oracle (one test, last poll) |",
        "|---|---|---|---|---|---|---|",
    ]
    for index, (label, change, per_side, _, by_poll) in enumerate(POWER_CASES):
        for split, share in (("equal", 0.5), ("10/90", 0.1)):
            rng = np.random.default_rng(2000 + 10 * index + int(share * 10))
            total = 2 * per_side
            b = Side(total * (1 - share))
            c = Side(total * share, **change)
            hits = {name: 0 for name in ("sequential", "fixed", "legacy", "oracle")}
            for _ in range(trials):
                for name, out in rollout(rng, c, b, canary_from).items():
                    limit = by_poll or 5
                    hits[name] += out.aborted_at is not None and out.aborted_at <= limit
            rows.append(
                f"| {label} | {split} | {trials} | "
                + " | ".join(_rate(hits[n], trials) for n in ("sequential", "fixed", "legacy"))
                + f" | {_rate(hits['oracle'], trials) if by_poll is None else 'n/a'} |"
            )
    return rows


def per_check_rows(trials: int) -> list[str]:
    """One look, identical sides at the SLO's boundary (the worst case of its null)."""
    sizes = (100, 300, 1_000, 10_000, 100_000)
    names = [
        "success_rate.slo",
        "success_rate.regression",
        "error_budget.fast_burn",
        "latency.p50.regression",
        "latency.p90.regression",
        "latency.p95.regression",
        "latency.p99.regression",
        "latency.distribution",
        "any (verdict fail)",
    ]
    from analysis.judge import alpha_each

    rows = [
        f"| check (α each {alpha_each(POLICY):.4f}, family {POLICY.thresholds.alpha}) | "
        + " | ".join(f"n={n:,}" for n in sizes)
        + " |",
        "|---|" + "---|" * len(sizes),
    ]
    fails = {name: [0] * len(sizes) for name in names}
    for i, n in enumerate(sizes):
        rng = np.random.default_rng(3000 + i)
        allowed = 1 - POLICY.thresholds.slo
        side = Side(n / WINDOW, allowed, 0.05)
        for _ in range(trials):
            c, b = counts(rng, side, WINDOW), counts(rng, side, WINDOW)
            result = judge(Observation(WINDOW, WINDOW, c, b), POLICY)
            for check in result.checks:
                if check.verdict == "fail" and check.name in fails:
                    fails[check.name][i] += 1
            fails["any (verdict fail)"][i] += result.verdict == "fail"
    for name in names:
        rows.append(
            f"| {name} | " + " | ".join(f"{100 * k / trials:.2f}%" for k in fails[name]) + " |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the trials")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    started = time.monotonic()
    print("## A/A: canary identical to its baseline (false aborts must stay ≤ 1 %)\n")
    print("\n".join(aa_rows(400 // scale)), "\n")
    print("## Power: rollouts aborted within 5 polls (the 10x row: at the first poll)\n")
    print("\n".join(power_rows(200 // scale)), "\n")
    print("## Power on a cold start: the canary's pods start with the analysis (1 m of data at")
    print("## the first poll, as right after a setWeight step)\n")
    print("\n".join(power_rows(200 // scale, canary_from=0.0)), "\n")
    print("## One look, per check: false-fail rate on identical sides at the SLO boundary\n")
    print("\n".join(per_check_rows(2000 // scale)), "\n")
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
