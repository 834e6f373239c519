"""Prometheus behind TLS, as worker, CLI and doctor reach it: a real TLS endpoint (certificates
made in the test with openssl) in front of the real Prometheus. Refused without the CA,
accepted with it, accepted with PROMETHEUS_INSECURE; a client certificate where one is asked.
And the status codes of Prometheus' answers, told apart by number."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from analysis.policy import PolicySet
from analysis.request import parse_request, resolve
from analysis.sources import SourceError
from analysis.sources.prometheus import PrometheusConfig, PrometheusSource
from tests.integration.test_cli import run_cli, sides
from tests.support.proxy import FaultyProxy
from tests.support.tls import Certs, make_certs, server_context

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https(prometheus, certs) -> Iterator[FaultyProxy]:
    with FaultyProxy(prometheus.url, tls=server_context(certs)) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def mutual(prometheus, certs) -> Iterator[FaultyProxy]:
    tls = server_context(certs, require_client_cert=True)
    with FaultyProxy(prometheus.url, tls=tls) as proxy:
        yield proxy


@pytest.fixture
def plain(prometheus) -> Iterator[FaultyProxy]:
    with FaultyProxy(prometheus.url) as proxy:
        yield proxy


def spec(prometheus, name: str = "errors"):
    scenario = prometheus.scenarios[name]
    body = {"service": scenario.service, "namespace": scenario.namespace,
            "canary": "6d4f8b7c9a", "baseline": "5c8d7e6f4b"}  # fmt: skip
    return resolve(parse_request(body), PolicySet.load(None))


def observe(prometheus, url: str, **tls) -> int:
    source = PrometheusSource(PrometheusConfig(url=url, max_attempts=1, **tls))
    observation = source.observe(spec(prometheus), time.time() - 120)
    return observation.round_trips


def test_the_source_refuses_an_unknown_ca_and_accepts_ca_or_insecure(prometheus, https, certs):
    with pytest.raises(SourceError, match="TLS error") as refused:
        observe(prometheus, https.url)
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    assert observe(prometheus, https.url, ca_file=str(certs.ca)) == 1
    assert observe(prometheus, https.url, insecure=True) == 1


def test_a_client_certificate_where_the_server_asks_for_one(prometheus, mutual, certs):
    with pytest.raises(SourceError):
        observe(prometheus, mutual.url, ca_file=str(certs.ca))
    with_cert = {"cert_file": str(certs.client_cert), "key_file": str(certs.client_key)}
    assert observe(prometheus, mutual.url, ca_file=str(certs.ca), **with_cert) == 1


def test_the_cli_honours_the_tls_settings(prometheus, https, certs):
    args = ["analyze", "--prometheus", https.url, *sides(prometheus, "errors"), "--end", "-2m"]
    refused = run_cli(*args)
    assert refused.returncode == 3 and "TLS error" in refused.stderr, refused.stderr
    with_ca = run_cli(*args, env={"ROLLOUT_ANALYZER_PROMETHEUS_CA_FILE": str(certs.ca)})
    insecure = run_cli(*args, env={"ROLLOUT_ANALYZER_PROMETHEUS_INSECURE": "true"})
    assert (with_ca.returncode, insecure.returncode) == (1, 1), (with_ca.stderr, insecure.stderr)
    assert with_ca.stdout.startswith("fail") and insecure.stdout.startswith("fail")


def test_doctor_judges_reachability_with_the_same_settings(https, mutual, certs):
    def prometheus_line(url: str, **env: str) -> str:
        result = run_cli("doctor", "--prometheus", url, env=env)
        return next(line for line in result.stdout.splitlines() if " prometheus:" in line)

    refused = prometheus_line(https.url)
    assert refused.startswith("FAIL prometheus:") and "CERTIFICATE_VERIFY_FAILED" in refused
    ca = {"ROLLOUT_ANALYZER_PROMETHEUS_CA_FILE": str(certs.ca)}
    assert prometheus_line(https.url, **ca).startswith("ok   prometheus:")
    cert = {"ROLLOUT_ANALYZER_PROMETHEUS_CERT_FILE": str(certs.client_cert),
            "ROLLOUT_ANALYZER_PROMETHEUS_KEY_FILE": str(certs.client_key)}  # fmt: skip
    assert prometheus_line(mutual.url, **ca, **cert).startswith("ok   prometheus:")


def test_the_worker_honours_insecure(stack_factory, prometheus, https, certs):
    """The reported bug: the worker always passed a session, and the client then ignored
    `disable_ssl`, so PROMETHEUS_INSECURE did nothing there (while doctor said all was well)."""
    insecure = stack_factory(
        "tls-insecure",
        prometheus_url=https.url,
        workers=1,
        settings={"ROLLOUT_ANALYZER_PROMETHEUS_INSECURE": "true"},
    )
    body = {"service": "errors", "namespace": "shop", "canary": "6d4f8b7c9a",
            "baseline": "5c8d7e6f4b"}  # fmt: skip
    with insecure.client() as client:
        answer = client.post("/v1/analyze", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["verdict"] == "fail"
    insecure.stop()


# --- status codes, the server-side timeout, one round trip ---------------------------------------


@pytest.mark.parametrize(("status", "tries"), [(503, 3), (500, 3), (429, 3), (400, 1), (422, 1)])
def test_5xx_and_429_are_retried_other_4xx_are_not(prometheus, plain, status, tries):
    plain.faults.status = status
    source = PrometheusSource(PrometheusConfig(url=plain.url, max_attempts=3))
    with pytest.raises(SourceError) as failed:
        source.observe(spec(prometheus), time.time() - 120)
    assert len(plain.requests) == tries
    assert f"HTTP {status}" in str(failed.value)
    assert ("rejected" in str(failed.value)) == (tries == 1)


def test_one_round_trip_with_prometheus_timeout_and_exact_range_bounds(prometheus, plain):
    source = PrometheusSource(PrometheusConfig(url=plain.url, query_timeout_seconds=4))
    source.observe(spec(prometheus), time.time() - 120, deadline=time.monotonic() + 2)
    (instant,) = plain.requests
    assert plain.methods == ["POST"]  # the query as a form: nothing to encode into the URL
    assert instant.startswith("/api/v1/query?") and "timeout=" in instant
    timeout = float(instant.split("timeout=", 1)[1].split("&", 1)[0])
    assert 0 < timeout <= 2  # the caller's deadline, not more

    start = prometheus.data_end - 1800.25
    points = source.observe_range(spec(prometheus), start, start + 600, 60)
    assert len(plain.requests) == 2 and len(points) == 11
    ranged = plain.requests[1]
    assert ranged.startswith("/api/v1/query_range?") and "timeout=" in ranged
    assert f"start={start}" in ranged  # not rounded to whole seconds
    assert points[0].round_trips == 1 and sum(p.round_trips for p in points) == 1


def test_a_server_that_refuses_post_is_asked_with_get(prometheus, plain):
    """Some read-only proxies answer 405 to a POST: the source asks again with GET, and keeps to
    GET afterwards (Prometheus' own Go client falls back the same way)."""
    plain.faults.refuse_post = True
    source = PrometheusSource(PrometheusConfig(url=plain.url, max_attempts=1))
    first = source.observe(spec(prometheus), time.time() - 120)
    second = source.observe(spec(prometheus), time.time() - 120)
    assert plain.methods == ["POST", "GET", "GET"]
    assert first.canary.total > 0 and second.canary.total == first.canary.total
    assert plain.requests[1].startswith("/api/v1/query?query=") and "timeout=" in plain.requests[1]


def test_a_200_that_is_not_a_prometheus_answer_is_an_error_not_a_verdict(prometheus, plain):
    plain.faults.body = b"<html>login page</html>"
    source = PrometheusSource(PrometheusConfig(url=plain.url, max_attempts=3))
    with pytest.raises(SourceError) as failed:
        source.observe(spec(prometheus), time.time() - 120)
    assert "unexpected answer" in str(failed.value)
    assert len(plain.requests) == 1  # not retried: the same page would come back
