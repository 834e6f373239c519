"""The benchmark's Prometheus data: many services, canary and baseline each, one hour at 15 s.

Every service is the standard "good" pair (request counters by status code, a 12-bucket latency
histogram per side), with its own name and slightly different traffic, so each analysis reads
series of its own and none is served from another's cache.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from tests.support.procs import PrometheusServer, start_with_scenarios
from tests.support.scenarios import BASELINE_HASH, CANARY_HASH, STEP_SECONDS, Scenario, Side

SERVICES = 50
NAMESPACE = "bench"
# Data from 50 min ago to 10 min ahead: "latest window" queries see a full window all run long.
PAST_SECONDS = 50 * 60
AHEAD_SECONDS = 10 * 60


def bench_scenarios(count: int = SERVICES) -> list[Scenario]:
    scenarios = []
    for i in range(count):
        rps = 20.0 + 3.0 * (i % 10)
        baseline = Side(BASELINE_HASH, rps=rps, error_ratio=0.001, median_s=0.08, sigma=0.6)
        canary = Side(CANARY_HASH, rps=rps / 3, error_ratio=0.001, median_s=0.08, sigma=0.6)
        name = f"svc-{i:03d}"
        scenarios.append(
            Scenario(name, "http", name, NAMESPACE, canary, baseline, "pass", "Successful")
        )
    return scenarios


def data_window(now: float | None = None) -> tuple[float, float]:
    now = time.time() if now is None else now
    start = math.floor((now - PAST_SECONDS) / STEP_SECONDS) * STEP_SECONDS
    end = math.floor((now + AHEAD_SECONDS) / STEP_SECONDS) * STEP_SECONDS
    return float(start), float(end)


def start_prometheus(work_dir: Path, count: int = SERVICES) -> PrometheusServer:
    start, end = data_window()
    return start_with_scenarios(bench_scenarios(count), start, end, work_dir)
