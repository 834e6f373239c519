"""A query sent ahead of its analysis (worker/ahead.py; PrometheusSource.send_ahead): it reaches
the server before anyone reads its answer, is answered once and taken by the analysis that makes
the same query, never by another; it never waits (no idle connection, a request hook, a proxy:
not sent); answers nobody takes are bounded and dropped. Against the counting HTTP server of
test_prometheus_client, the real Prometheus, and a real webhook with one Celery worker."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import httpx
import pytest

from analysis.policy import PolicySet
from analysis.request import parse_request, resolve
from analysis.sources import prometheus as prometheus_source
from analysis.sources.prometheus import PrometheusConfig, PrometheusSource
from analysis.sources.prometheus_http import DirectPool, PrometheusHTTP, observe_requests
from tests.integration.conftest import AUTH
from tests.integration.test_core_e2e import body_for, pinned_end
from tests.integration.test_prometheus_client import SAMPLE, CountingServer, certs, query, served
from tests.support.procs import wait_for
from tests.support.service import Worker

__all__ = ["certs", "served"]  # fixtures, imported to be used here

pytestmark = pytest.mark.integration

FIELDS = {"query": 'up{job="x"}', "time": 1700000000}


def wait_for_requests(server: CountingServer, count: int) -> None:
    with server.changed:
        assert server.changed.wait_for(lambda: len(server.requests) >= count, timeout=5)


def test_a_query_sent_ahead_reaches_the_server_before_its_answer_is_read(served):
    server, tls = served
    http = PrometheusHTTP(PrometheusConfig(url=server.url, **tls))
    assert query(http) == [SAMPLE]  # a connection, idle now
    sent = http.send_ahead("/api/v1/query", FIELDS)
    assert sent is not None
    wait_for_requests(server, 2)  # there, with nobody reading yet
    assert http.query("/api/v1/query", FIELDS, 5.0, sent) == [SAMPLE]
    assert sent.answered
    # Read from that request, not asked again; its connection back in the pool.
    assert (server.connections, len(server.requests)) == (1, 2)
    assert isinstance(http.transport, DirectPool) and http.transport.idle == 1


def test_nothing_is_sent_ahead_that_would_wait_or_lose_its_trace(served):
    server, tls = served
    http = PrometheusHTTP(PrometheusConfig(url=server.url, **tls))
    # No idle connection: a connect on Celery's event loop could block it. Nothing sent.
    assert http.send_ahead("/api/v1/query", FIELDS) is None
    assert server.connections == 0
    query(http)
    # With a request hook (tracing), the request's span belongs to the task that reads it.
    seen: list[str] = []

    def hook(method, url, expr, headers):
        import contextlib

        @contextlib.contextmanager
        def around():
            seen.append(expr)
            yield lambda status: None

        return around()

    observe_requests(hook)
    try:
        assert http.send_ahead("/api/v1/query", FIELDS) is None
    finally:
        observe_requests(None)
    assert len(server.requests) == 1 and seen == []


def test_an_ahead_request_on_a_connection_the_server_closed_is_sent_again_at_once(served):
    server, tls = served
    server.mode = "answer-then-close"
    http = PrometheusHTTP(PrometheusConfig(url=server.url, **tls))
    query(http)
    server.wait_closed(1)  # the pooled connection is dead; the client was not told
    sent = http.send_ahead("/api/v1/query", FIELDS)  # None where the send itself failed
    began = time.monotonic()
    assert http.query("/api/v1/query", FIELDS, 5.0, sent) == [SAMPLE]
    assert time.monotonic() - began < 1.0
    assert sent is None or not sent.answered
    assert (server.connections, len(server.requests)) == (2, 2)


# --- the source, against the real Prometheus ------------------------------------------------


def spec_for(prometheus_server, name: str = "good"):
    scenario = prometheus_server.scenarios[name]
    body = {"service": scenario.service, "namespace": scenario.namespace,
            "canary": scenario.canary.selector, "baseline": scenario.baseline.selector}  # fmt: skip
    return resolve(parse_request(body), PolicySet.load(None))


def test_the_analysis_making_the_same_query_takes_the_answer_and_no_other(prometheus):
    source = PrometheusSource(PrometheusConfig(url=prometheus.url))
    spec, end = spec_for(prometheus), time.time() - 180
    plain = source.observe(spec, end)  # also leaves a connection idle
    assert not plain.sent_ahead
    before = prometheus.http_requests_total("/api/v1/query")
    assert source.send_ahead(spec, end)
    ahead = source.observe(spec, end)
    assert ahead.sent_ahead
    assert (ahead.canary, ahead.baseline) == (plain.canary, plain.baseline)
    assert prometheus.http_requests_total("/api/v1/query") - before == 1

    # Another window: the answer sent ahead is not its answer.
    assert source.send_ahead(spec, end, most=4)
    other = source.observe(spec, end - 60)
    assert not other.sent_ahead
    # Its own query; the one sent ahead is counted once Prometheus is through with it (nobody
    # reads its answer, so nothing here waits for that).
    asked = lambda: prometheus.http_requests_total("/api/v1/query") - before  # noqa: E731
    wait_for(lambda: asked() >= 3, 5, "the query sent ahead counted")
    assert asked() == 3
    # A live poll's interval is part of its query: the same end with another interval differs.
    assert source.send_ahead(spec, end, 60, most=4)
    assert not source.observe(spec, end, seconds=30).sent_ahead
    assert source.observe(spec, end, seconds=60).sent_ahead


def idle_connections(source: PrometheusSource, spec, end: float, count: int) -> None:
    """Leaves `count` connections idle in the source's pool: a query sent ahead holds one
    until its answer is read, so a query made meanwhile opens another."""
    source.observe(spec, end)
    for held in range(1, count):
        ends = [end - 1000 - k for k in range(held)]
        assert all(source.send_ahead(spec, at, most=count) for at in ends)
        source.observe(spec, end)  # every idle connection is held: it opens one more
        assert all(source.observe(spec, at).sent_ahead for at in ends)


def test_answers_nobody_takes_are_bounded_and_dropped(prometheus, monkeypatch):
    source = PrometheusSource(PrometheusConfig(url=prometheus.url))
    spec, end = spec_for(prometheus), time.time() - 180
    idle_connections(source, spec, end, 3)
    assert source.send_ahead(spec, end - 10, most=2)
    assert source.send_ahead(spec, end - 11, most=2)
    assert not source.send_ahead(spec, end - 12, most=2)  # two wait already
    # Past AHEAD_SECONDS nobody will take them: dropped (their connections closed), room again.
    monkeypatch.setattr(prometheus_source, "AHEAD_SECONDS", 0.0)
    time.sleep(0.01)
    assert source.send_ahead(spec, end - 12, most=2)
    assert not source.observe(spec, end - 10).sent_ahead  # dropped, asked again
    assert source.observe(spec, end - 12).sent_ahead


# --- a webhook and one Celery worker -----------------------------------------------------------


@pytest.fixture(scope="module")
def stack(stack_factory, prometheus):
    # One worker, so the connection the first analysis leaves idle serves the next ones.
    return stack_factory(
        "ahead",
        prometheus_url=prometheus.url,
        workers=1,
        settings={"ROLLOUT_ANALYZER_REUSE_SECONDS": "1"},
    )


def test_a_fixed_windows_query_goes_as_its_message_arrives_once(stack, prometheus):
    with stack.client() as client:
        warm = body_for(prometheus, "good", end=pinned_end(200))  # a connection left idle
        assert client.post("/v1/analyze", json=warm).status_code == 200
        before = prometheus.http_requests_total("/api/v1/query")
        answers = [
            client.post("/v1/analyze", json=body_for(prometheus, name, end=pinned_end(150 + i)))
            for i, name in enumerate(["good", "errors", "latency"])
        ]
    assert [a.status_code for a in answers] == [200] * 3
    assert [a.json()["verdict"] for a in answers] == ["pass", "fail", "fail"]
    assert all(a.json()["source"]["sent_ahead"] is True for a in answers)
    assert prometheus.http_requests_total("/api/v1/query") - before == 3


def test_live_polls_queries_go_as_their_messages_arrive(stack, prometheus):
    """As Argo polls: the first poll of a canary (no sequence yet) and the next ones (the claim
    reads when the previous one ended) all have their query sent on delivery, one each."""
    url = f"{stack.url}/v1/analyze?{urlencode(body_for(prometheus, 'good', policy='default'))}"
    answers = []
    with httpx.Client(headers=AUTH, timeout=10) as client:
        warm = body_for(prometheus, "errors", end=pinned_end(210))
        assert client.post(f"{stack.url}/v1/analyze", json=warm).status_code == 200
        before = prometheus.http_requests_total("/api/v1/query")
        for poll in range(3):
            if poll:
                time.sleep(2.2)  # past the 1 s reuse window, a new whole second
            answers.append(client.get(url))
    assert [a.status_code for a in answers] == [200] * 3
    polls = [a.json()["sequence"]["polls"] for a in answers]
    assert polls == [1, 2, 3]
    assert [a.json()["source"].get("sent_ahead") for a in answers] == [True] * 3
    assert prometheus.http_requests_total("/api/v1/query") - before == 3


def test_a_prefork_worker_sends_nothing_ahead_and_asks_once(stack_factory, prometheus, tmp_path):
    """With Celery's prefork pool (the CLI's default) the message is read in the parent and the
    task runs in a child, which could not read an answer sent by the parent: nothing is sent
    ahead, and each analysis asks Prometheus once, as before."""
    stack = stack_factory("ahead-prefork", prometheus_url=prometheus.url, workers=0)
    worker = Worker(stack.env, tmp_path, pool="prefork", concurrency=2, name="pf").start()
    stack.extra_workers.append(worker)
    with stack.client() as client:
        warm = body_for(prometheus, "good", end=pinned_end(220))
        assert client.post("/v1/analyze", json=warm).status_code == 200
        before = prometheus.http_requests_total("/api/v1/query")
        answers = [
            client.post("/v1/analyze", json=body_for(prometheus, "good", end=pinned_end(230 + i)))
            for i in range(3)
        ]
    assert [a.status_code for a in answers] == [200] * 3
    assert all("sent_ahead" not in a.json()["source"] for a in answers)
    assert prometheus.http_requests_total("/api/v1/query") - before == 3
