"""The synthetic recording shipped for `make demo`: `python -m cli.demo_recording > FILE`.

Four services, each a canary and a baseline over twelve one-minute points of a 5 m window:
a good canary, an error regression, a latency regression, and a canary with too little traffic.
"""

from __future__ import annotations

import json
import math
import random
import sys
from typing import Any

from analysis.sources.recording import FORMAT

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
START = 1793534400.0  # 2026-11-01T12:00:00Z
WINDOW = 300.0
NAMESPACE = "shop"
CANARY, BASELINE = "6d4f8b7c9a", "5c8d7e6f4b"

# service: (canary rps, canary error ratio, canary median s, baseline rps, baseline error ratio)
SERVICES = {
    "checkout": (16.7, 0.001, 0.050, 50.0, 0.001),
    "payments": (16.7, 0.010, 0.050, 50.0, 0.001),
    "search": (16.7, 0.001, 0.120, 50.0, 0.001),
    "inventory": (0.07, 0.0, 0.050, 50.0, 0.001),
}


def lognormal_cdf(x: float, median: float, sigma: float) -> float:
    return 0.5 * (1 + math.erf(math.log(x / median) / (sigma * math.sqrt(2))))


def side(rng: random.Random, rps: float, error_ratio: float, median: float) -> dict[str, Any]:
    total = max(0, round(rng.gauss(rps * WINDOW, math.sqrt(rps * WINDOW))))
    errors = min(
        total, max(0, round(rng.gauss(total * error_ratio, math.sqrt(total * error_ratio))))
    )
    not_found = round(total * 0.004)
    statuses = {"200": total - errors - not_found, "404": not_found}
    if errors:
        statuses["500"] = errors
    buckets = {repr(le): float(round(total * lognormal_cdf(le, median, 0.6))) for le in BUCKETS}
    buckets["+Inf"] = float(total)
    return {
        "requests_by_status": {k: float(v) for k, v in statuses.items()},
        "latency_buckets": buckets,
    }


def build() -> dict[str, Any]:
    rng = random.Random(20261101)
    entries = []
    for service, (c_rps, c_err, c_median, b_rps, b_err) in SERVICES.items():
        for i in range(12):
            t = START + 60 * i
            for selector, counts in (
                (CANARY, side(rng, c_rps, c_err, c_median)),
                (BASELINE, side(rng, b_rps, b_err, 0.050)),
            ):
                entry: dict[str, object] = {
                    "service": service,
                    "namespace": NAMESPACE,
                    "selector": selector,
                }
                entry |= {"window_seconds": WINDOW, "time": t, **counts}
                entries.append(entry)
    description = (
        "synthetic demo: checkout good, payments 10x errors, search slower, inventory idle"
    )
    return {"format": FORMAT, "description": description, "entries": entries}


if __name__ == "__main__":
    json.dump(build(), sys.stdout, indent=1)
    sys.stdout.write("\n")
