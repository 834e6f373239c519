"""The core path on real parts: HTTP → webhook → Redis → Celery worker → Prometheus → verdict."""

from __future__ import annotations

import concurrent.futures
import json
import math
import time
from typing import cast
from urllib.parse import urlencode

import httpx
import pytest
import redis

from tests.integration.conftest import AUTH, TOKEN
from tests.support.argo import WebProvider, measure
from tests.support.procs import wait_for
from tests.support.proxy import FaultyProxy
from worker import codec
from worker.keyspace import Keys

POLICIES = """
policies:
  istio:
    preset: istio
  live:
    preset: http
  otel:
    preset: otel
"""


def core_stack(make, prometheus, tmp_path_factory):
    """The stack these tests run on, from a stack factory (other modules run them again on
    theirs: a Redis Cluster, a lossy proxy)."""
    policies = tmp_path_factory.mktemp("policies") / "policies.yaml"
    policies.write_text(POLICIES)
    return make(
        "core",
        prometheus_url=prometheus.url,
        settings={
            "ROLLOUT_ANALYZER_POLICIES_FILE": str(policies),
            "ROLLOUT_ANALYZER_REUSE_SECONDS": "2",
        },
    )


@pytest.fixture(scope="module")
def stack(stack_factory, prometheus, tmp_path_factory):
    return core_stack(stack_factory, prometheus, tmp_path_factory)


def body_for(prometheus, name: str, **extra) -> dict:
    scenario = prometheus.scenarios[name]
    canary = scenario.canary.selector if scenario.canary else "6d4f8b7c9a"
    baseline = scenario.baseline.selector if scenario.baseline else "5c8d7e6f4b"
    body = {
        "service": scenario.service,
        "namespace": scenario.namespace,
        "canary": canary,
        "baseline": baseline,
        "rollout": scenario.service,
    }
    if scenario.preset != "http":
        body["policy"] = scenario.preset
    return body | extra


def pinned_end(offset: float = 120) -> str:
    """An `end` inside the backfilled data, unique per call so no reuse window applies."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - offset)) + (
        f".{time.time_ns() % 1_000_000_000 // 1_000_000:03d}Z"
    )


SCENARIO_NAMES = [
    "good", "errors", "latency", "tail", "low-traffic", "no-canary", "no-baseline", "degrades",
    "istio-good", "istio-errors", "otel-good", "otel-errors", "otel-no-canary",
]  # fmt: skip


@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_every_scenario_gets_its_verdict(stack, prometheus, name):
    with stack.client() as client:
        answer = client.post("/v1/analyze", json=body_for(prometheus, name))
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["verdict"] == prometheus.scenarios[name].expected_verdict, result["reasons"]
    assert result["reasons"] and all(isinstance(r, str) for r in result["reasons"])
    assert "NaN" not in answer.text and "Infinity" not in answer.text
    assert result["source"]["round_trips"] == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("name", SCENARIO_NAMES)
def test_argo_sees_the_expected_phase(stack, prometheus, name, method):
    """Through the emulator of Argo's web provider: GET with query parameters (Argo's default)
    and POST with jsonBody, jsonPath {$.verdict}, the usual conditions, 10 s timeout."""
    payload = body_for(prometheus, name)
    if method == "GET":
        web = WebProvider(url=f"{stack.url}/v1/analyze?{urlencode(payload)}", method="GET")
    else:
        web = WebProvider(url=f"{stack.url}/v1/analyze", method="POST", json_body=payload)
    web.headers = [("Authorization", f"Bearer {TOKEN}")]
    web.json_path = "{$.verdict}"
    web.timeout_seconds = 10
    with httpx.Client() as client:
        measurement = measure(client, web, 'result == "pass"', 'result == "fail"')
    assert measurement.phase.value == prometheus.scenarios[name].expected_phase, measurement


def test_the_answer_has_every_documented_field(stack, prometheus):
    with stack.client() as client:
        body = body_for(prometheus, "errors", end=pinned_end())
        result = client.post("/v1/analyze", json=body).json()
    assert set(result) >= {
        "verdict", "score", "analysis_id", "reasons", "window", "requests", "metrics", "checks",
    }  # fmt: skip
    assert set(result["window"]) >= {"start", "end"}
    assert set(result["requests"]) == {"canary", "baseline"}
    assert set(result["metrics"]["latency_seconds"]) == {"p50", "p90", "p95", "p99"}
    assert set(result["metrics"]["error_budget"]) == {
        "slo", "burn_canary", "burn_baseline", "burn_delta", "excess_errors", "budget_delta",
    }  # fmt: skip
    regression = next(c for c in result["checks"] if c["name"] == "success_rate.regression")
    assert regression["verdict"] == "fail" and regression["p_value"] < 1e-6
    assert {"canary", "baseline", "limit", "p_value"} <= set(regression)
    assert 4000 < result["requests"]["canary"] < 6000


def test_missing_values_are_null_not_nan(stack, prometheus):
    with stack.client() as client:
        result = client.post("/v1/analyze", json=body_for(prometheus, "no-canary")).json()
    assert result["verdict"] == "inconclusive"
    assert result["metrics"]["success_rate"]["canary"] is None
    assert result["metrics"]["latency_seconds"]["p99"]["canary"] is None


@pytest.mark.parametrize("name", ["good", "latency", "tail", "istio-good"])
def test_quantiles_equal_prometheus_histogram_quantile(stack, prometheus, name):
    scenario = prometheus.scenarios[name]
    end = time.time() - 90
    body = body_for(prometheus, name, end=str(end))
    with stack.client() as client:
        result = client.post("/v1/analyze", json=body).json()
    metric = "istio_request_duration_milliseconds_bucket" if scenario.preset == "istio" else None
    metric = metric or "http_request_duration_seconds_bucket"
    labels = (
        f'destination_workload="{scenario.service}",destination_workload_namespace="shop",'
        'reporter="destination"'
        if scenario.preset == "istio"
        else f'service="{scenario.service}",namespace="shop"'
    )
    scale = 0.001 if scenario.preset == "istio" else 1.0
    for side in ("canary", "baseline"):
        selector = getattr(scenario, side).selector
        for label, q in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95), ("p99", 0.99)):
            series = f'{metric}{{{labels},rollouts_pod_template_hash="{selector}"}}'
            # The same bucket vector as ours: the counters now minus 5 minutes ago.
            expr = (
                f"histogram_quantile({q}, sum by (le) ({series}) - "
                f"sum by (le) ({series} offset 5m))"
            )
            answer = httpx.get(
                f"{prometheus.url}/api/v1/query", params={"query": expr, "time": end}
            ).json()
            theirs = float(answer["data"]["result"][0]["value"][1]) * scale
            ours = result["metrics"]["latency_seconds"][label][side]
            assert math.isclose(ours, theirs, rel_tol=1e-9), (side, label, ours, theirs)


def test_one_promql_round_trip_per_analysis(stack, prometheus):
    before = prometheus.http_requests_total("/api/v1/query")
    with stack.client() as client:
        for i in range(3):
            assert (
                client.post(
                    "/v1/analyze", json=body_for(prometheus, "good", end=pinned_end(100 + i))
                ).status_code
                == 200
            )
    assert prometheus.http_requests_total("/api/v1/query") - before == 3


def test_fifty_concurrent_identical_calls_share_one_computation(stack, prometheus):
    body = body_for(prometheus, "errors", end=pinned_end())
    before = prometheus.http_requests_total("/api/v1/query")
    with stack.client() as client, concurrent.futures.ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/analyze", json=body), range(50)))
    assert {a.status_code for a in answers} == {200}
    assert len({a.json()["analysis_id"] for a in answers}) == 1
    assert prometheus.http_requests_total("/api/v1/query") - before == 1


def test_a_repeat_within_the_reuse_window_is_the_same_analysis_then_a_fresh_one(stack, prometheus):
    body = body_for(prometheus, "good")  # the latest window: what Argo polls
    with stack.client() as client:
        first = client.get("/v1/analyze", params=body).json()["analysis_id"]
        assert client.get("/v1/analyze", params=body).json()["analysis_id"] == first
        time.sleep(2.5)  # the stack's reuse window is 2 s
        later = client.get("/v1/analyze", params=body).json()
    assert later["analysis_id"] != first
    assert later["verdict"] == "pass"


def test_stored_result_is_readable_by_id(stack, prometheus):
    with stack.client() as client:
        result = client.post("/v1/analyze", json=body_for(prometheus, "latency")).json()
        stored = client.get(f"/v1/analyses/{result['analysis_id']}")
        assert stored.status_code == 200
        assert stored.json()["result"]["verdict"] == result["verdict"]
        assert client.get("/v1/analyses/" + "0" * 32).status_code == 404
        assert client.get("/v1/analyses/..%2F..%2Fetc").status_code in (404, 422)
        assert client.get("/v1/analyses/ABC").json()["field"] == "analysis_id"


def test_a_corrupt_stored_result_is_named_never_a_server_error(stack, prometheus):
    """The result is packed in Redis (worker/codec.py); one that cannot be read is answered
    as what it is: the record with the field null and named, a 503 for Argo, a page saying so."""
    kv = redis.Redis.from_url(stack.env["ROLLOUT_ANALYZER_REDIS_URL"])
    body = body_for(prometheus, "errors", end=pinned_end())  # an analysis of its own
    with stack.client() as client:
        analysis_id = client.post("/v1/analyze", json=body).json()["analysis_id"]
        record, claim = Keys("ra:core:").record(analysis_id), None
        try:
            claim = kv.hget(record, "claim")
            assert claim is not None
            kv.pexpire(claim, 60_000)  # a reuse window long enough for this test
            assert cast(bytes, kv.hget(record, "result")).startswith(codec.MARK)
            kv.hset(record, "result", codec.MARK + b"\x78\x01 cut short")
            stored = client.get(f"/v1/analyses/{analysis_id}")
            assert stored.status_code == 200, stored.text
            assert (stored.json()["status"], stored.json()["result"]) == ("done", None)
            assert "stored value is corrupt" in stored.json()["unreadable"]["result"]
            again = client.post("/v1/analyze", json=body)  # the same analysis, claimed again
            assert again.status_code == 503 and again.json()["field"] == "store"
            assert again.json()["analysis_id"] == analysis_id
            shown = client.get(f"/ui/analyses/{analysis_id}")
            assert shown.status_code == 200 and "result of this analysis cannot be read" in (
                shown.text
            )
            # Readable, but not a result: no verdict to answer Argo with.
            kv.hset(record, "result", codec.pack(codec.dumps({"summary": "no verdict"})))
            again = client.post("/v1/analyze", json=body)
            assert again.status_code == 503 and again.json()["field"] == "store", again.text
        finally:
            if claim:
                kv.delete(claim)
            kv.close()


HOSTILE = [
    '"} or vector(1)',
    'x"}[5m]) or up{a="',
    "a\nb",
    "{}",
    "x" * 10_000,
    "ch\u0435ckout",
]  # Cyrillic e


@pytest.mark.parametrize(
    "field", ["service", "namespace", "canary", "baseline", "rollout", "revision"]
)
def test_hostile_values_are_rejected_before_any_query(stack, prometheus, field):
    body = body_for(prometheus, "good")
    before = len(prometheus.queries())
    with stack.client() as client:
        for value in HOSTILE:
            answer = client.post("/v1/analyze", json=body | {field: value})
            assert answer.status_code == 422, answer.text
            assert answer.json()["field"] == field
            query = client.get("/v1/analyze", params=body | {field: value})
            assert query.status_code == 422 and query.json()["field"] == field
    time.sleep(0.5)
    assert len(prometheus.queries()) == before
    assert "vector(1)" not in json.dumps(prometheus.queries())


@pytest.mark.parametrize(
    ("patch", "status", "field"),
    [
        ({"policy": "nope"}, 422, "policy"),
        ({"window": "5 min"}, 422, "window"),
        ({"window": "30d"}, 422, "window"),
        ({"end": "2999-01-01T00:00:00Z"}, 422, "end"),
        ({"overrides": {"nope": 1}}, 422, "overrides.nope"),
        ({"overrides": {"slo": "high"}}, 422, "overrides.slo"),
        # Loosening a gate: the policy decides how far a request may go (analysis/gates.py).
        ({"overrides": {"min_requests": 1}}, 422, "overrides.min_requests"),
        ({"overrides": {"pass_score": 0}}, 422, "overrides.pass_score"),
        ({"overrides": {"slo": 0.5}}, 422, "overrides.slo"),
        ({"service": None}, 422, "service"),
        ({"unknown": 1}, 422, "unknown"),
    ],
)
def test_bad_input_names_the_field(stack, prometheus, patch, status, field):
    body = {k: v for k, v in (body_for(prometheus, "good") | patch).items() if v is not None}
    with stack.client() as client:
        answer = client.post("/v1/analyze", json=body)
    assert answer.status_code == status
    assert answer.json()["field"] == field
    assert "Traceback" not in answer.text


def test_a_request_may_tighten_a_gate_but_not_loosen_it(stack, prometheus):
    body = body_for(prometheus, "good")
    with stack.client() as client:
        looser = client.post("/v1/analyze", json=body | {"overrides": {"slo": 0.99}})
        stricter = client.post("/v1/analyze", json=body | {"overrides": {"min_requests": 500}})
    assert looser.status_code == 422
    assert looser.json()["field"] == "overrides.slo"
    assert "must be at least 0.999" in looser.json()["message"]
    assert stricter.status_code == 200 and stricter.json()["verdict"] == "pass"


def test_malformed_and_oversized_bodies(stack):
    with stack.client() as client:
        assert client.post("/v1/analyze", content=b"{not json").status_code == 400
        assert client.post("/v1/analyze", content=b"[1, 2]").json()["field"] == "body"
        deep = b"[" * 100_000 + b"]" * 100_000
        assert client.post("/v1/analyze", content=deep).status_code == 413
        nested = b'{"a":' * 5000 + b"1" + b"}" * 5000
        assert client.post("/v1/analyze", content=nested).status_code in (400, 422)
        big = {"service": "x" * 70_000}
        assert client.post("/v1/analyze", json=big).status_code == 413

        def chunks():
            for _ in range(100):
                yield b" " * 1024

        assert client.post("/v1/analyze", content=chunks()).status_code == 413


def test_every_v1_route_needs_the_token(stack, prometheus):
    body = body_for(prometheus, "good")
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": AUTH["Authorization"][:-1]},
    ):
        with httpx.Client(base_url=stack.url, headers=headers, timeout=10) as client:
            assert client.post("/v1/analyze", json=body).status_code == 401
            assert client.get("/v1/analyze", params=body).status_code == 401
            assert client.get("/v1/analyses/" + "0" * 32).status_code == 401
    assert httpx.get(f"{stack.url}/healthz").status_code == 200


def test_metrics_logs_and_openapi(stack, prometheus):
    with stack.client() as client:
        client.post("/v1/analyze", json=body_for(prometheus, "errors"))
    text = httpx.get(f"{stack.url}/metrics").text
    for name in (
        "rollout_analyzer_http_requests_total",
        "rollout_analyzer_verdicts_served_total",
        "rollout_analyzer_dedup_hits_total",
        "rollout_analyzer_analysis_duration_seconds_bucket",
        "rollout_analyzer_queue_wait_seconds_bucket",
    ):
        assert name in text
    openapi = httpx.get(f"{stack.url}/openapi.json").json()
    assert {"/v1/analyze", "/v1/analyses/{analysis_id}", "/readyz"} <= set(openapi["paths"])
    lines = [json.loads(line) for line in stack.webhook.logs().splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("message") == "request" and line.get("verdict")]
    assert requests and {"analysis_id", "service", "status", "duration_seconds"} <= set(
        requests[-1]
    )
    worker_lines = [
        json.loads(line)
        for w in stack.workers
        for line in w.logs().splitlines()
        if line.startswith("{") and "analysis finished" in line
    ]
    assert worker_lines and {"analysis_id", "verdict", "queue_wait_seconds"} <= set(
        worker_lines[-1]
    )
    everything = stack.webhook.logs() + "".join(w.logs() for w in stack.workers)
    assert AUTH["Authorization"].split()[1] not in everything


def test_slow_prometheus_gives_503_in_budget_and_the_retry_gets_that_result(
    stack_factory, prometheus
):
    with FaultyProxy(prometheus.url) as proxy:
        proxy.faults.delay_seconds = 3.0
        slow = stack_factory(
            "slow",
            prometheus_url=proxy.url,
            workers=1,
            settings={"ROLLOUT_ANALYZER_WAIT_SECONDS": "1.5"},
        )
        body = body_for(prometheus, "errors")
        with slow.client() as client:
            began = time.monotonic()
            first = client.post("/v1/analyze", json=body)
            waited = time.monotonic() - began
            assert first.status_code == 503
            assert first.headers["Retry-After"]
            assert waited < 3.0
            pending_id = first.json()["analysis_id"]
            time.sleep(2.5)
            retry = client.post("/v1/analyze", json=body)
        assert retry.status_code == 200
        assert retry.json()["analysis_id"] == pending_id
        assert retry.json()["verdict"] == "fail"
        assert len([p for p in proxy.requests if p.startswith("/api/v1/query")]) == 1


def test_prometheus_errors_are_an_error_never_a_pass(stack_factory, prometheus):
    with FaultyProxy(prometheus.url) as proxy:
        proxy.faults.status = 503
        broken = stack_factory("broken", prometheus_url=proxy.url, workers=1)
        with broken.client() as client:
            answer = client.post("/v1/analyze", json=body_for(prometheus, "good"))
    assert answer.status_code == 502
    assert "query" in answer.json()["message"]


def test_redis_down_answers_503_fast(tmp_path):
    from tests.support.procs import free_port
    from tests.support.service import Webhook, service_env

    env = service_env(f"redis://127.0.0.1:{free_port()}/0", prometheus_url="http://127.0.0.1:1")
    webhook = Webhook(env, tmp_path).start()
    try:
        body = {"service": "a", "canary": "b", "baseline": "c"}
        began = time.monotonic()
        answer = httpx.post(f"{webhook.url}/v1/analyze", json=body, timeout=10)
        assert answer.status_code == 503
        assert time.monotonic() - began < 2.0
        assert httpx.get(f"{webhook.url}/readyz", timeout=5).status_code == 503
    finally:
        webhook.stop()


def test_a_killed_worker_is_replaced_by_the_next_call(stack_factory, prometheus):
    """SIGKILL the worker mid-analysis: once its lease lapses, Argo's retry starts afresh."""
    with FaultyProxy(prometheus.url) as proxy:
        proxy.faults.delay_seconds = 4.0
        crash = stack_factory(
            "crash",
            prometheus_url=proxy.url,
            workers=1,
            settings={"ROLLOUT_ANALYZER_WAIT_SECONDS": "1", "ROLLOUT_ANALYZER_LEASE_SECONDS": "2"},
        )
        body = body_for(prometheus, "errors")
        with crash.client() as client:
            first = client.post("/v1/analyze", json=body)
            assert first.status_code == 503
            crash.workers[0].kill()
            crash.add_worker("replacement")
            proxy.faults.delay_seconds = 0
            wait_for(lambda: True, 0.1, "nothing")
            deadline = time.monotonic() + 30
            answer = first
            while answer.status_code != 200 and time.monotonic() < deadline:
                time.sleep(1)
                answer = client.post("/v1/analyze", json=body)
        assert answer.status_code == 200
        assert answer.json()["verdict"] == "fail"
        assert answer.json()["analysis_id"] != first.json()["analysis_id"]


def live_poll(client, web: WebProvider):
    return measure(client, web, 'result == "pass"', 'result == "fail"')


@pytest.mark.parametrize(
    "name,phases",
    [("good", ["Successful"] * 5), ("errors", ["Failed"] * 5)],
)
def test_five_live_polls_without_end_follow_one_sequence(stack, prometheus, name, phases):
    """As Argo asks: the same URL (no `end`) five times. Each poll adds only what arrived since
    the poll before to the canary's sequence; the verdict is on all of it; a failure stays."""
    payload = body_for(prometheus, name, policy="live")
    web = WebProvider(url=f"{stack.url}/v1/analyze?{urlencode(payload)}", method="GET")
    web.headers = [("Authorization", f"Bearer {TOKEN}")]
    web.json_path = "{$.verdict}"
    seen, answers = [], []
    with httpx.Client() as client:
        for poll in range(5):
            if poll:
                # Past the 2 s reuse window (a new measurement each time); four gaps span more
                # than one 15 s step of the backfilled counters, so the sequence grows.
                time.sleep(4)
            seen.append(live_poll(client, web).phase.value)
            answers.append(client.get(web.url, headers=AUTH).json())
    assert seen == phases
    polls = [a["sequence"]["polls"] for a in answers]
    assert polls == sorted(polls) and polls[0] == 1 and polls[-1] >= 3
    assert {a["mode"] for a in answers} == {"sequential"}
    assert len({a["sequence"]["id"] for a in answers}) == 1
    assert len({a["window"]["start"] for a in answers}) == 1  # evidence since the first poll
    first, last = answers[0]["sequence"], answers[-1]["sequence"]
    assert first["new"] is True and last["new"] is False
    assert first["interval"]["seconds"] == 300 and last["interval"]["seconds"] < 30
    assert answers[-1]["requests"]["canary"] > answers[0]["requests"]["canary"]
    assert all(a["source"]["round_trips"] <= 1 for a in answers)
    if name == "errors":
        failed = [c for c in answers[-1]["checks"] if c["verdict"] == "fail"]
        assert failed and all(c["e_value"] >= c["threshold"] for c in failed)
        assert any("failed at poll 1" in r for r in answers[-1]["reasons"])


def test_a_look_at_a_past_window_does_not_touch_the_live_sequence(stack, prometheus):
    live = body_for(prometheus, "latency", policy="live")
    with stack.client() as client:
        first = client.post("/v1/analyze", json=live).json()
        past = client.post("/v1/analyze", json=live | {"end": pinned_end(600)}).json()
        time.sleep(2.5)
        second = client.post("/v1/analyze", json=live).json()
    assert past["mode"] == "fixed" and "sequence" not in past
    assert all(c["p_value"] is not None for c in past["checks"] if c["name"].endswith("regression"))
    assert first["sequence"]["polls"] == 1 and second["sequence"]["polls"] == 2
