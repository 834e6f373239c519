"""Where a worker's CPU per analysis goes: the task body alone, Celery alone, and both.

`python -m tests.perf.hop` on the bench's stack (real Redis, Prometheus, webhook, 2 workers):
1. body: the analyze task's body run in this process, no Celery (claims made like the webhook's,
   then `analyze.run(id)` one after another), CPU of this process per analysis;
2. celery: the same task through the real workers for an id that does not exist (START answers
   `missing` at once), /proc CPU of both workers per task: Celery's receive, late-ack
   bookkeeping, thread pool and ack, plus one Lua call;
3. both: `make bench` row 2 (fresh analyses through the webhook), for comparison.
The machine is shared: run it a few times; ratios between the three are steadier than each.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import time
from typing import Any

import redis.asyncio as aioredis

from tests.perf.bench import (
    Stack,
    body_for,
    cpu_seconds,
    fresh_end,
    measure_fresh,
    stack_running,
)

ANALYSES = int(os.environ.get("HOP_ANALYSES", "300"))


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def claimed(stack: Stack, n: int, rollout: str) -> list[str]:
    """`n` fresh analyses claimed as the webhook claims them (the task not pushed): their ids."""
    os.environ.update(stack.env)
    from analysis.policy import PolicySet
    from analysis.request import parse_request, resolve
    from worker.settings import get_settings
    from worker.store import AsyncStore

    policies = PolicySet.load(None)

    async def claims() -> list[str]:
        client = aioredis.from_url(stack.redis.url)
        store = AsyncStore(client, get_settings().key_prefix)
        ids = []
        for i in range(n):
            spec = resolve(parse_request(body_for(i, rollout, fresh_end())), policies)
            claim = await store.claim(
                spec.identity(), spec.to_json(), pending_seconds=120, result_ttl_seconds=600,
                now=time.time(),
            )  # fmt: skip
            ids.append(claim.analysis_id)
        await client.aclose()
        return ids

    return asyncio.run(claims())


def body_alone(stack: Stack, n: int) -> float:
    from worker import tasks

    ids = claimed(stack, n + 20, "hop")
    for analysis_id in ids[:20]:  # connections, caches and scripts up
        tasks.analyze.run(analysis_id)
    began = own_cpu()
    for analysis_id in ids[20:]:
        assert tasks.analyze.run(analysis_id) == "done"
    return (own_cpu() - began) / n


def celery_alone(stack: Stack, n: int) -> float:
    from worker.celery_app import app
    from worker.task_names import ANALYZE_TASK

    queue = stack.env["ROLLOUT_ANALYZER_QUEUE"]
    pids = [w.pid or 0 for w in stack.workers]
    for _ in range(50):
        app.send_task(ANALYZE_TASK, args=["0" * 32], queue=queue)
    time.sleep(2)
    before = sum(cpu_seconds(pid) for pid in pids)
    for i in range(n):
        app.send_task(ANALYZE_TASK, args=["0" * 32], queue=queue)
        if i % 10 == 9:
            time.sleep(0.02)  # a steady trickle, not one burst
    time.sleep(2)
    return (sum(cpu_seconds(pid) for pid in pids) - before) / n


def main() -> None:
    with stack_running() as stack:
        fresh = measure_fresh(stack, 200)
        result: dict[str, Any] = {
            "body_cpu_ms": body_alone(stack, ANALYSES) * 1000,
            "celery_task_cpu_ms": celery_alone(stack, 1000) * 1000,
            "worker_cpu_per_fresh_analysis_ms": fresh["worker_cpu_per_analysis"] * 1000,
            "webhook_cpu_per_fresh_analysis_ms": fresh["webhook_cpu_per_analysis"] * 1000,
        }
    print(json.dumps({k: round(v, 2) for k, v in result.items()}, indent=1))


if __name__ == "__main__":
    main()
