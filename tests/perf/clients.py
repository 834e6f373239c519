"""How much row 2's ratio owes to the clients that time it.

`python -m tests.perf.clients` on the bench's stack: `make bench`'s rounds (ours, the naive ten
queries, the floor), two kinds taking turns. `bench`: its clients (httpx for ours; for the floor
prometheus-api-client, the naive baseline's library, and a redis-py ping). `lean`: `http.client`
on both sides, one write per request as Argo's Go client writes it (httpx writes the head and the
body apart), and the same ping. Prints each kind's p50s and ratio. Knob: CLIENT_ROUNDS (200 each).
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import time
import urllib.parse

from prometheus_api_client import PrometheusConnect

from analysis.policy import PolicySet
from tests.perf.bench import (
    Stack,
    body_for,
    call,
    expr_of,
    fresh_end,
    naive_seconds,
    stack_running,
)

ROUNDS = int(os.environ.get("CLIENT_ROUNDS", "200"))
WARM = 10
KINDS = ("bench", "lean")


def connection(url: str) -> http.client.HTTPConnection:
    parts = urllib.parse.urlsplit(url)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)


def measure(stack: Stack) -> dict[str, dict[str, list[float]]]:
    prom = PrometheusConnect(url=stack.prometheus.url, disable_ssl=True)
    policies = PolicySet.load(None)
    webhook, prometheus = connection(stack.webhook.url), connection(stack.prometheus.url)
    times: dict[str, dict[str, list[float]]] = {
        kind: {"ours": [], "naive": [], "floor": []} for kind in KINDS
    }
    for i in range(2 * (ROUNDS + WARM)):
        kind = KINDS[i % 2]
        end = fresh_end()
        body = body_for(i, "clients", end)
        if kind == "bench":
            ours, response = call(stack.http, body)
            assert response.status_code == 200, response.text
        else:
            began = time.perf_counter()
            webhook.request(
                "POST", "/v1/analyze", json.dumps(body), {"content-type": "application/json"}
            )
            answer = webhook.getresponse()
            answer.read()
            ours = time.perf_counter() - began
            assert answer.status == 200
        naive = naive_seconds(prom, body, end)
        expr = expr_of(body, policies)
        began = time.perf_counter()
        if kind == "bench":
            prom.custom_query(expr, params={"time": end})
        else:
            prometheus.request(
                "GET", "/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": end})
            )
            json.loads(prometheus.getresponse().read())
        stack.kv.ping()
        floor = time.perf_counter() - began
        if i >= 2 * WARM:
            for name, seconds in (("ours", ours), ("naive", naive), ("floor", floor)):
                times[kind][name].append(seconds)
    return times


def main() -> None:
    with stack_running() as stack:
        times = measure(stack)
    for kind, parts in times.items():
        p50 = {name: statistics.median(values) * 1000 for name, values in parts.items()}
        print(
            f"{kind:5s}: ours {p50['ours']:.2f} ms, floor {p50['floor']:.2f} ms "
            f"({p50['ours'] / p50['floor']:.2f}x), naive {p50['naive']:.2f} ms "
            f"({p50['ours'] / p50['naive']:.2f}x); {ROUNDS} rounds"
        )


if __name__ == "__main__":
    main()
