"""`make soak`: many simulated Argo rollouts polling one webhook and two workers for minutes.

Every rollout polls the latest window every SOAK_INTERVAL seconds (Argo's `interval`), on a
connection of its own with Argo's 10 s timeout, starting at a random offset. Each minute prints
the polls, errors, timeouts, p50/p99, Redis memory and the RSS of every process. Redis memory is
split by `MEMORY USAGE` over every key: what fills to a known cap per canary (live sequences and
the analyses whose live reports carry their last HISTORY_KEPT poll summaries; the pages' poll
histories of MAX_POLLS summaries), each with how full it is; every other key; and Redis' own
tables and allocator rounding (used_memory minus the keys: it follows the data held). The end
prints the verdict: 0 errors, 0 timeouts, and
the other keys and the workers' RSS flat after the first reuse and replaced-analysis windows
(the last minute within SOAK_FLAT of minute SOAK_SETTLED's figure); the capped parts with their
fill and their size once full. The webhook's RSS is judged from the minute the sequences are
full: it holds the answers of the last reuse window, and an answer carries its sequence's last
HISTORY_KEPT poll summaries, so each answer grows for HISTORY_KEPT polls (10 minutes at 30 s;
the mean answer's size is printed each minute). Judged flat from then, for SOAK_SETTLED minutes
at least: a run too short for that fails and says so.

Knobs: SOAK_ROLLOUTS (2000), SOAK_MINUTES (14: the sequences full at minute 10, then four),
SOAK_INTERVAL (30 s), SOAK_FLAT (1.10), SOAK_SETTLED (3: after a 60 s replaced window and a few
30 s polls).
Not part of `make test`; results in .bench/soak.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from analysis.sequential import HISTORY_KEPT
from tests.perf.bench import REPO, Stack, body_for, pct, rss_mb, stack_running
from tests.perf.loadgen import post_json
from worker.codec import unpack
from worker.history import MAX_POLLS

ROLLOUTS = int(os.environ.get("SOAK_ROLLOUTS", "2000"))
MINUTES = float(os.environ.get("SOAK_MINUTES", "14"))
INTERVAL = float(os.environ.get("SOAK_INTERVAL", "30"))
FLAT = float(os.environ.get("SOAK_FLAT", "1.10"))
SETTLED = int(os.environ.get("SOAK_SETTLED", "3"))
ARGO_TIMEOUT_SECONDS = 10.0
SAMPLED = 200  # sequences read each minute to see how full their poll summaries are
# These grow until the capped structures are full (analyses: as full as the sequences).
FILLING = ("redis_used_mb", "redis_overhead_mb", "seq_mb", "records_mb", "polls_mb")
FILLS = (("seq", "seq_fill"), ("records", "seq_fill"), ("polls", "polls_fill"))
# These grow with the answers until the sequences are full, then must be flat: the webhook keeps
# the last reuse window's answers (~1,000 here), ~7 KB at a sequence's first polls and 14 KB at its
# cap; its RSS grew 11 MB while they did (glibc's heap holds buffers of ever larger sizes).
WITH_ANSWERS = ("rss_webhook_mb",)
FULL = 0.99  # the sampled sequences' fill from which the answers are at their cap
RESULTS = REPO / ".bench" / "soak.json"


@dataclass
class Minute:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    timeouts: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    answer_bytes: list[int] = field(default_factory=list)


async def rollout(
    i: int, url: str, stop_at: float, minutes: dict[int, Minute], began: float
) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    # Each rollout its own canary, as in a cluster (a live sequence per canary): the data has
    # SERVICES canary pairs, so a never-reached latency limit tells the rest apart.
    body = body_for(i, f"soak-{i}") | {"overrides": {"max_latency_p50": 100 + i}}
    await asyncio.sleep(random.uniform(0, INTERVAL))
    while time.monotonic() < stop_at:
        polled = time.monotonic()
        sizes: list[int] = []
        seconds, status, _ = await post_json(
            host, port, "/v1/analyze", body, ARGO_TIMEOUT_SECONDS, sizes
        )
        minute = minutes.setdefault(int((polled - began) // 60), Minute())
        minute.answer_bytes.extend(sizes)
        minute.statuses[str(status)] = minute.statuses.get(str(status), 0) + 1
        if status == 200:
            minute.latencies.append(seconds)
        elif status == "timeout":
            minute.timeouts += 1
        else:
            minute.errors += 1
        await asyncio.sleep(max(0.0, polled + INTERVAL - time.monotonic()))


def capped(stack: Stack) -> dict[str, float]:
    """The per-canary structures that fill up to a cap, and how full they are: live sequences
    (their last HISTORY_KEPT poll summaries; SAMPLED of them read) and the pages' poll
    histories (MAX_POLLS summaries per rollout revision); and every other key, which is what
    must stay flat."""
    kv = stack.kv
    sequences, histories, records, others = [], [], [], []
    for key in kv.scan_iter(count=1000):
        text = key.decode(errors="replace")
        if text.startswith(f"{stack.prefix}seq:"):
            sequences.append(key)
        elif text.startswith(f"{stack.prefix}history:polls:"):
            histories.append(key)
        elif text.startswith(stack.prefix + "{") and "}analysis:" in text:
            records.append(key)
        else:
            others.append(key)
    everything = [*sequences, *histories, *records, *others]
    pipe = kv.pipeline(transaction=False)
    for key in everything:
        pipe.memory_usage(key, samples=0)
    for key in histories:
        pipe.zcard(key)
    answers = [int(n or 0) for n in pipe.execute()]
    sizes, counts = answers[: len(everything)], answers[len(everything) :]
    bounds = [len(sequences), len(histories), len(records), len(others)]
    parts, start = [], 0
    for n in bounds:
        parts.append(sum(sizes[start : start + n]) / 1e6)
        start += n
    summaries = [
        len(json.loads(unpack(kv.hget(key, "state") or b"{}")).get("history") or [])
        for key in random.sample(sequences, min(SAMPLED, len(sequences)))
    ]
    return {
        "seq_mb": parts[0],
        "seq_fill": sum(summaries) / len(summaries) / HISTORY_KEPT if summaries else 0.0,
        # Live reports carry their sequence's summaries: analyses fill with the sequences.
        "records_mb": parts[2],
        "polls_mb": parts[1],
        "polls_fill": sum(counts) / len(counts) / MAX_POLLS if histories else 0.0,
        # Claims, latest pointers, rollout states, events, indexes, the queue...: per canary
        # or bounded, so flat once the first windows passed.
        "redis_rest_mb": parts[3],
    }


def snapshot(stack: Stack) -> dict[str, float]:
    info = stack.kv.info("memory")
    held = capped(stack)
    keys_mb = held["seq_mb"] + held["polls_mb"] + held["records_mb"] + held["redis_rest_mb"]
    return {
        "redis_used_mb": info["used_memory"] / 1e6,
        # Redis' own tables and the allocator's rounding: grows with the data held, not judged.
        "redis_overhead_mb": info["used_memory"] / 1e6 - keys_mb,
        **held,
        "redis_keys": float(stack.kv.dbsize()),
        # Connections the webhook's and workers' pools opened (they keep every one they opened).
        "redis_clients": float(stack.kv.info("clients")["connected_clients"]),
        "rss_webhook_mb": rss_mb(stack.webhook.pid or 0),
        **{f"rss_{w.name}_mb": rss_mb(w.pid or 0) for w in stack.workers},
    }


async def soak(stack: Stack) -> list[dict[str, Any]]:
    began = time.monotonic()
    stop_at = began + MINUTES * 60
    minutes: dict[int, Minute] = {}
    polls = [
        asyncio.create_task(rollout(i, stack.webhook.url, stop_at, minutes, began))
        for i in range(ROLLOUTS)
    ]
    report: list[dict[str, Any]] = []
    for n in range(1, int(MINUTES) + 1):
        await asyncio.sleep(max(0.0, began + n * 60 - time.monotonic()))
        done = minutes.get(n - 1, Minute())
        row = {
            "minute": n,
            "polls": len(done.latencies) + done.errors + done.timeouts,
            "errors": done.errors,
            "timeouts": done.timeouts,
            "statuses": done.statuses,
            "p50_ms": pct(done.latencies, 0.5) * 1000 if done.latencies else float("nan"),
            "p99_ms": pct(done.latencies, 0.99) * 1000 if done.latencies else float("nan"),
            "answer_kb": (
                sum(done.answer_bytes) / len(done.answer_bytes) / 1e3
                if done.answer_bytes
                else float("nan")
            ),
            **await asyncio.to_thread(snapshot, stack),
        }
        report.append(row)
        print(
            f"min {n:>2}: {row['polls']:>5} polls, {row['errors']} errors, "
            f"{row['timeouts']} timeouts, p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, "
            f"answers {row['answer_kb']:.1f} KB, "
            f"redis {row['redis_used_mb']:.1f} MB / {row['redis_keys']:.0f} keys "
            f"(sequences {row['seq_mb']:.1f} MB and analyses {row['records_mb']:.1f} MB, "
            f"{row['seq_fill']:.0%} of cap; poll histories {row['polls_mb']:.1f} MB, "
            f"{row['polls_fill']:.0%}; other keys {row['redis_rest_mb']:.1f} MB; "
            f"Redis' own {row['redis_overhead_mb']:.1f} MB; {row['redis_clients']:.0f} clients), "
            + ", ".join(f"{k[4:-3]} {v:.0f} MB" for k, v in row.items() if k.startswith("rss_")),
            flush=True,
        )
    await asyncio.gather(*polls)
    # Polls that began in the last minute but finished after its report.
    tail = minutes.get(int(MINUTES), Minute())
    if report:
        report[-1]["errors"] += tail.errors
        report[-1]["timeouts"] += tail.timeouts
    return report


def verdict(report: list[dict[str, Any]]) -> dict[str, Any]:
    errors = sum(r["errors"] for r in report)
    timeouts = sum(r["timeouts"] for r in report)
    reference = report[min(SETTLED, len(report)) - 1]
    last = report[-1]
    growth = {
        key: last[key] / reference[key]
        for key in last
        if key.endswith("_mb") and reference[key] > 0
    }
    # Sequences and poll histories fill to their caps over 20 and 120 polls (10 and 60 min at
    # 30 s), so Redis' total grows with them in a soak shorter than an hour: what must be flat
    # is the rest and the workers' RSS (the webhook's: once the sequences are full); they are
    # shown with their fill and size once full.
    flat = all(g <= FLAT for key, g in growth.items() if key not in (*FILLING, *WITH_ANSWERS))
    full_at = next(
        (r["minute"] for r in report if r["minute"] >= SETTLED and r["seq_fill"] >= FULL), None
    )
    since_full: dict[str, float] = {}
    if full_at is not None and last["minute"] - full_at >= SETTLED:
        at_full = report[full_at - 1]
        since_full = {key: last[key] / at_full[key] for key in WITH_ANSWERS if at_full[key] > 0}
    flat = flat and bool(since_full) and all(g <= FLAT for g in since_full.values())
    return {
        "errors": errors,
        "timeouts": timeouts,
        "p99_ms_worst_minute": max(r["p99_ms"] for r in report),
        f"growth_last_vs_minute_{SETTLED}": growth,
        "sequences_full_at_minute": full_at,
        # Empty: the run ended too soon after the sequences were full to judge the webhook.
        "growth_last_vs_sequences_full": since_full,
        "filling_to_a_cap": {
            name: {
                "fill": last[fill],
                "mb": last[f"{name}_mb"],
                "mb_when_full": last[f"{name}_mb"] / last[fill] if last[fill] else None,
            }
            for name, fill in (
                ("seq", "seq_fill"),
                ("records", "seq_fill"),
                ("polls", "polls_fill"),
            )
        },
        "flat": flat,
        "passed": errors == 0 and timeouts == 0 and flat,
    }


def main() -> int:
    print(
        f"soak: {ROLLOUTS} rollouts polling every {INTERVAL:g} s for {MINUTES:g} min "
        f"({ROLLOUTS / INTERVAL:.0f} polls/s)",
        flush=True,
    )
    # Production's reuse window (15 s): every 30 s poll of the latest window is a fresh analysis.
    with stack_running({"ROLLOUT_ANALYZER_REUSE_SECONDS": "15"}) as stack:
        report = asyncio.run(soak(stack))
    result: dict[str, Any] = {
        "rollouts": ROLLOUTS,
        "minutes": MINUTES,
        "interval_seconds": INTERVAL,
    }
    result |= {"per_minute": report, "verdict": verdict(report)}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    v = result["verdict"]
    growth = ", ".join(f"{k} x{g:.2f}" for k, g in v[f"growth_last_vs_minute_{SETTLED}"].items())
    full_at, since_full = v["sequences_full_at_minute"], v["growth_last_vs_sequences_full"]
    answers = (
        ", ".join(f"{k} x{g:.2f}" for k, g in since_full.items())
        if since_full
        else f"not judged: the sequences were full at minute {full_at or 'never'}, and the "
        f"webhook is judged over {SETTLED} minutes after that (SOAK_MINUTES >= "
        f"{HISTORY_KEPT * INTERVAL / 60 + SETTLED:g})"
    )
    print(
        f"errors {v['errors']}, timeouts {v['timeouts']}, worst p99 {v['p99_ms_worst_minute']:.1f} "
        f"ms; last minute vs minute {SETTLED}: {growth}; the webhook, which holds answers, vs "
        f"minute {full_at} (sequences full): {answers} (flat: <= x{FLAT:.2f}) -> "
        f"{'PASS' if v['passed'] else 'FAIL'}"
    )
    full = v["filling_to_a_cap"]
    print(
        "filling to a cap (size / fill, projected linearly to full): "
        + ", ".join(
            f"{name} {f['mb']:.1f} MB / {f['fill']:.0%} -> {f['mb_when_full'] or 0:.1f} MB"
            for name, f in full.items()
        )
    )
    return 0 if v["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
