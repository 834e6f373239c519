"""The PromQL client's direct route (analysis/sources/prometheus_http.py): a keep-alive pool of
sockets, answers parsed by httptools. Against a tiny HTTP/1.1 server written here, which counts
the connections it accepts and the requests it reads: the request's head; queries in a row share
one connection; chunked answers, answers ended by the close, answers cut short; a connection the
server closed while idle is retried once, at once, on a fresh one, and only once; a secret that
would break the head is refused; refused and silent servers end as a SourceError in time. Against
the real Prometheus: threads share the pool, which keeps at most POOL_SIZE idle connections."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from analysis.policy import PolicySet
from analysis.request import parse_request, resolve
from analysis.sources import SourceError, prometheus_http
from analysis.sources.prometheus import PrometheusConfig, PrometheusSource
from analysis.sources.prometheus_http import (
    DirectPool,
    PrometheusConnectionError,
    PrometheusHTTP,
    TransportError,
    observe_requests,
)
from tests.support.procs import free_port
from tests.support.tls import Certs, make_certs, server_context

pytestmark = pytest.mark.integration

SAMPLE = {"metric": {"job": "x"}, "value": [1700000000, "1"]}
VECTOR = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [SAMPLE]}})


class CountingServer:
    """HTTP/1.1 with keep-alive. `mode`: "answer"; "answer-then-close" (answers, then closes the
    socket, with no `Connection: close` said); "chunked" (the body in chunks); "unframed" (no
    length, no chunks: the body ends with the connection); "half" (half the body it announced,
    then the connection closed); "unavailable" (503) and "bad-request" (400); "drop" (reads the
    request, closes without an answer); "hang" (reads the request, never answers)."""

    def __init__(self, tls: Any = None) -> None:
        self.mode = "answer"
        self.connections = 0
        self.closed = 0
        self.requests: list[str] = []
        self.heads: list[dict[str, str]] = []  # each request's headers, as the server read them
        self.changed = threading.Condition()
        self.release = threading.Event()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with counter.changed:
                    counter.requests.append(f"{self.command} {self.path}")
                    counter.heads.append(dict(self.headers.items()))
                    counter.changed.notify_all()
                mode = counter.mode
                if mode == "hang":
                    counter.release.wait(10)
                if mode in ("drop", "hang"):
                    self.close_connection = True
                    return
                if mode in ("unavailable", "bad-request"):
                    self.send_error(503 if mode == "unavailable" else 400)
                    return
                body = VECTOR.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if mode == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                elif mode != "unframed":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "chunked":
                    for part in (body[:10], body[10:]):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.wfile.write(body[: len(body) // 2] if mode == "half" else body)
                if mode in ("answer-then-close", "unframed", "half"):
                    self.close_connection = True

            do_GET = do_POST

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                with counter.changed:
                    counter.connections += 1
                super().process_request(request, client_address)

            def shutdown_request(self, request: Any) -> None:
                super().shutdown_request(request)
                with counter.changed:
                    counter.closed += 1
                    counter.changed.notify_all()

        self._server = Server(("127.0.0.1", 0), Handler)
        self.scheme = "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def wait_closed(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.closed >= count, timeout=5), self.closed

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(params=["http", "https"])
def served(request: pytest.FixtureRequest, certs: Certs) -> Iterator[tuple[CountingServer, dict]]:
    """The counting server, plain or behind TLS, and the client settings that trust it."""
    https = request.param == "https"
    server = CountingServer(tls=server_context(certs) if https else None)
    try:
        yield server, ({"ca_file": str(certs.ca)} if https else {})
    finally:
        server.stop()


def query(http: PrometheusHTTP, timeout: float = 5.0) -> Any:
    return http.query("/api/v1/query", {"query": 'up{job="x"}', "time": 1700000000}, timeout)


def test_queries_in_a_row_share_one_connection(served):
    server, tls = served
    http = PrometheusHTTP(PrometheusConfig(url=server.url, **tls))
    assert isinstance(http.transport, DirectPool)
    for _ in range(5):
        assert query(http) == [SAMPLE]
    assert server.connections == 1
    assert server.requests == ["POST /api/v1/query"] * 5
    assert http.transport.idle == 1


def test_the_request_head_names_the_host_its_body_and_the_credentials(served):
    server, tls = served
    http = PrometheusHTTP(PrometheusConfig(url=server.url, token="s3cret", **tls))
    assert query(http) == [SAMPLE]
    head = server.heads[0]
    assert head["Host"] == server.url.split("://")[1]
    assert head["Authorization"] == "Bearer s3cret"
    assert head["Content-Type"] == "application/x-www-form-urlencoded"
    form = "query=up%7Bjob%3D%22x%22%7D&time=1700000000"
    assert head["Content-Length"] == str(len(form))
    assert head["Accept-Encoding"] == "identity"  # never a gzipped answer


def test_a_chunked_answer_is_read_whole_and_its_connection_kept(served):
    server, tls = served
    server.mode = "chunked"
    http = PrometheusHTTP(PrometheusConfig(url=server.url, **tls))
    assert [query(http) for _ in range(3)] == [[SAMPLE]] * 3
    assert server.connections == 1


def test_an_answer_that_ends_with_its_connection_is_read_whole_and_not_kept(served):
    server, tls = served
    server.mode = "unframed"
    http = PrometheusHTTP(PrometheusConfig(url=server.url, **tls))
    assert [query(http) for _ in range(2)] == [[SAMPLE]] * 2
    assert server.connections == 2
    assert isinstance(http.transport, DirectPool) and http.transport.idle == 0


def test_an_answer_cut_short_is_a_transport_error_not_a_short_body(served):
    server, tls = served
    server.mode = "half"
    http = PrometheusHTTP(PrometheusConfig(url=server.url, **tls))
    with pytest.raises(TransportError, match="middle of its answer"):
        query(http)
    assert isinstance(http.transport, DirectPool) and http.transport.idle == 0
    server.mode = "answer"
    assert query(http) == [SAMPLE]  # a fresh connection


@pytest.mark.parametrize("token", ["a\r\nX-Injected: 1", "a\nb", "a\x00b"])
def test_a_secret_that_would_break_the_request_head_is_refused_before_any_request(token):
    server = CountingServer()
    try:
        with pytest.raises(ValueError, match="Authorization header: a line break or NUL"):
            PrometheusHTTP(PrometheusConfig(url=server.url, token=token))
        assert server.connections == 0
    finally:
        server.stop()


def test_a_connection_the_server_closed_while_idle_is_retried_once_at_once(served):
    server, tls = served
    server.mode = "answer-then-close"
    http = PrometheusHTTP(PrometheusConfig(url=server.url, **tls))
    query(http)
    server.wait_closed(1)  # the pooled connection is dead now; the client was not told
    began = time.monotonic()
    assert query(http)
    assert time.monotonic() - began < 1.0  # at once: no backoff, no timeout waited out
    # The dead connection's request never reached the server: one new connection, one request.
    assert (server.connections, len(server.requests)) == (2, 2)


def test_the_retry_happens_only_once_and_only_on_a_reused_connection(served):
    server, tls = served
    http = PrometheusHTTP(PrometheusConfig(url=server.url, **tls))
    query(http)  # one connection, kept alive
    server.mode = "drop"  # every request read, then its connection closed unanswered
    with pytest.raises(TransportError):
        query(http)
    # The reused connection and exactly one fresh one: two requests, no third.
    assert (server.connections, len(server.requests)) == (2, 3)
    # The broken ones were not given back.
    assert isinstance(http.transport, DirectPool) and http.transport.idle == 0
    with pytest.raises(TransportError):
        query(http)  # a fresh connection failing is not retried here (the source's retries are)
    assert (server.connections, len(server.requests)) == (3, 4)


def test_a_timeout_on_a_reused_connection_is_not_retried_at_once(served):
    server, tls = served
    http = PrometheusHTTP(PrometheusConfig(url=server.url, **tls))
    query(http)
    server.mode = "hang"
    began = time.monotonic()
    with pytest.raises(TransportError, match="TimeoutError"):
        query(http, timeout=0.5)
    assert time.monotonic() - began < 0.9  # one timeout waited out, not two
    assert len(server.requests) == 2
    assert isinstance(http.transport, DirectPool) and http.transport.idle == 0


@contextmanager
def counted_requests() -> Iterator[list[str]]:
    """Each request the source makes, through the tracing hook."""
    seen: list[str] = []

    @contextmanager
    def observer(method: str, url: str, query: str, headers: dict[str, str]) -> Iterator[Any]:
        seen.append(method)
        yield lambda status: None

    observe_requests(observer)
    try:
        yield seen
    finally:
        observe_requests(None)


def causes(exc: BaseException) -> list[BaseException]:
    chain = []
    while exc.__cause__ is not None:
        exc = exc.__cause__
        chain.append(exc)
    return chain


def test_a_503_is_tried_max_attempts_times_with_backoff_a_400_once():
    server = CountingServer()
    try:
        server.mode = "unavailable"
        source = PrometheusSource(PrometheusConfig(url=server.url, max_attempts=3))
        began = time.monotonic()
        with pytest.raises(SourceError, match="the query failed: HTTP 503"):
            source.samples("up", time.time())
        waited = time.monotonic() - began
        assert len(server.requests) == 3
        assert 0.1 + 0.2 <= waited < 2.0 + 1.0  # two backoffs: 0.1 s and 0.2 s, each + jitter
        server.mode = "bad-request"
        with pytest.raises(SourceError, match="rejected by Prometheus: HTTP 400"):
            source.samples("up", time.time())
        assert len(server.requests) == 4  # a 4xx is not worth another attempt
        server.mode = "unavailable"
        began = time.monotonic()
        with pytest.raises(SourceError, match="HTTP 503"):
            source.samples("up", time.time(), deadline=began + 0.15)
        assert len(server.requests) == 5  # no second attempt: it would not fit the deadline
    finally:
        server.stop()


def test_connection_refused_is_retried_then_a_source_error():
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    source = PrometheusSource(PrometheusConfig(url=url, max_attempts=3))
    with counted_requests() as seen, pytest.raises(SourceError) as failed:
        source.samples("up", time.time(), deadline=time.monotonic() + 5)
    assert len(seen) == 3  # a transport error is worth another attempt
    assert "ConnectionError" in str(failed.value) and "Connection refused" in str(failed.value)
    assert any(isinstance(c, PrometheusConnectionError) for c in causes(failed.value))


def test_a_server_that_never_answers_times_out_within_the_deadline():
    with socket.socket() as silent:  # accepts (the kernel's backlog), never reads or answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        source = PrometheusSource(PrometheusConfig(url=url, query_timeout_seconds=5))
        began = time.monotonic()
        with pytest.raises(SourceError, match="timed out") as failed:
            source.samples("up", time.time(), deadline=began + 1.0)
        assert time.monotonic() - began < 1.5
    assert any(isinstance(c, TransportError) for c in causes(failed.value))


# --- threads against the real Prometheus ---------------------------------------------------------


def accepted_connections(prometheus) -> float:
    """Connections Prometheus' HTTP listener has accepted (this read's own included)."""
    with urllib.request.urlopen(f"{prometheus.url}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    for line in text.splitlines():
        if line.startswith('net_conntrack_listener_conn_accepted_total{listener_name="http"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no net_conntrack_listener_conn_accepted_total in /metrics")


def in_threads(
    source: PrometheusSource, prometheus, threads: int, each: int, end: float
) -> list[float]:
    scenario = prometheus.scenarios["errors"]
    body = {"service": scenario.service, "namespace": scenario.namespace,
            "canary": "6d4f8b7c9a", "baseline": "5c8d7e6f4b"}  # fmt: skip
    spec = resolve(parse_request(body), PolicySet.load(None))

    def work(_: int) -> list[float]:
        return [source.observe(spec, end).canary.total for _ in range(each)]

    with ThreadPoolExecutor(threads) as pool:
        return [total for totals in pool.map(work, range(threads)) for total in totals]


def test_threads_share_the_pool_and_it_keeps_at_most_pool_size(prometheus, monkeypatch):
    source = PrometheusSource(PrometheusConfig(url=prometheus.url, max_attempts=1))
    pool = source._http.transport
    assert isinstance(pool, DirectPool) and pool.size == prometheus_http.POOL_SIZE
    before = accepted_connections(prometheus)
    # One window for both pools: a window that moved between them could cross a sample.
    end = time.time() - 120
    totals = in_threads(source, prometheus, threads=8, each=20, end=end)
    assert len(totals) == 160 and len(set(totals)) == 1 and totals[0] > 0
    # Never more connections than threads at once, all kept for the next queries.
    assert accepted_connections(prometheus) - before <= 8 + 1  # + the second /metrics read
    assert 1 <= pool.idle <= 8

    # A pool smaller than the threads: connections beyond it are closed when given back.
    monkeypatch.setattr(prometheus_http, "POOL_SIZE", 2)
    small = PrometheusSource(PrometheusConfig(url=prometheus.url, max_attempts=1))
    assert in_threads(small, prometheus, threads=8, each=20, end=end) == totals
    assert isinstance(small._http.transport, DirectPool) and small._http.transport.idle <= 2
