"""What tracing costs on the worker's hot path: `execute()` of one analysis (claim read, lease,
statistics on the bundled recording, result write in Redis-compatible fakeredis, one JSON log
line), timed three ways in one fresh process with no OTEL_* variables of the caller:

- bare: the tracing helpers replaced by empty functions (the code as if it had no tracing);
- off:  worker.tracing as shipped, no endpoint configured (what every user pays);
- on:   tracing set up against a local OTLP/HTTP receiver, every analysis sampled and exported.

Prints `off/bare` (the figure that must stay ~1.0) and `on/bare`, medians of interleaved rounds.
Run: `python -m tests.perf.tracing_overhead`; `make bench` calls `main()`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RECORDING = REPO / "analysis" / "data" / "demo-recording.json"
ROUNDS = int(os.environ.get("TRACING_BENCH_ROUNDS", "7"))
PER_ROUND = int(os.environ.get("TRACING_BENCH_ANALYSES", "120"))


def _claims(count: int) -> tuple[Any, list[str]]:
    """`count` queued analyses in one fakeredis server; the worker-side store over it."""
    import fakeredis

    from analysis.policy import PolicySet
    from analysis.request import parse_request, resolve
    from worker.store import AsyncStore, Store

    server = fakeredis.FakeServer()
    webhook_side = AsyncStore(fakeredis.FakeAsyncRedis(server=server))
    policies = PolicySet.load(None)

    async def claim_all() -> list[str]:
        ids = []
        for i in range(count):
            spec = resolve(
                parse_request(
                    {
                        "service": "payments",
                        "namespace": "shop",
                        "canary": "6d4f8b7c9a",
                        "baseline": "5c8d7e6f4b",
                        "rollout": f"payments-{i}",
                    }
                ),
                policies,
            )
            claim = await webhook_side.claim(
                spec.identity(),
                spec.to_json(),
                pending_seconds=600,
                result_ttl_seconds=600,
                now=time.time(),
            )
            ids.append(claim.analysis_id)
        return ids

    return Store(fakeredis.FakeRedis(server=server)), asyncio.run(claim_all())


def _run_round(count: int) -> float:
    from analysis.policy import PolicySet
    from analysis.sources.recording import RecordingSource
    from worker.jobs import execute

    store, ids = _claims(count)
    source, policies = RecordingSource.from_file(RECORDING), PolicySet.load(None)
    began = time.perf_counter()
    for analysis_id in ids:
        execute(
            store,
            analysis_id,
            worker="bench",
            source=source,
            policies=policies,
            lease_seconds=30,
            reuse_seconds=0,
            budget_seconds=10,
        )
    return (time.perf_counter() - began) / count


@contextmanager
def _bare() -> Iterator[None]:
    """The tracing helpers the hot path calls, as empty functions."""
    import worker.jobs
    import worker.logs
    from worker import tracing

    @contextmanager
    def passthrough(source: Any) -> Iterator[Any]:
        yield source

    def nothing(*_: Any, **__: Any) -> None:
        return None

    stub = types.SimpleNamespace(
        set_attributes=nothing,
        analysis_attributes=nothing,
        statistics_timed=passthrough,
    )
    saved_ids: Callable[[], Any] = tracing.current_ids
    # setattr: these are the names the hot path looks up at call time.
    setattr(worker.jobs, "tracing", stub)  # noqa: B010
    setattr(worker.logs, "current_ids", nothing)  # noqa: B010
    try:
        yield
    finally:
        setattr(worker.jobs, "tracing", tracing)  # noqa: B010
        setattr(worker.logs, "current_ids", saved_ids)  # noqa: B010


def _measure() -> dict[str, Any]:
    from worker.logs import JsonFormatter

    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)

    _run_round(20)  # warm imports and caches
    bare, off = [], []
    for _ in range(ROUNDS):
        with _bare():
            bare.append(_run_round(PER_ROUND))
        off.append(_run_round(PER_ROUND))

    from tests.support.otlp_receiver import OtlpHttpReceiver
    from worker import tracing

    receiver = OtlpHttpReceiver().start()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    os.environ["OTEL_BSP_SCHEDULE_DELAY"] = "200"
    assert tracing.setup("worker")
    on = []
    for _ in range(ROUNDS):
        with tracing.span("bench"):  # the task span the Celery signal would open
            on.append(_run_round(PER_ROUND))
    tracing.shutdown()
    exported = len(receiver.spans)
    receiver.stop()
    return {
        "bare_ms": statistics.median(bare) * 1000,
        "off_ms": statistics.median(off) * 1000,
        "on_ms": statistics.median(on) * 1000,
        "spans_exported": exported,
        "analyses_per_variant": ROUNDS * PER_ROUND,
    }


def main() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, "-m", "tests.perf.tracing_overhead", "--child"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr else "failed")
    r = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"per analysis: bare {r['bare_ms']:.3f} ms, off {r['off_ms']:.3f} ms, "
        f"on {r['on_ms']:.3f} ms ({r['analyses_per_variant']} analyses each, "
        f"{r['spans_exported']} spans exported when on)"
    )
    print(
        f"tracing off/bare {r['off_ms'] / r['bare_ms']:.3f}x, "
        f"on/bare {r['on_ms'] / r['bare_ms']:.3f}x"
    )


if __name__ == "__main__":
    if "--child" in sys.argv:
        print(json.dumps(_measure()))
    else:
        main()
