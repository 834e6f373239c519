"""A CPU reference measured in the same run as the worker-CPU row: fixed Python work, CPU-timed.

The same worker code costs 4.4 ms of CPU an analysis on a quiet host and 6.8-7.0 ms in the
host's slow phases, with nothing stolen (docs/performance.md): the other tenants slow every
instruction. A reading alone cannot tell that from a change of ours. So a process of its own,
started beside the stack, runs one unit of fixed work each time the bench asks (in the pause
between two fresh analyses, where the workers' CPU is spent) and answers with the unit's CPU
time. The worker's CPU over the reference's says whether we or the host moved.

The work is frozen on purpose: JSON in and out, a walk over nested dicts, a sort and string
formatting, the kinds of step a worker's analysis is made of, but none of our code. If it used
our code, a change that made us faster would make the reference faster too, and hide itself.

`python -m tests.perf.cpu_reference` runs the server: one line in, one unit run, its CPU time
in nanoseconds out.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SEED = 14
ENTRIES = 60  # a ~6 KB document, the size of the Prometheus answer and report a worker reads
VALUES = 1500


def _document() -> dict[str, Any]:
    rng = random.Random(SEED)
    return {
        "series": [
            {
                "metric": {
                    "destination_workload": f"svc-{i % 7}",
                    "response_code": str(200 + (i % 5) * 100),
                    "version": "canary" if i % 2 else "stable",
                },
                "value": [1_700_000_000 + i, f"{rng.random() * 1000:.6f}"],
            }
            for i in range(ENTRIES)
        ],
        "status": "success",
    }


DOCUMENT = json.dumps(_document())
NUMBERS = [random.Random(SEED + 1).random() for _ in range(VALUES)]


def unit() -> int:
    """One unit of fixed work; returns a size so that nothing is optimised away."""
    doc = json.loads(DOCUMENT)
    by_version: dict[str, list[float]] = {}
    for entry in doc["series"]:
        labels = entry["metric"]
        key = f"{labels['destination_workload']}/{labels['version']}/{labels['response_code']}"
        by_version.setdefault(key, []).append(float(entry["value"][1]))
    ordered = sorted(NUMBERS)
    quantiles = {q: ordered[int(q * (len(ordered) - 1))] for q in (0.5, 0.9, 0.95, 0.99)}
    report = {
        "groups": {key: {"n": len(v), "sum": round(sum(v), 6)} for key, v in by_version.items()},
        "quantiles": {f"p{int(q * 100)}": f"{value:.6f}" for q, value in quantiles.items()},
    }
    return len(json.dumps(report, sort_keys=True))


def serve() -> None:
    for _line in sys.stdin:
        began = time.thread_time_ns()
        unit()
        sys.stdout.write(f"{time.thread_time_ns() - began}\n")
        sys.stdout.flush()


class CpuReference:
    """The reference's process, asked for one unit at a time."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.perf.cpu_reference"],
            cwd=Path(__file__).resolve().parents[2],  # the repository: `tests` importable
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.units: list[float] = []

    def run_one(self) -> float:
        """One unit's CPU time in seconds (also kept in `units`)."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        seconds = int(self.process.stdout.readline()) / 1e9
        self.units.append(seconds)
        return seconds

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=10)

    def __enter__(self) -> CpuReference:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


if __name__ == "__main__":
    serve()
