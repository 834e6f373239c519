"""A worker's instructions per fresh analysis, counted by valgrind's callgrind: a figure of our
code that the host cannot move.

The workers' CPU time per analysis follows the host: the same code reads 4.4 ms on a quiet host
and 6.4-7.0 ms in its slow phases (docs/performance.md). callgrind counts the instructions a
process executes, and that count stays the same whatever else the machine does. So a change to
our code shows in it to well under 1 %, where CPU time needs many A/B rounds to see 3 %.

One worker of the bench's configuration (threads pool, 8 threads) runs under callgrind, beside
a webhook of its own (its own key prefix and queue, on the bench's Redis and Prometheus), so it
takes every analysis. It starts with instrumentation off (at near-native speed). Then
instrumentation goes on, 60 analyses warm it, the counters are zeroed, and `analyses` fresh
analyses are counted, paced like the bench's. Each round polls the bench's 50 services as new
rollouts, first polls then repeated ones, as `make bench`'s fresh series does. (With 30 warm
analyses, fewer than the services, the first counted round read 5 % high: the process's caches
were still filling.) Every instruction the worker process executes in that window is counted:
Celery's loop, kombu, the pool threads, heartbeats and our task body. Under callgrind the process
runs ~50x slower and one thread at a time, so this counts work, not time or contention.

`python -m tests.perf.instructions [ANALYSES] [ROUNDS]` runs it on a bench stack of its own.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.service import Webhook, Worker

PAUSE_SECONDS = 0.04  # between analyses, as `make bench` spaces its fresh ones
WARM = 60  # every code path translated by valgrind (the bench's 50 services, polled again)
TOTALS = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def callgrind_control(pid: int, *options: str) -> None:
    subprocess.run(["callgrind_control", *options, str(pid)], check=True, capture_output=True)


def dumped_instructions(out_dir: Path, before: set[Path], timeout: float = 60.0) -> int:
    """The instruction total of the dump `callgrind_control -d` has just asked for."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in set(out_dir.glob("callgrind.out*")) - before:
            found = TOTALS.search(path.read_bytes())
            if found:
                return int(found.group(1))
        time.sleep(0.2)
    raise TimeoutError("callgrind wrote no dump")


def count_worker_instructions(
    env: dict[str, str],
    work: Path,
    fresh_body: Callable[[int, str], dict[str, Any]],
    analyses: int = 200,
    rounds: int = 2,
) -> dict[str, Any]:
    """Instructions per fresh analysis of one worker, `rounds` times over `analyses` each."""
    out_dir = work / "callgrind"
    out_dir.mkdir(parents=True, exist_ok=True)
    own = {**env, "ROLLOUT_ANALYZER_KEY_PREFIX": "ra:instr:", "ROLLOUT_ANALYZER_QUEUE": "ra-instr"}
    wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out_dir}/callgrind.out",
    ]
    worker = Worker(own, out_dir, concurrency=8, name="counted", wrapper=wrapper)
    webhook = Webhook(own, out_dir)
    per_round: list[float] = []
    try:
        worker.start(timeout=180)
        webhook.start()
        pid = worker.pid or 0
        n = 0
        with httpx.Client(base_url=webhook.url, timeout=60) as http:

            def analyse(label: str, counted: bool = True) -> None:
                nonlocal n
                n += 1
                response = http.post("/v1/analyze", json=fresh_body(n, label))
                if counted and response.status_code != 200:
                    raise RuntimeError(f"analysis under callgrind: {response.status_code}")

            callgrind_control(pid, "--instr=on")
            for _ in range(WARM):  # the code translated by valgrind, the connections up
                analyse("instr", counted=False)  # the first may outlast the wait
            for k in range(rounds):
                before = set(out_dir.glob("callgrind.out*"))
                callgrind_control(pid, "--zero")
                for _ in range(analyses):
                    analyse(f"instr-{k}")  # a rollout's first poll, then its next ones
                    time.sleep(PAUSE_SECONDS)
                callgrind_control(pid, "--dump")
                per_round.append(dumped_instructions(out_dir, before) / analyses)
    finally:
        webhook.stop()
        worker.stop(timeout=60)
    return {
        "analyses": analyses,
        "per_round": per_round,
        "per_analysis": statistics.median(per_round),
    }


def main() -> int:
    from tests.perf.bench import body_for, ensure_tool, fresh_end, stack_running

    ensure_tool("valgrind", "valgrind")
    analyses = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    with stack_running() as stack:
        counted = count_worker_instructions(
            stack.env,
            stack.work,
            lambda i, label: body_for(i, label, fresh_end()),
            analyses,
            rounds,
        )
    rounds_text = ", ".join(f"{r / 1e6:.3f}" for r in counted["per_round"])
    print(
        f"worker instructions per fresh analysis: {counted['per_analysis'] / 1e6:.3f} M"
        f" (rounds of {analyses}: {rounds_text} M)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
