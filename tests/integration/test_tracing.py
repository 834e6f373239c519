"""Traces of the analyzer itself, end to end: an Argo-style call through the real webhook, Redis
and Celery worker processes to Prometheus, Kubernetes (emulator) and chat (local receivers),
exported over OTLP/HTTP to a receiver that decodes the protobuf like a collector would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import AUTH, TOKEN
from tests.support.actions_world import (
    DINGTALK_SECRET,
    FEISHU_SECRET,
    argo_call,
    body,
    start_actions_world,
)
from tests.support.argo import Phase
from tests.support.k8s_emulator import DEFAULT_TOKEN
from tests.support.otlp_receiver import OtlpGrpcReceiver, OtlpHttpReceiver, ReceivedSpan
from tests.support.procs import wait_for
from worker.task_names import ACT_TASK, ANALYZE_TASK, NOTIFY_TASK

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_TOKEN = "prom-bearer-secret-1234"
CHAT_TARGETS = 4  # tests/support/actions_world.py
OTEL = {
    # Export quickly: the test waits for spans, not for the default 5 s batch delay.
    "OTEL_BSP_SCHEDULE_DELAY": "100",
    "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment.name=ci,team=canary",
}


@pytest.fixture(scope="module")
def receiver():
    started = OtlpHttpReceiver().start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def world(stack_factory, prometheus, tmp_path_factory, receiver):
    built = start_actions_world(
        stack_factory,
        prometheus.url,
        tmp_path_factory.mktemp("traced"),
        "traced",
        settings={
            **OTEL,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "ROLLOUT_ANALYZER_PROMETHEUS_TOKEN": PROMETHEUS_TOKEN,
            # A test finds the id of Argo's analysis by asking again (Argo reads only the
            # verdict): inside the reuse window however slow the host, not the world's 1 s.
            "ROLLOUT_ANALYZER_REUSE_SECONDS": "60",
        },
    )
    yield built
    built.close()


def unique_revision() -> str:
    return str(time.time_ns() % 10**12)


def analysis_id_of(stack, revision: str) -> str:
    """The id of the analysis Argo's call started (Argo only reads the verdict)."""
    with stack.client() as client:
        answer = client.post("/v1/analyze", json=body(revision))
    assert answer.status_code == 200, answer.text
    return answer.headers["X-Analysis-Id"]


def one(spans: list[ReceivedSpan], **where) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, [(s.name, s.parent_span_id) for s in spans])
    return found[0]


def children(spans: list[ReceivedSpan], parent: ReceivedSpan, name: str | None = None) -> list:
    return [
        s for s in spans if s.parent_span_id == parent.span_id and (name is None or s.name == name)
    ]


def complete_trace(receiver, analysis_id: str) -> list[ReceivedSpan]:
    """The whole trace of one analysis, once every chat delivery span has arrived."""

    def trace_of(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        roots = [
            s
            for s in spans
            if s.kind == "server" and s.attributes.get("analysis.id") == analysis_id
        ]
        return [s for s in spans if roots and s.trace_id == roots[0].trace_id]

    def complete(spans: list[ReceivedSpan]) -> bool:
        # A delivery span ends (and may be exported) before its notify task's span does.
        names = [s.name for s in trace_of(spans)]
        return min(names.count("chat.deliver"), names.count(NOTIFY_TASK)) >= CHAT_TARGETS

    try:
        receiver.wait_for(complete)
    except AssertionError as exc:
        names = Counter(s.name for s in trace_of(receiver.spans))
        raise AssertionError(f"{exc}; in the analysis' trace: {sorted(names.items())}") from None
    return trace_of(receiver.spans)


def print_tree(spans: list[ReceivedSpan]) -> None:
    def walk(node: ReceivedSpan, depth: int) -> None:
        print(f"{'  ' * depth}{node.name} [{node.service}] {node.duration_ms:.1f} ms")
        for child in sorted(children(spans, node), key=lambda s: s.start_ns):
            walk(child, depth + 1)

    for root in [s for s in spans if s.parent_span_id == ""]:
        walk(root, 0)


def test_one_trace_from_argos_call_to_every_query_patch_and_message(world, prometheus, receiver):
    stack, emulator, receivers, _ = world.parts
    world.reset()
    revision = unique_revision()
    queries_before = prometheus.http_requests_total("/api/v1/query")
    phase, _ = argo_call(stack, body(revision))
    assert phase == Phase.FAILED
    queries_made = prometheus.http_requests_total("/api/v1/query") - queries_before
    analysis_id = analysis_id_of(stack, revision)  # the same analysis, answered from the store
    with stack.client() as client:
        stored = client.get(f"/v1/analyses/{analysis_id}").json()
    result = stored["result"]

    spans = complete_trace(receiver, analysis_id)
    print_tree(spans)
    assert len({s.trace_id for s in spans}) == 1

    # The webhook's server span: the root, HTTP semantic conventions, the analysis it served.
    webhook = one(spans, kind="server", parent_span_id="")
    assert webhook.name == "POST /v1/analyze"
    assert webhook.service == "rollout-analyzer-webhook"
    assert webhook.attributes["http.request.method"] == "POST"
    assert webhook.attributes["http.route"] == "/v1/analyze"
    assert webhook.attributes["http.response.status_code"] == 200
    assert webhook.attributes["url.path"] == "/v1/analyze"
    assert webhook.attributes["analysis.dedup"] == "miss"
    assert webhook.attributes["analysis.verdict"] == "fail"
    assert webhook.resource["deployment.environment.name"] == "ci"
    assert webhook.resource["team"] == "canary"

    # The worker's task span, a child of the webhook's span across the process boundary.
    analyze = one(spans, name=ANALYZE_TASK)
    assert analyze.parent_span_id == webhook.span_id
    assert analyze.kind == "consumer"
    assert analyze.service == "rollout-analyzer-worker"
    attrs = analyze.attributes
    assert attrs["analysis.id"] == analysis_id
    assert attrs["analysis.verdict"] == result["verdict"] == "fail"
    assert attrs["analysis.score"] == result["score"]
    assert attrs["analysis.service"] == "errors"
    assert attrs["analysis.rollout"] == "errors"
    assert attrs["analysis.revision"] == revision
    assert attrs["analysis.requests.canary"] == result["requests"]["canary"]
    assert attrs["analysis.requests.baseline"] == result["requests"]["baseline"]
    assert attrs["analysis.queue_wait_seconds"] == result["timing"]["queue_wait_seconds"]
    assert attrs["messaging.message.id"]

    # One client span per PromQL round trip, as many as Prometheus itself counted.
    promql = children(spans, analyze, "POST /api/v1/query")
    assert len(promql) == result["source"]["round_trips"] == queries_made == 1
    query_span = promql[0]
    assert query_span.kind == "client"
    assert query_span.attributes["http.response.status_code"] == 200
    assert query_span.attributes["server.port"] == int(prometheus.url.rsplit(":", 1)[1])
    assert query_span.attributes["db.query.text"] == result["source"]["queries"][0][:1024]
    assert query_span.attributes["url.full"] == f"{prometheus.url}/api/v1/query"
    statistics = one(children(spans, analyze), name="analysis.statistics")
    assert statistics.start_ns >= query_span.end_ns

    # The follow-up: the act task, its rollback (a real PATCH to the API), one delivery per chat.
    act = one(children(spans, analyze), name=ACT_TASK)
    rollback = one(children(spans, act), name="traffic.rollback")
    assert rollback.attributes["traffic.status"] == "applied"
    assert rollback.attributes["k8s.namespace.name"] == "shop"
    assert emulator.requests_for("patch")
    notifies = children(spans, act, NOTIFY_TASK)
    deliveries = [d for n in notifies for d in children(spans, n, "chat.deliver")]
    assert len(notifies) == len(deliveries) == CHAT_TARGETS
    assert {d.attributes["chat.kind"] for d in deliveries} == {
        "slack", "dingtalk", "feishu", "generic",
    }  # fmt: skip
    assert {d.attributes["chat.status"] for d in deliveries} == {"delivered"}
    assert receivers.hits("slack") >= 1

    # No credential and no chat webhook URL in any attribute the collector received.
    secrets = [TOKEN, PROMETHEUS_TOKEN, DINGTALK_SECRET, FEISHU_SECRET, DEFAULT_TOKEN]
    chat_base = receivers.url("slack").rsplit("/", 1)[0]
    for received in receiver.spans:
        text = json.dumps([received.attributes, received.resource, received.events])
        for secret in [*secrets, chat_base]:
            assert secret not in text, (received.name, secret)


def test_logs_and_exemplars_point_at_the_same_trace(world, receiver):
    stack, *_ = world.parts
    world.reset()
    revision = unique_revision()
    analysis_id = analysis_id_of(stack, revision)
    trace_id = complete_trace(receiver, analysis_id)[0].trace_id

    def lines(text: str) -> list[dict]:
        parsed = []
        for raw in text.splitlines():
            if raw.startswith("{"):
                try:
                    parsed.append(json.loads(raw))
                except ValueError:
                    continue
        return parsed

    webhook_lines = [
        line for line in lines(stack.webhook.logs()) if line.get("analysis_id") == analysis_id
    ]
    worker_lines = [
        line
        for worker in stack.workers
        for line in lines(worker.logs())
        if line.get("analysis_id") == analysis_id
    ]
    assert webhook_lines and worker_lines
    assert {line["trace_id"] for line in webhook_lines + worker_lines} == {trace_id}
    assert all(len(line["span_id"]) == 16 for line in webhook_lines + worker_lines)

    metrics = httpx.get(
        f"{stack.url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert metrics.headers["content-type"].startswith("application/openmetrics-text")
    exemplars = [
        line
        for line in metrics.text.splitlines()
        if line.startswith("rollout_analyzer_analysis_duration_seconds_bucket") and " # {" in line
    ]
    assert any(f'trace_id="{trace_id}"' in line for line in exemplars), exemplars
    assert "# UNIT rollout_analyzer_analysis_duration_seconds seconds" in metrics.text
    plain = httpx.get(f"{stack.url}/metrics").text
    assert "rollout_analyzer_http_requests_total{" in plain and "trace_id" not in plain
    # Probes and scrapes (just made, and every readyz poll at start-up) leave no traces.
    probed = {s.attributes.get("url.path") for s in receiver.spans}
    assert not probed & {"/metrics", "/healthz", "/readyz"}


def test_a_callers_traceparent_is_the_parent_and_a_dedup_hit_is_marked(world, receiver):
    stack, *_ = world.parts
    world.reset()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {**AUTH, "traceparent": f"00-{trace_id}-{parent_id}-01"}
    revision = unique_revision()
    with httpx.Client(base_url=stack.url, timeout=15) as client:
        first = client.post("/v1/analyze", json=body(revision), headers=headers)
        again = client.post("/v1/analyze", json=body(revision), headers=AUTH)
    assert first.status_code == again.status_code == 200
    analysis_id = first.headers["X-Analysis-Id"]
    assert again.headers["X-Analysis-Id"] == analysis_id

    spans = receiver.wait_for(
        lambda got: sum(s.attributes.get("analysis.id") == analysis_id for s in got) >= 3
    )
    servers = [
        s for s in spans if s.kind == "server" and s.attributes.get("analysis.id") == analysis_id
    ]
    caller = one(servers, trace_id=trace_id)
    assert caller.parent_span_id == parent_id
    assert caller.attributes["analysis.dedup"] == "miss"
    analyze = one(spans, name=ANALYZE_TASK, trace_id=trace_id)
    assert analyze.parent_span_id == caller.span_id
    hit = one([s for s in servers if s.trace_id != trace_id])
    assert hit.attributes["analysis.dedup"] == "hit"
    # A dedup hit started nothing: no task span in its trace.
    assert [s.name for s in receiver.trace(hit.trace_id)] == ["POST /v1/analyze"]


def test_sampled_out_analyses_are_still_in_logs_and_the_store(stack_factory, prometheus):
    """Ratio 0: no spans leave the process, yet the analysis is logged with its trace id and
    stored; a caller that sampled its own span still gets one (parent-based sampling)."""
    quiet = OtlpHttpReceiver().start()
    try:
        stack = stack_factory(
            "sampled-out",
            prometheus_url=prometheus.url,
            workers=1,
            settings={
                **OTEL,
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{quiet.endpoint}/v1/traces",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0",
            },
        )
        scenario = prometheus.scenarios["good"]
        request = {
            "service": scenario.service,
            "namespace": scenario.namespace,
            "canary": scenario.canary.selector,
            "baseline": scenario.baseline.selector,
        }
        with stack.client() as client:
            answer = client.post("/v1/analyze", json=request)
            assert answer.status_code == 200, answer.text
            analysis_id = answer.headers["X-Analysis-Id"]
            assert client.get(f"/v1/analyses/{analysis_id}").json()["status"] == "done"
        wait_for(lambda: analysis_id in stack.workers[0].logs(), 10, "the worker's log line")
        finished = [
            json.loads(line)
            for line in stack.workers[0].logs().splitlines()
            if analysis_id in line and '"analysis finished"' in line
        ]
        assert finished and len(finished[0]["trace_id"]) == 32
        assert finished[0]["trace_sampled"] is False

        sampled_parent = "00-11112222333344445555666677778888-1111222233334444-01"
        with stack.client() as client:
            answer = client.post(
                "/v1/analyze",
                json={**request, "end": str(time.time() - 100)},
                headers={"traceparent": sampled_parent},
            )
        assert answer.status_code == 200
        spans = quiet.wait_for(lambda got: any(s.name == ANALYZE_TASK for s in got))
        assert {s.trace_id for s in spans} == {"11112222333344445555666677778888"}
        assert not any(s.attributes.get("analysis.id") == analysis_id for s in spans)
    finally:
        quiet.stop()


CHECK_OFF = """
import sys, threading
from worker import tracing
from worker.logs import JsonFormatter
import logging
assert tracing.setup("worker") is False
from fastapi import FastAPI
FastAPI(telemetry=tracing.webhook_telemetry())
with tracing.span("x", a=1) as s:
    s.set_attribute("b", 2)
headers = {}
tracing.inject(headers)
line = JsonFormatter().format(logging.makeLogRecord({"msg": "hello"}))
heavy = ("opentelemetry.sdk", "opentelemetry.exporter", "opentelemetry.instrumentation")
loaded = sorted(m for m in sys.modules if m.startswith(heavy))
threads = sorted(t.name for t in threading.enumerate())
print(repr((loaded, threads, headers, line)))
"""

EXPORT_ONE = """
from worker import tracing
assert tracing.setup("worker") is True
with tracing.span("grpc-smoke", **{"check.value": 7}):
    pass
tracing.shutdown()
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, "PYTHONPATH": str(REPO), **extra}


def test_without_an_endpoint_nothing_of_the_sdk_loads_and_no_thread_starts():
    done = subprocess.run(
        [sys.executable, "-c", CHECK_OFF],
        env=clean_env(OTEL_SERVICE_NAME="set-but-no-endpoint"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    loaded, threads, headers, line = eval(done.stdout.strip())  # noqa: S307 (our own repr)
    assert loaded == []
    assert threads == ["MainThread"]
    assert headers == {}
    assert "trace_id" not in json.loads(line)


def test_grpc_export_reaches_a_grpc_collector():
    collector = OtlpGrpcReceiver().start()
    try:
        done = subprocess.run(
            [sys.executable, "-c", EXPORT_ONE],
            env=clean_env(
                OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
                OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
                OTEL_SERVICE_NAME="grpc-check",
            ),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        spans = collector.wait_for(lambda got: any(s.name == "grpc-smoke" for s in got), 10)
        assert spans[0].service == "grpc-check"
        assert spans[0].attributes == {"check.value": 7}
    finally:
        collector.stop()
