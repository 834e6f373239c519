"""Where the analyze task's time goes after the bench's pause, part by part, in-process.

`python -m tests.perf.task_parts` on the bench's stack (real Redis, Prometheus; no Celery): claims
made as the webhook makes them, then `analyze.run(id)` with a pause before each (35 ms, as
`make bench` spaces fresh analyses), every part timed by wrapping it. Prints the median of each
part in ms. Knobs: PARTS_ANALYSES (300), PARTS_PAUSE_MS (35).
"""

from __future__ import annotations

import functools
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from tests.perf.bench import Stack, stack_running
from tests.perf.hop import claimed

ANALYSES = int(os.environ.get("PARTS_ANALYSES", "300"))
PAUSE = float(os.environ.get("PARTS_PAUSE_MS", "35")) / 1000
WARM = 30

Times = dict[str, list[float]]


def timed(times: Times, owner: Any, attr: str, name: str) -> None:
    original = getattr(owner, attr)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            times.setdefault(name, []).append((time.perf_counter() - began) * 1000)

    setattr(owner, attr, wrapper)


def timed_classifier(times: Times, name: str, classify: Callable[[Any], Any]) -> Any:
    def wrapper(look: Any) -> Iterator[Any]:
        began = time.perf_counter()
        checks = list(classify(look))
        times.setdefault(f"judge: {name}", []).append((time.perf_counter() - began) * 1000)
        return iter(checks)

    return wrapper


def measure(stack: Stack) -> Times:
    os.environ.update(stack.env)
    import analysis.judge as judge_module
    import analysis.report as report_module
    from analysis.sources.prometheus import PrometheusSource
    from worker import history, jobs, store, tasks

    ids = claimed(stack, ANALYSES + WARM, "parts")
    for analysis_id in ids[:WARM]:  # connections, caches and scripts up
        tasks.analyze.run(analysis_id)
    times: Times = {}
    for owner, attr, name in (
        (tasks.analyze, "run", "the task"),
        (jobs, "compute", "compute (after START)"),
        (PrometheusSource, "observe", "the PromQL exchange"),
        (report_module, "judge", "judging"),
        (report_module, "report", "the report"),
        (store.Store, "finish", "FINISH (its round trip included)"),
        (history.History, "entry", "the timeline's line"),
    ):
        timed(times, owner, attr, name)
    judge_module.PIPELINE = tuple(
        (name, timed_classifier(times, name, classify)) for name, classify in judge_module.PIPELINE
    )
    for analysis_id in ids[WARM:]:
        time.sleep(PAUSE)
        assert tasks.analyze.run(analysis_id) == "done"
    return times


def main() -> Times:
    with stack_running() as stack:
        times = measure(stack)
    print(f"{ANALYSES} analyses, {PAUSE * 1000:.0f} ms pause before each; medians:")
    for name, values in sorted(times.items(), key=lambda kv: -statistics.median(kv[1])):
        print(f"{statistics.median(values):8.3f} ms  {name}")
    return times


if __name__ == "__main__":
    main()
