"""Redis bytes per poll, for `make bench`: does memory follow canaries or polls?

A stack of its own (fresh redis-server, webhook, 2 workers; the bench's Prometheus) with no reuse
window, so every poll is a fresh analysis, and a short `replaced_ttl_seconds`, so what a poll
leaves behind *after* its replacement window is visible within the run:

- round 1: ROLLOUTS canaries polled once   → A, bytes kept per canary (`INFO memory` delta);
- rounds 2..ROUNDS: each polled again      → B, bytes kept per further poll: the growth of
                                             MEMORY USAGE over all keys from the middle of the
                                             run to its end, both once replaced analyses
                                             expired (5,000 analyses); B' the same from
                                             `used_memory` (adds the allocator's steps);
- C: `MEMORY USAGE` of the largest stored analysis (what a replaced one holds during its
  window; a live report carries its sequence's last HISTORY_KEPT poll summaries; the result is
  packed, worker/codec.py). Each canary's latest analysis grows with those summaries until its
  sequence has HISTORY_KEPT polls (polls of one second count once, so not yet at mid-run):
  that growth is per canary, to C, and is taken out of B like the other capped parts (it read
  as +50 to +70 B per poll, 1.4 GB a day in the formula, in runs where it was left in);
- S: a live canary's sequence (worker/sequences.py) at its largest: it keeps the summaries of
  its last HISTORY_KEPT polls (and the intervals within its policy's window), so it grows with
  a canary's first polls, then stays (its growth in the run is taken out of B); H: the report
  pages' poll history of a rollout revision (worker/history.py) at its cap of MAX_POLLS
  summaries, from the bytes per summary seen (key overhead included: an upper bound).

Extrapolated to N rollouts polled every I s for 24 h with production's replaced window W:
N·(A + S + H + L) + (N/I·86400)·B + (N/I·W)·C + verdict changes·C (each keeps its analysis
24 h), L = C minus a latest analysis' size after round 1 (its growth to the summaries' cap).
One revision per rollout in the 24 h: each further revision adds its own H for 7 days.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, cast

import redis

from analysis.sequential import HISTORY_KEPT, Sequence
from tests.perf.loadgen import post_all
from tests.support.procs import RedisServer
from tests.support.service import Webhook, Worker, service_env
from worker.codec import unpack
from worker.history import MAX_POLLS
from worker.keyspace import Keys
from worker.settings import Settings

ROLLOUTS = 500
ROUNDS = 10  # 5,000 analyses in all
REPLACED_TTL_IN_RUN = 3
TARGET_ROLLOUTS, TARGET_INTERVAL, TARGET_BYTES = 10_000, 30, 4e9
# Verdict changes per rollout per day kept for 24 h (each is an event: first verdict, pass →
# fail ...); a generous guess, as the bench's canaries never change.
CHANGES_PER_ROLLOUT_PER_DAY = 10


def used(kv: redis.Redis) -> int:
    return int(kv.info("memory")["used_memory"])


def capped_bytes(kv: redis.Redis, prefix: str) -> int:
    """Live sequences and the pages' poll history: per canary, growing to a cap."""
    keys = [*kv.scan_iter(f"{prefix}seq:*"), *kv.scan_iter(f"{prefix}history:polls:*")]
    return sum(int(kv.memory_usage(k, samples=0) or 0) for k in keys)


def latest_bytes(kv: redis.Redis, prefix: str) -> tuple[int, int]:
    """MEMORY USAGE of each identity's latest analysis (what `latest:` points at), and how many."""
    # `kv` decodes no responses: bytes.
    ids = [
        cast(bytes | None, kv.get(key))
        for key in kv.scan_iter(f"{prefix}{{*}}latest:*", count=1000)
    ]
    records = [Keys(prefix).record(i.decode()) for i in ids if i]
    pipe = kv.pipeline(transaction=False)
    for record in records:
        pipe.memory_usage(record, samples=0)
    return sum(int(n or 0) for n in pipe.execute()), len(records)


def keyspace_bytes(kv: redis.Redis) -> int:
    """MEMORY USAGE over every key: what the keys hold, without the allocator's and the
    keyspace tables' steps (`used_memory` jumps by ~100 KB when a table doubles)."""
    pipe = kv.pipeline(transaction=False)
    for key in kv.scan_iter(count=1000):
        pipe.memory_usage(key, samples=0)
    return sum(int(n or 0) for n in pipe.execute())


def sequence_parts(kv: redis.Redis, prefix: str) -> dict[str, int]:
    """What the largest sequence's state is made of, as JSON bytes per part."""
    keys = list(kv.scan_iter(f"{prefix}seq:*"))
    if not keys:
        return {}
    largest = max(keys, key=lambda k: int(kv.memory_usage(k, samples=0) or 0))
    raw = kv.hget(largest, "state") or b""
    state = Sequence.from_json(json.loads(unpack(raw))).to_json()
    parts = {name: len(json.dumps(value)) for name, value in state.items()}
    return {"stored": len(raw), **parts}


def settled(kv: redis.Redis) -> int:
    """Memory once the replaced analyses' window has passed and every expired key is freed."""
    time.sleep(REPLACED_TTL_IN_RUN + 2)
    for _ in kv.scan_iter(count=1000):  # a key found expired when visited is freed then
        pass
    return used(kv)


async def round_of(url: str, bodies: list[dict[str, Any]]) -> list[int | str]:
    results = []
    for start in range(0, len(bodies), 100):  # 100 at a time: a steady load, no timeouts
        batch = await post_all(url, "/v1/analyze", bodies[start : start + 100], 10.0)
        results += [status for _, status, _ in batch]
    return results


def measure_memory(prometheus_url: str, work: Path, body_for: Any) -> dict[str, Any]:
    store = RedisServer(work_dir=work / "memory-redis").start()
    prefix = "ra:mem:"
    env = service_env(
        store.url,
        prometheus_url=prometheus_url,
        key_prefix=prefix,
        queue="ra-mem",
        extra={
            "ROLLOUT_ANALYZER_REUSE_SECONDS": "0",
            "ROLLOUT_ANALYZER_REPLACED_TTL_SECONDS": str(REPLACED_TTL_IN_RUN),
        },
    )
    workers = [Worker(env, work, concurrency=8, name=f"mem-w{i}").start() for i in range(2)]
    webhook = Webhook(env, work).start()
    kv = redis.Redis.from_url(store.url)
    try:
        warm = [body_for(i, f"mem-warm-{i}") for i in range(ROLLOUTS)]
        asyncio.run(round_of(webhook.url, warm))  # connections and scripts up
        base = settled(kv)
        bodies = [body_for(i, f"mem-{i}") for i in range(ROLLOUTS)]
        statuses = asyncio.run(round_of(webhook.url, bodies))
        after_first = used(kv)
        latest_first, latest_count = latest_bytes(kv, prefix)
        peak = 0
        half = ROUNDS // 2
        for n in range(2, ROUNDS + 1):
            statuses += asyncio.run(round_of(webhook.url, bodies))
            peak = max(peak, used(kv))
            if n == half:
                at_half, seq_at_half = settled(kv), capped_bytes(kv, prefix)
                keys_at_half = keyspace_bytes(kv)
                latest_at_half = latest_bytes(kv, prefix)[0]
        after_all, seq_at_end = settled(kv), capped_bytes(kv, prefix)
        keys_at_end = keyspace_bytes(kv)
        latest_at_end = latest_bytes(kv, prefix)[0]
        # A live canary's sequence grows with its first HISTORY_KEPT polls, then stays: count
        # it per canary at its largest, and leave its growth out of what polls keep.
        sequence_cap = max(
            (int(kv.memory_usage(k, samples=0) or 0) for k in kv.scan_iter(f"{prefix}seq:*")),
            default=0,
        )
        # The report pages' poll history (worker/history.py) keeps a rollout's last MAX_POLLS
        # summaries: per canary at that cap, from the bytes per summary seen.
        parts = sequence_parts(kv, prefix)
        history_keys = list(kv.scan_iter(f"{prefix}history:polls:*"))
        summaries = sum(int(kv.zcard(k)) for k in history_keys)
        history_bytes = sum(int(kv.memory_usage(k, samples=0) or 0) for k in history_keys)
        history_cap = history_bytes / max(1, summaries) * MAX_POLLS
        # The largest: a live report carries its sequence's last 20 poll summaries, so records
        # grow with a canary's first 20 polls (the bench's canaries share 50 sequences, which
        # reach that within the run).
        record_bytes = max(
            int(kv.memory_usage(key, samples=0) or 0)
            for key in kv.scan_iter(f"{prefix}{{*}}analysis:*", count=1000)
        )
        kinds: dict[str, int] = {}
        for key in kv.scan_iter(count=1000):
            name = key.decode()
            kind = name.rpartition("}")[2].split(":")[0] if "}" in name else name[:16]
            kind = kind or name.removeprefix(prefix).split(":")[0]  # seq:{id}
            kinds[str(kind)] = kinds.get(str(kind), 0) + 1
        polls = ROLLOUTS * ROUNDS
        per_canary = (after_first - base) / ROLLOUTS
        # Growth between the middle and the end, both settled: what further polls leave, in
        # the keys (B) and in `used_memory` (B', which adds the allocator's steps: noise of
        # ±50 B per poll over 2,500 polls), both without the capped structures' growth.
        further = (ROUNDS - half) * ROLLOUTS
        capped_growth = (seq_at_end - seq_at_half) + (latest_at_end - latest_at_half)
        per_poll = ((keys_at_end - keys_at_half) - capped_growth) / further
        per_poll_used = ((after_all - at_half) - capped_growth) / further
        records = sum(1 for _ in kv.scan_iter(f"{prefix}{{*}}analysis:*", count=1000))
    finally:
        kv.close()
        for proc in [webhook, *workers, store]:
            proc.stop()
    window = Settings().replaced_ttl_seconds
    polls_per_second = TARGET_ROLLOUTS / TARGET_INTERVAL
    latest_growth = max(0.0, record_bytes - latest_first / max(1, latest_count))
    extrapolated = (
        TARGET_ROLLOUTS * (per_canary + sequence_cap + history_cap + latest_growth)
        + polls_per_second * 86400 * max(0.0, per_poll)
        + polls_per_second * window * record_bytes
        + TARGET_ROLLOUTS * CHANGES_PER_ROLLOUT_PER_DAY * record_bytes
    )
    return {
        "analyses": polls,
        "rollouts": ROLLOUTS,
        "ok": sum(s == 200 for s in statuses),
        "bytes_per_canary": per_canary,
        "bytes_per_poll_kept": per_poll,
        "bytes_per_poll_kept_used_memory": per_poll_used,
        "bytes_per_poll_in_run": (peak - base) / polls,
        "record_bytes": record_bytes,
        "latest_record_growth_to_cap": latest_growth,
        "sequence_bytes_at_cap": sequence_cap,
        "sequence_history_kept": HISTORY_KEPT,
        "sequence_state_parts_json_bytes": parts,
        "poll_history_bytes_at_cap": history_cap,
        "poll_history_kept": MAX_POLLS,
        "records_left": records,
        "keys_left": kinds,
        "replaced_ttl_seconds": window,
        "extrapolated_bytes": extrapolated,
        # The same with B' (used_memory) for B: how much the allocator's noise could add.
        "extrapolated_bytes_used_memory": extrapolated
        + polls_per_second * 86400 * (max(0.0, per_poll_used) - max(0.0, per_poll)),
        # What keeping every poll for the result TTL (the old way) would take.
        "keep_every_poll_bytes": polls_per_second * Settings().result_ttl_seconds * record_bytes,
        "record_key_example": Keys(prefix).record("0" * 32),
    }


def main() -> int:
    """`python -m tests.perf.memory`: row 10 alone, with a Prometheus of its own."""
    import shutil
    import tempfile

    from tests.perf.bench import body_for
    from tests.perf.dataset import start_prometheus

    work = Path(tempfile.mkdtemp(prefix="ra-memory-"))
    prometheus = start_prometheus(work / "prom")
    try:
        found = measure_memory(prometheus.url, work, body_for)
    finally:
        prometheus.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
