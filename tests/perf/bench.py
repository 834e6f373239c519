"""`make bench`: rollout-analyzer against the direct-PromQL baseline, on real parts, in one run.

Starts redis-server, Prometheus (backfilled with `tests.perf.dataset`), the webhook under uvicorn
and Celery workers, then measures fresh latency, round trips, dedup, a burst, cached polls (wrk),
memory and the scaling curve; prints one table and writes `.bench/results.json`.

Environment knobs: BENCH_WORKERS (worker processes, 2), BENCH_CONCURRENCY (threads each, 8),
BENCH_FRESH (fresh samples, 100), BENCH_BURST (burst size, 500), BENCH_CAP (query cap, 8).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import io
import json
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_api_client import PrometheusConnect

from analysis.policy import PolicySet
from analysis.queries import build_query
from analysis.request import parse_request, resolve
from tests.perf.cpu_reference import CpuReference
from tests.perf.dataset import NAMESPACE, SERVICES, start_prometheus
from tests.perf.instructions import count_worker_instructions
from tests.perf.loadgen import Result, post_all
from tests.perf.memory import measure_memory
from tests.perf.naive import naive_queries, run_naive
from tests.support.procs import PrometheusServer, RedisServer
from tests.support.scenarios import BASELINE_HASH, CANARY_HASH
from tests.support.service import Webhook, Worker, service_env
from worker.codec import unpack
from worker.keyspace import Keys

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / ".bench" / "results.json"
# One line a run, kept: the host's phases show only over many runs (docs/performance.md).
HISTORY = REPO / ".bench" / "history.jsonl"
ARGO_TIMEOUT_SECONDS = 10.0

WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
FRESH_SAMPLES = int(os.environ.get("BENCH_FRESH", "200"))
BURST = int(os.environ.get("BENCH_BURST", "500"))
CAP = int(os.environ.get("BENCH_CAP", "8"))
DEDUP_CALLS = 200
WRK_SECONDS = 5


# --- helpers ------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank, so p99 of 100 samples is the 99th."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q * len(ordered) + 0.5)))
    return ordered[rank - 1]


def ratio_interval(
    ours: list[float], base: list[float], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % bootstrap interval of p50(ours) / p50(base), rounds resampled in pairs (a round's
    two numbers share the host's moment): whether a ratio near its line is the code or the draw."""
    rng = random.Random(seed)
    n = len(ours)
    ratios = []
    for _ in range(resamples):
        picked = [rng.randrange(n) for _ in range(n)]
        ratios.append(pct([ours[i] for i in picked], 0.5) / pct([base[i] for i in picked], 0.5))
    return pct(ratios, 0.025), pct(ratios, 0.975)


def body_for(i: int, rollout: str, end: float | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "service": f"svc-{i % SERVICES:03d}",
        "namespace": NAMESPACE,
        "canary": CANARY_HASH,
        "baseline": BASELINE_HASH,
        "rollout": rollout,
    }
    if end is not None:
        body["end"] = f"{end:.3f}"
    return body


_end_counter = 0


def fresh_end() -> float:
    """A distinct end time 10 minutes back (ms apart), so no two calls share an analysis."""
    global _end_counter
    _end_counter += 1
    return round(time.time() - 600, 0) - _end_counter * 0.001


def ensure_tool(command: str, package: str) -> str:
    """The path of `command`, installed from Debian's `package` first if it is missing."""
    found = shutil.which(command)
    if found:
        return found
    print(f"{command} is missing: installing {package} from Debian (apt-get, as root)", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", package], check=True, env=env)
    return shutil.which(command) or command


def metric_value(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return float("nan")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a whole process (every thread) so far, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int, int]:
    """(all, idle, stolen) CPU ticks of the whole machine so far, every CPU, from /proc/stat.
    Idle counts iowait; stolen is time the hypervisor gave this VM's CPUs to other guests."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields), fields[3] + fields[4], fields[7]


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class HostShare:
    """How busy the machine was with other work over a span: the share of its CPU time stolen by
    the hypervisor, and the share used by processes outside the bench and its stack. A run on a
    busy host reads slower, our side more than the floor's (docs/performance.md)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.ticks = machine_ticks()
        self.ours = self._ours()

    def _ours(self) -> float:
        return sum(cpu_seconds(pid) for pid in self.pids) + own_cpu_seconds()

    def shares(self) -> dict[str, float]:
        total, idle, stolen = (b - a for a, b in zip(self.ticks, machine_ticks(), strict=True))
        if total <= 0:
            return {"stolen": 0.0, "others": 0.0}
        busy_seconds = (total - idle - stolen) / os.sysconf("SC_CLK_TCK")
        others = max(0.0, busy_seconds - (self._ours() - self.ours))
        return {"stolen": stolen / total, "others": others * os.sysconf("SC_CLK_TCK") / total}


class Sampler:
    """Calls `probe` every `interval` s on a thread; keeps the maximum seen."""

    def __init__(self, probe: Callable[[], float], interval: float) -> None:
        self.probe, self.interval = probe, interval
        self.peak = 0.0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self.probe())
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


# --- the stack ----------------------------------------------------------------------------------


class Stack:
    def __init__(self, work: Path, settings: dict[str, str] | None = None) -> None:
        self.work = work
        self.redis = RedisServer(work_dir=work / "redis").start()
        began = time.perf_counter()
        self.prometheus: PrometheusServer = start_prometheus(work / "prom")
        self.load_seconds = time.perf_counter() - began
        self.prefix = "ra:bench:"
        self.env = service_env(
            self.redis.url,
            prometheus_url=self.prometheus.url,
            key_prefix=self.prefix,
            queue="ra-bench",
            extra={
                # Long enough that the cached-poll run stays inside one reuse window.
                "ROLLOUT_ANALYZER_REUSE_SECONDS": "120",
                "ROLLOUT_ANALYZER_PROMETHEUS_MAX_CONCURRENT_QUERIES": str(CAP),
                **(settings or {}),
            },
        )
        self.workers = [
            Worker(self.env, work, pool="threads", concurrency=CONCURRENCY, name=f"w{i}").start()
            for i in range(WORKERS)
        ]
        self.webhook = Webhook(self.env, work).start()
        self.http = httpx.Client(base_url=self.webhook.url, timeout=ARGO_TIMEOUT_SECONDS)
        self.kv = redis.Redis.from_url(self.redis.url)

    def stop(self) -> None:
        self.http.close()
        self.kv.close()
        for proc in [self.webhook, *self.workers, self.prometheus, self.redis]:
            proc.stop()

    def promql_queries(self) -> float:
        return self.prometheus.http_requests_total("/api/v1/query")

    def analysis_records(self) -> int:
        return sum(1 for _ in self.kv.scan_iter(f"{self.prefix}{{*}}analysis:*", count=1000))


def call(http: httpx.Client, body: dict[str, Any]) -> tuple[float, httpx.Response]:
    began = time.perf_counter()
    response = http.post("/v1/analyze", json=body)
    return time.perf_counter() - began, response


def naive_of(body: dict[str, Any]) -> list[str]:
    """The ten queries Argo's built-in provider would send for this call's metrics."""
    return naive_queries(body["service"], NAMESPACE, CANARY_HASH, BASELINE_HASH)


def naive_seconds(prom: PrometheusConnect, body: dict[str, Any], end: float) -> float:
    """The naive baseline of one call: its ten queries, one after another (built untimed)."""
    queries = naive_of(body)
    began = time.perf_counter()
    run_naive(prom, queries, end)
    return time.perf_counter() - began


def expr_of(body: dict[str, Any], policies: PolicySet) -> str:
    """Our one PromQL expression for this call: the floor's query."""
    return build_query(resolve(parse_request(body), policies)).expr


async def call_many(url: str, bodies: list[dict[str, Any]]) -> list[Result]:
    """All calls at once, one connection each (as Argo's AnalysisRuns do)."""
    return await post_all(url, "/v1/analyze", bodies, ARGO_TIMEOUT_SECONDS)


# --- the measurements ---------------------------------------------------------------------------


def thread_client(url: str) -> Callable[[], PrometheusConnect]:
    local = threading.local()

    def get() -> PrometheusConnect:
        if not hasattr(local, "client"):
            local.client = PrometheusConnect(url=url, disable_ssl=True)
        return local.client

    return get


def measure_fresh(stack: Stack, samples: int) -> dict[str, Any]:
    """Items 1-2: ours through the webhook, the naive ten queries, and our floor, interleaved."""
    prom = PrometheusConnect(url=stack.prometheus.url, disable_ssl=True)
    policies = PolicySet.load(None)
    ours, naives, floor, references, failures = [], [], [], [], 0
    pids = {"webhook": stack.webhook.pid or 0, **{w.name: w.pid or 0 for w in stack.workers}}
    cpu_before: dict[str, float] = {}
    host = HostShare([])
    reference = CpuReference()
    for i in range(samples + 5):
        if i == 5:
            cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
            stack_pids = [*pids.values(), stack.redis.pid or 0, stack.prometheus.pid or 0]
            host = HostShare(stack_pids)
        end = fresh_end()
        body = body_for(i, "fresh", end)
        seconds, response = call(stack.http, body)
        failures += response.status_code != 200
        naive = naive_seconds(prom, body, end)
        expr = expr_of(body, policies)
        began = time.perf_counter()
        prom.custom_query(expr, params={"time": end})
        stack.kv.ping()
        floor_seconds = time.perf_counter() - began
        # In the pause before the next analysis, as the workers' CPU is spent after one.
        reference_seconds = reference.run_one()
        if i >= 5:  # the first few warm connections and caches up
            ours.append(seconds)
            naives.append(naive)
            floor.append(floor_seconds)
            references.append(reference_seconds)
    # CPU, not wall time: the workers' idle polling and heartbeats are counted in.
    cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in pids.items()}
    reference.close()
    return {
        "host": host.shares(),
        "samples": samples,
        "failures": failures,
        "webhook_cpu_per_analysis": cpu.pop("webhook") / samples,
        "worker_cpu_per_analysis": sum(cpu.values()) / samples,
        "reference_cpu_per_unit": sum(references) / len(references),
        "ours_p50": pct(ours, 0.5),
        "ours_p99": pct(ours, 0.99),
        "naive_p50": pct(naives, 0.5),
        "naive_p99": pct(naives, 0.99),
        "floor_p50": pct(floor, 0.5),
        "floor_p99": pct(floor, 0.99),
        "floor_ratio_interval": ratio_interval(ours, floor),
    }


def measure_live(stack: Stack, polls: int) -> dict[str, Any]:
    """Live polls as Argo sends them: no `end`, each service in turn, paced like item 2; every
    poll a new analysis that adds the time since its canary's previous poll to its sequence.
    (Item 6 needs a 120 s reuse window, so each round of polls names a new revision: a new
    analysis, the same sequence, which revisions do not split.)"""

    def live(i: int, round_: int) -> dict[str, Any]:
        return {**body_for(i, "live-poll"), "revision": str(round_)}

    for i in range(SERVICES):  # every canary's sequence begun
        call(stack.http, live(i, 0))
    time.sleep(1.1)  # past a whole second: each next poll adds time
    pids = {w.name: w.pid or 0 for w in stack.workers}
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    latencies: list[float] = []
    failures = sent_ahead = 0
    for k in range(polls):
        seconds, response = call(stack.http, live(k % SERVICES, 1 + k // SERVICES))
        failures += response.status_code != 200
        if response.status_code == 200:
            sent_ahead += bool((response.json().get("source") or {}).get("sent_ahead"))
        latencies.append(seconds)
        time.sleep(0.035)
    cpu = sum(cpu_seconds(pid) - before[name] for name, pid in pids.items())
    return {
        "polls": polls,
        "failures": failures,
        "sent_ahead": sent_ahead,
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        "worker_cpu_per_poll": cpu / polls,
    }


def redis_commands(kv: redis.Redis) -> int:
    return int(kv.info("stats")["total_commands_processed"])


def measure_round_trips(stack: Stack, analyses: int = 20) -> dict[str, float]:
    """Item 3: Prometheus' own request counter over analyses run alone; for the capacity model
    also Redis commands per analysis (Celery's included) and the bytes of one stored result."""
    before, commands_before = stack.promql_queries(), redis_commands(stack.kv)
    began = time.perf_counter()
    analysis_id = ""
    for i in range(analyses):
        _, response = call(stack.http, body_for(i, "trips", fresh_end()))
        assert response.status_code == 200, response.text
        analysis_id = response.headers["x-analysis-id"]
    elapsed = time.perf_counter() - began
    record_key = Keys(stack.prefix).record(analysis_id)
    return {
        "promql_per_analysis": (stack.promql_queries() - before) / analyses,
        # Idle workers and the webhook poll Redis too: that share is counted in, per analysis.
        "redis_commands_per_analysis": (redis_commands(stack.kv) - commands_before) / analyses,
        "sequential_seconds_per_analysis": elapsed / analyses,
        "stored_result_bytes": float(stack.kv.memory_usage(record_key) or 0),
        "result_json_bytes": float(len(unpack(stack.kv.hget(record_key, "result") or b""))),
    }


def measure_scaling(stack: Stack) -> dict[str, float]:
    """Item 8: fresh-analysis p50 with 1, 10 and 100 rollouts at once."""
    curve = {}
    for width, rounds in ((1, 20), (10, 3), (100, 1)):
        seconds: list[float] = []
        for _ in range(rounds):
            bodies = [body_for(i, f"scale-{width}", fresh_end()) for i in range(width)]
            results = asyncio.run(call_many(stack.webhook.url, bodies))
            seconds += [s for s, status, _ in results if status == 200]
        curve[str(width)] = pct(seconds, 0.5) if seconds else float("nan")
    return curve


def measure_dedup(stack: Stack) -> dict[str, Any]:
    """Item 4: 200 identical calls at once (the latest window: no `end`)."""
    body = body_for(0, f"dedup-{uuid.uuid4().hex[:8]}")
    queries_before, records_before = stack.promql_queries(), stack.analysis_records()
    results = asyncio.run(call_many(stack.webhook.url, [body] * DEDUP_CALLS))
    ids = {analysis_id for _, status, analysis_id in results if status == 200}
    return {
        "calls": DEDUP_CALLS,
        "ok": sum(status == 200 for _, status, _ in results),
        "computations": stack.analysis_records() - records_before,
        "distinct_analysis_ids": len(ids),
        "promql_queries": stack.promql_queries() - queries_before,
        "slowest_seconds": max(s for s, _, _ in results),
    }


def logged_refusals(stack: Stack, most: int = 3) -> list[str]:
    """Distinct warnings of the webhook's log (its store errors say what Redis did)."""
    seen: list[str] = []
    for line in stack.webhook.logs().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") == "warning":
            text = f"{entry.get('message')}: {entry.get('error', '')}"[:200]
            if text not in seen:
                seen.append(text)
    return seen[:most]


def measure_burst(stack: Stack) -> dict[str, Any]:
    """Items 5, 7, 9: BURST distinct rollouts at once, memory and Prometheus' in-flight gauge."""
    run = uuid.uuid4().hex[:6]
    bodies = [body_for(i, f"burst-{run}-{i}") for i in range(BURST)]
    prom_url = stack.prometheus.url
    in_flight = Sampler(lambda: metric_value(prom_url, "prometheus_engine_queries"), 0.01)
    webhook_pid = stack.webhook.pid or 0
    rss = {
        "webhook": Sampler(lambda: rss_mb(webhook_pid), 0.1),
        **{w.name: Sampler(functools.partial(rss_mb, w.pid or 0), 0.1) for w in stack.workers},
    }
    queries_before = stack.promql_queries()
    worker_pids = [w.pid or 0 for w in stack.workers]
    cpu_before = sum(cpu_seconds(pid) for pid in worker_pids)
    with contextlib.ExitStack() as running:
        running.enter_context(in_flight)
        for sampler in rss.values():
            running.enter_context(sampler)
        began = time.perf_counter()
        results = asyncio.run(call_many(stack.webhook.url, bodies))
        wall = time.perf_counter() - began
    worker_cpu = sum(cpu_seconds(pid) for pid in worker_pids) - cpu_before
    statuses = [status for _, status, _ in results]
    ok = [s for s, status, _ in results if status == 200]
    return {
        "analyses": BURST,
        # Back to back, as under load: the same work with warm caches and no idle wake-ups.
        "worker_cpu_per_analysis": worker_cpu / max(1, len(ok)),
        "wall_seconds": wall,
        # Only answered analyses count: a quick 503 is no throughput.
        "throughput": len(ok) / wall,
        "ok": len(ok),
        "errors": sum(status not in (200, "timeout") for status in statuses),
        "timeouts": statuses.count("timeout"),
        "status_counts": {str(k): statuses.count(k) for k in set(statuses)},
        # What the webhook logged for the refusals (a "503 store" may be a lost connection, a
        # timed-out reply or a pool with no connection free): the first few distinct ones.
        "refusals_logged": logged_refusals(stack) if len(ok) < BURST else [],
        "p50": pct(ok, 0.5) if ok else float("nan"),
        "p99": pct(ok, 0.99) if ok else float("nan"),
        "promql_queries": stack.promql_queries() - queries_before,
        "prometheus_in_flight_max": in_flight.peak,
        "in_flight_samples": in_flight.samples,
        "rss_peak_mb": {name: sampler.peak for name, sampler in rss.items()},
        "rss_hwm_mb": {
            "webhook": rss_mb(webhook_pid, "VmHWM"),
            **{w.name: rss_mb(w.pid or 0, "VmHWM") for w in stack.workers},
        },
    }


def measure_naive_burst(stack: Stack) -> dict[str, Any]:
    """Item 5's baseline: the same analyses as ten direct queries each, on as many threads as
    our workers have."""
    threads = WORKERS * CONCURRENCY
    client = thread_client(stack.prometheus.url)
    end = time.time()

    def one(i: int) -> None:
        body = body_for(i, "naive")
        run_naive(client(), naive_of(body), end)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(min(threads, BURST))))  # connections up, as ours are
        began = time.perf_counter()
        list(pool.map(one, range(BURST)))
        wall = time.perf_counter() - began
    return {"threads": threads, "wall_seconds": wall, "throughput": BURST / wall}


def wrk(url: str, connections: int = 32) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{WRK_SECONDS}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "rps": float(rps.group(1)) if rps else float("nan"),
        "non_2xx": float(bad.group(1)) if bad else 0.0,
        "socket_errors": 1.0 if errors else 0.0,
    }


def measure_cached(stack: Stack) -> dict[str, Any]:
    """Item 6: a repeated poll inside the reuse window (Argo's default GET) vs /healthz."""
    body = body_for(1, f"cached-{uuid.uuid4().hex[:6]}")
    url = f"{stack.webhook.url}/v1/analyze?" + "&".join(f"{k}={v}" for k, v in body.items())
    first = httpx.get(url, timeout=ARGO_TIMEOUT_SECONDS)
    assert first.status_code == 200, first.text
    queries_before = stack.promql_queries()
    cached = wrk(url)
    queries = stack.promql_queries() - queries_before
    trivial = wrk(f"{stack.webhook.url}/healthz")
    return {"cached": cached, "healthz": trivial, "promql_queries_during": queries}


def tracing_overhead() -> str | None:
    """Someone else's measurement (tests/perf/tracing_overhead.py), when it exists."""
    if importlib.util.find_spec("tests.perf.tracing_overhead") is None:
        return None
    from tests.perf import tracing_overhead as module

    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            module.main()
    except Exception as exc:  # a broken extra row must not lose the rest of the table
        return f"failed: {type(exc).__name__}: {str(exc)[:80]}"
    lines = printed.getvalue().strip().splitlines()
    return lines[-1] if lines else ""


def chat_outage() -> dict[str, Any] | str:
    """Every chat target answering 429 during a burst (tests/perf/chat_outage.py)."""
    from tests.perf import chat_outage as module

    try:
        return module.main()
    except Exception as exc:  # a broken extra row must not lose the rest of the table
        return f"failed: {type(exc).__name__}: {str(exc)[:80]}"


# --- the table ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def rows(r: dict[str, Any]) -> list[tuple[str, str, str, str, str, bool | None]]:
    """(figure, ours, baseline, ratio, target, met)."""
    f, b, nb, d, c = r["fresh"], r["burst"], r["naive_burst"], r["dedup"], r["cached"]
    out: list[tuple[str, str, str, str, str, bool | None]] = []

    def add(name: str, ours: str, base: str, ratio: float | None, target: str, met: bool | None):
        out.append((name, ours, base, "" if ratio is None else f"{ratio:.2f}x", target, met))

    add(
        "1. fresh analysis p50 (vs naive 10 queries)",
        ms(f["ours_p50"]),
        ms(f["naive_p50"]),
        f["ours_p50"] / f["naive_p50"],
        "<= 0.5x",
        f["ours_p50"] / f["naive_p50"] <= 0.5,
    )
    add(
        "1. fresh analysis p99 (vs naive 10 queries)",
        ms(f["ours_p99"]),
        ms(f["naive_p99"]),
        f["ours_p99"] / f["naive_p99"],
        "<= 1.0x",
        f["ours_p99"] / f["naive_p99"] <= 1.0,
    )
    add(
        "2. fresh p50 vs floor (our PromQL + 1 Redis trip)",
        ms(f["ours_p50"]),
        ms(f["floor_p50"]),
        f["ours_p50"] / f["floor_p50"],
        "<= 2x",
        f["ours_p50"] / f["floor_p50"] <= 2,
    )
    low, high = f["floor_ratio_interval"]
    add(
        "2. the ratio's 95 % interval (bootstrap of the rounds)",
        f"{low:.2f}x - {high:.2f}x",
        "",
        None,
        "",
        None,
    )
    if "host" in f:
        add(
            "2. the host during 1-2: CPU stolen by the hypervisor / used outside the bench",
            f"{f['host']['stolen']:.1%} / {f['host']['others']:.1%}",
            "",
            None,
            "",
            None,
        )
    add(
        "2. worker CPU per fresh analysis (/proc, all workers)",
        ms(f["worker_cpu_per_analysis"]),
        "",
        None,
        "<= 5 ms",
        f["worker_cpu_per_analysis"] <= 0.005,
    )
    if "reference_cpu_per_unit" in f:
        # The host's speed, read in the same pauses: fixed work in a process of its own.
        add(
            "2. worker CPU per fresh analysis vs the same run's CPU reference (fixed work)",
            ms(f["worker_cpu_per_analysis"]),
            f"{f['reference_cpu_per_unit'] * 1000:.2f} ms",
            f["worker_cpu_per_analysis"] / f["reference_cpu_per_unit"],
            "",
            None,
        )
    if "instructions" in r:
        counted = r["instructions"]["per_analysis"]
        add(
            "2. worker instructions per fresh analysis (callgrind: the host cannot move it)",
            f"{counted / 1e6:.3f} M",
            "",
            None,
            "",
            None,
        )
        add(
            "2. the host's speed: worker CPU per fresh analysis / its instructions",
            f"{f['worker_cpu_per_analysis'] / counted * 1e9:.3f} ns",
            "",
            None,
            "",
            None,
        )
    add(
        "2. worker CPU per analysis in the burst of item 5 (/proc)",
        ms(b["worker_cpu_per_analysis"]),
        "",
        None,
        "",
        None,
    )
    if "live" in r:
        live = r["live"]
        # Not a target of issue 14 (its rows are read on fixed windows): Argo's own path.
        live_failed = f" ({live['failures']} failed)" if live["failures"] else ""
        add(
            "2. live poll p50, as Argo polls (no end; vs item 2's floor)",
            ms(live["p50"]) + live_failed,
            ms(f["floor_p50"]),
            live["p50"] / f["floor_p50"],
            "",
            None,
        )
        add(
            "2. worker CPU per live poll (/proc, all workers)",
            ms(live["worker_cpu_per_poll"]),
            "",
            None,
            "",
            None,
        )
    add(
        "2. webhook CPU per fresh analysis (/proc)",
        ms(f["webhook_cpu_per_analysis"]),
        "",
        None,
        "",
        None,
    )
    trips = r["round_trips"]["promql_per_analysis"]
    add("3. PromQL round trips per analysis", f"{trips:.2f}", "10", trips / 10, "<= 2", trips <= 2)
    add(
        f"4. dedup: {d['calls']} identical calls -> computations",
        str(d["computations"]),
        str(d["calls"]),
        None,
        "== 1",
        d["computations"] == 1 and d["distinct_analysis_ids"] == 1,
    )
    add(
        "4. dedup: PromQL queries / slowest answer",
        f"{d['promql_queries']:.0f} / {d['slowest_seconds']:.2f} s",
        "",
        None,
        "all 200 OK in 10 s",
        d["ok"] == d["calls"] and d["slowest_seconds"] < 10,
    )
    add(
        f"5. burst of {b['analyses']}: completion time",
        f"{b['wall_seconds']:.2f} s",
        f"{nb['wall_seconds']:.2f} s",
        None,
        "",
        None,
    )
    # What the failures were, when there are any (a status code, or the client's error).
    failed = {k: n for k, n in b.get("status_counts", {}).items() if k != "200"}
    for refusal in b.get("refusals_logged", []):
        print(f"burst refusal logged by the webhook: {refusal}")
    add(
        "5. burst: errors / timeouts (Argo 10 s)",
        f"{b['errors']} / {b['timeouts']}" + (f" {failed}" if b["errors"] else ""),
        "",
        None,
        "0 / 0",
        b["errors"] == 0 and b["timeouts"] == 0,
    )
    add(
        f"5. burst throughput (vs {nb['threads']} threads direct)",
        f"{b['throughput']:.1f}/s",
        f"{nb['throughput']:.1f}/s",
        b["throughput"] / nb["throughput"],
        ">= 2x",
        b["throughput"] / nb["throughput"] >= 2,
    )
    add("5. burst latency p50 / p99", f"{ms(b['p50'])} / {ms(b['p99'])}", "", None, "", None)
    ratio = c["cached"]["rps"] / c["healthz"]["rps"]
    add(
        "6. cached poll rps (wrk, vs /healthz)",
        f"{c['cached']['rps']:.0f}",
        f"{c['healthz']['rps']:.0f}",
        ratio,
        ">= 0.5x",
        ratio >= 0.5 and c["cached"]["non_2xx"] == 0,
    )
    hwm = b["rss_hwm_mb"]
    add(
        "7. peak RSS webhook",
        f"{hwm['webhook']:.0f} MB",
        "",
        None,
        "<= 120 MB",
        hwm["webhook"] <= 120,
    )
    for name in sorted(k for k in hwm if k != "webhook"):
        add(
            f"7. peak RSS worker {name}",
            f"{hwm[name]:.0f} MB",
            "",
            None,
            "<= 200 MB",
            hwm[name] <= 200,
        )
    s = r["scaling"]
    add(
        "8. fresh p50 at 1 / 10 / 100 rollouts",
        " / ".join(ms(s[k]) for k in ("1", "10", "100")),
        "",
        None,
        "",
        None,
    )
    add(
        f"9. Prometheus queries in flight during 5 (cap {CAP})",
        f"{b['prometheus_in_flight_max']:.0f}",
        "",
        None,
        f"<= {CAP}",
        b["prometheus_in_flight_max"] <= CAP,
    )
    m = r["memory"]
    add(
        f"10. Redis bytes per canary (+ at caps) / per further poll ({m['analyses']} polls)",
        f"{m['bytes_per_canary']:.0f} B (+ {m['sequence_bytes_at_cap']} B sequence"
        f" + {m['poll_history_bytes_at_cap']:.0f} B history"
        f" + {m['latest_record_growth_to_cap']:.0f} B latest) / "
        f"{round(m['bytes_per_poll_kept'])} B",  # an int: a delta of -0.2 B reads 0, not -0
        f"{m['record_bytes']} B",
        None,
        "",
        None,
    )
    add(
        "10. Redis for 10,000 rollouts / 30 s / 24 h (extrapolated)",
        f"{m['extrapolated_bytes'] / 1e9:.2f} GB",
        f"{m['keep_every_poll_bytes'] / 1e9:.0f} GB",
        m["extrapolated_bytes"] / m["keep_every_poll_bytes"],
        "<= 4 GB",
        m["extrapolated_bytes"] <= 4e9,
    )
    chat = r.get("chat_outage")
    if isinstance(chat, dict):
        add(
            f"11. chat 429 during a burst of {chat['burst']}: p99 (vs healthy chat)",
            ms(chat["outage_p99"]),
            ms(chat["healthy_p99"]),
            chat["ratio"],
            "<= 1.2x, 0 errors",
            chat["ratio"] <= 1.2 and chat["outage_errors"] == 0,
        )
    elif chat is not None:
        add("11. chat 429 during a burst", str(chat), "", None, "<= 1.2x, 0 errors", False)
    if r.get("tracing_overhead") is not None:
        add(
            "tracing overhead (tests/perf/tracing_overhead.py)",
            r["tracing_overhead"],
            "",
            None,
            "",
            None,
        )
    return out


def render(table: list[tuple[str, str, str, str, str, bool | None]]) -> str:
    head = ("figure", "ours", "baseline", "ratio", "target", "met")
    lines = [[*row[:5], "" if row[5] is None else ("yes" if row[5] else "NO")] for row in table]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines, strict=True)]

    def fmt(cells: list[str] | tuple[str, ...]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), sep, *(fmt(line) for line in lines)])


@contextlib.contextmanager
def stack_running(settings: dict[str, str] | None = None) -> Iterator[Stack]:
    work = Path(tempfile.mkdtemp(prefix="ra-bench-"))
    stack = Stack(work, settings)
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


def code_version() -> str:
    """The commit measured, `+changes` when the tree differs from it; `unknown` without git."""
    try:
        run = functools.partial(
            subprocess.run, cwd=REPO, capture_output=True, text=True, check=True
        )
        commit = run(["git", "rev-parse", "--short", "HEAD"]).stdout.strip()
        changed = run(["git", "status", "--porcelain", "--untracked-files=no"]).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+changes" if changed else "")


def append_history(path: Path, results: dict[str, Any], version: str) -> None:
    """One line for this run: when, which code, the host, and the table's rows."""
    line = {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "code": version,
        "host": results.get("fresh", {}).get("host"),
        "reference_cpu_per_unit": results.get("fresh", {}).get("reference_cpu_per_unit"),
        "table": results.get("table", []),
    }
    path.parent.mkdir(exist_ok=True)
    with path.open("a") as history:
        history.write(json.dumps(line, default=str) + "\n")


def main() -> int:
    began = time.perf_counter()
    ensure_tool("wrk", "wrk")
    ensure_tool("valgrind", "valgrind")
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "setup": {
            "services": SERVICES,
            "worker_processes": WORKERS,
            "threads_per_worker": CONCURRENCY,
            "query_cap": CAP,
        },
    }
    with stack_running() as stack:
        results["setup"]["prometheus_load_seconds"] = round(stack.load_seconds, 2)
        print(f"stack up ({time.perf_counter() - began:.1f} s); measuring…", flush=True)
        results["fresh"] = measure_fresh(stack, FRESH_SAMPLES)
        results["live"] = measure_live(stack, FRESH_SAMPLES)
        results["round_trips"] = measure_round_trips(stack)
        results["scaling"] = measure_scaling(stack)
        results["dedup"] = measure_dedup(stack)
        results["burst"] = measure_burst(stack)
        results["naive_burst"] = measure_naive_burst(stack)
        results["cached"] = measure_cached(stack)
        print("instructions: one worker under callgrind…", flush=True)
        results["instructions"] = count_worker_instructions(
            stack.env, stack.work, lambda i, label: body_for(i, label, fresh_end())
        )
        print("memory: 5,000 analyses on a stack of their own…", flush=True)
        results["memory"] = measure_memory(stack.prometheus.url, stack.work, body_for)
    results["tracing_overhead"] = tracing_overhead()
    results["chat_outage"] = chat_outage()
    table = rows(results)
    head = ("figure", "ours", "baseline", "ratio", "target", "met")
    results["table"] = [dict(zip(head, row, strict=True)) for row in table]
    results["total_seconds"] = round(time.perf_counter() - began, 1)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2, default=str))
    append_history(HISTORY, results, code_version())
    print(render(table))
    print(
        f"\n{results['total_seconds']} s in all; JSON in {RESULTS.relative_to(REPO)},"
        f" a line added to {HISTORY.relative_to(REPO)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
