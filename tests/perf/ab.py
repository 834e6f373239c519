"""A/B of two configurations in one time window: how a change is judged on a noisy machine.

`make bench` compares against baselines measured in the same run, but two runs of it on the same
code differ by ±30 % here (the host is shared). To judge a change of a few per cent, both
versions run side by side instead: one Redis and one Prometheus (the bench's data), and per
configuration its own webhook and two workers (own queue, own key prefix). Fresh analyses are
sent to each in turn (the order alternating per round), with the floor (our PromQL with the naive
client library, plus one Redis ping) measured in the same rounds.

    AB='{"before": {"pythonpath": "/path/to/other/checkout"}, "after": {}}' \\
        python -m tests.perf.ab
    AB='{"plain": {"pythonpath": "/tmp/no-hiredis"}, "hiredis": {}}' python -m tests.perf.ab
    AB='{"real": {}, "no-query": {"pythonpath": "tests/perf/no_query"}}' python -m tests.perf.ab

A configuration is `env` (more environment for its services), `pythonpath` (put first on
their PYTHONPATH: another checkout of this repository, or a directory with a sitecustomize.py
that changes something before the services start, e.g. `sys.modules["hiredis"] = None`, or
`tests/perf/no_query`: everything of ours but the PromQL exchange) and/or `pool` (the workers'
Celery pool: `threads`, as deployed, or e.g. `solo`, which runs a task on the thread that reads it).
AB_LIVE=1 sends live polls instead (no `end`, as Argo does; each of the 50 services in turn, a
reuse window of 1 s, so every poll adds the time since its previous one to its canary's sequence).
AB_ROUNDS sets the calls per configuration (300), AB_GAP_MS a pause after each round (0: `make
bench` has ~35 ms). Prints p50, p90 and the ratio to the floor, and the worker and webhook CPU per
analysis from /proc, per configuration. AB_BURSTS=N adds N
bursts of 500 distinct rollouts at once per configuration (the bench's item 5), the
configurations taking turns: throughput, errors and worker CPU per analysis of each.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_api_client import PrometheusConnect

from analysis.policy import PolicySet
from tests.perf.bench import (
    BURST,
    CAP,
    CONCURRENCY,
    WORKERS,
    body_for,
    call_many,
    cpu_seconds,
    expr_of,
    fresh_end,
)
from tests.perf.dataset import SERVICES, start_prometheus
from tests.support.procs import RedisServer
from tests.support.service import Webhook, Worker, service_env

ROUNDS = int(os.environ.get("AB_ROUNDS", "300"))
BURSTS = int(os.environ.get("AB_BURSTS", "0"))
# A pause after each round, as `make bench` has (its naive and floor queries, ~35 ms): processes
# idle between analyses wake up slower.
GAP_SECONDS = float(os.environ.get("AB_GAP_MS", "0")) / 1000
# Live polls (no `end`, as Argo sends them), each service in turn, past a 1 s reuse window: every
# poll a new analysis that adds the time since its canary's previous poll to its sequence.
LIVE = os.environ.get("AB_LIVE", "") not in ("", "0")
WARM_UP = 30


@dataclass
class Side:
    name: str
    workers: list[Worker]
    webhook: Webhook
    http: httpx.Client
    latencies: list[float]

    def cpu(self) -> tuple[float, float]:
        workers = sum(cpu_seconds(w.pid or 0) for w in self.workers)
        return workers, cpu_seconds(self.webhook.pid or 0)

    def stop(self) -> None:
        self.http.close()
        for proc in [self.webhook, *self.workers]:
            proc.stop()


def start_side(
    name: str, config: dict[str, Any], redis_url: str, prom_url: str, work: Path
) -> Side:
    env = service_env(
        redis_url,
        prometheus_url=prom_url,
        key_prefix=f"ra:{name}:",
        queue=f"ra-{name}",
        extra={
            "ROLLOUT_ANALYZER_REUSE_SECONDS": "1" if LIVE else "120",
            "ROLLOUT_ANALYZER_PROMETHEUS_MAX_CONCURRENT_QUERIES": str(CAP),
            **config.get("env", {}),
        },
    )
    if config.get("pythonpath"):
        paths = [str(Path(config["pythonpath"]).resolve()), env.get("PYTHONPATH")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    pool = config.get("pool", "threads")
    workers = [
        Worker(env, work, pool=pool, concurrency=CONCURRENCY, name=f"{name}-w{i}").start()
        for i in range(WORKERS)
    ]
    webhook = Webhook(env, work).start()
    return Side(name, workers, webhook, httpx.Client(base_url=webhook.url, timeout=10), [])


def ab_body(i: int, rollout: str) -> dict[str, Any]:
    """A fresh analysis of a fixed window, or with AB_LIVE a live poll of service i."""
    return body_for(i, "live") if LIVE else body_for(i, rollout, fresh_end())


def main() -> None:
    configs: dict[str, dict[str, Any]] = json.loads(os.environ["AB"])
    work = Path(tempfile.mkdtemp(prefix="ra-ab-"))
    store = RedisServer(work_dir=work / "redis").start()
    prometheus = start_prometheus(work / "prom")
    sides: list[Side] = []
    try:
        for name, config in configs.items():
            sides.append(start_side(name, config, store.url, prometheus.url, work))
        prom = PrometheusConnect(url=prometheus.url, disable_ssl=True)
        kv = redis.Redis.from_url(store.url)
        policies = PolicySet.load(None)
        for i in range(SERVICES if LIVE else WARM_UP):  # live: every sequence begun
            for side in sides:
                side.http.post("/v1/analyze", json=ab_body(i, "warm"))
        cpu_before = {side.name: side.cpu() for side in sides}
        floor: list[float] = []
        for i in range(ROUNDS):
            for side in sides if i % 2 == 0 else reversed(sides):
                began = time.perf_counter()
                response = side.http.post("/v1/analyze", json=ab_body(i, "ab"))
                side.latencies.append(time.perf_counter() - began)
                if response.status_code != 200:
                    raise SystemExit(f"{side.name}: {response.status_code} {response.text[:200]}")
            body = body_for(i, "ab", fresh_end())
            expr = expr_of(body, policies)
            began = time.perf_counter()
            prom.custom_query(expr, params={"time": fresh_end()})
            kv.ping()
            floor.append(time.perf_counter() - began)
            time.sleep(GAP_SECONDS)
        floor_p50 = statistics.median(floor)
        print(f"floor p50 {floor_p50 * 1000:.2f} ms ({ROUNDS} rounds)")
        for side in sides:
            workers, webhook = (
                (after - before) / ROUNDS * 1000
                for after, before in zip(side.cpu(), cpu_before[side.name], strict=True)
            )
            ordered = sorted(side.latencies)
            p50 = statistics.median(ordered)
            print(
                f"{side.name}: p50 {p50 * 1000:.2f} ms ({p50 / floor_p50:.2f}x the floor), "
                f"p90 {ordered[int(len(ordered) * 0.9)] * 1000:.2f} ms; CPU per analysis: "
                f"workers {workers:.2f} ms, webhook {webhook:.2f} ms"
            )
        if BURSTS:
            bursts(sides)
    finally:
        for side in sides:
            side.stop()
        prometheus.stop()
        store.stop()
        shutil.rmtree(work, ignore_errors=True)


def bursts(sides: list[Side]) -> None:
    """BURSTS rounds of a burst of 500 per configuration, taking turns (item 5 of the bench)."""
    seen: dict[str, dict[str, float]] = {
        side.name: {"ok": 0, "errors": 0, "wall": 0.0, "cpu": 0.0} for side in sides
    }
    for n in range(BURSTS):
        for side in sides if n % 2 == 0 else reversed(sides):
            run = uuid.uuid4().hex[:6]
            bodies = [body_for(i, f"burst-{run}-{i}") for i in range(BURST)]
            cpu_before = side.cpu()[0]
            began = time.perf_counter()
            results = asyncio.run(call_many(side.webhook.url, bodies))
            totals = seen[side.name]
            totals["wall"] += time.perf_counter() - began
            totals["cpu"] += side.cpu()[0] - cpu_before
            statuses = [status for _, status, _ in results]
            totals["ok"] += statuses.count(200)
            totals["errors"] += len(statuses) - statuses.count(200)
    for name, totals in seen.items():
        print(
            f"{name}: bursts of {BURST} x{BURSTS}: {totals['ok'] / totals['wall']:.1f}/s, "
            f"{totals['errors']:.0f} errors or timeouts; worker CPU per analysis "
            f"{totals['cpu'] / max(1, totals['ok']) * 1000:.2f} ms"
        )


if __name__ == "__main__":
    main()
