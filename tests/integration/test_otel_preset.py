"""The `otel` preset on backfilled data in OpenTelemetry's shape (tests/support/scenarios.py):
no request counter, one duration histogram per status code, `service_version` telling canary
and baseline apart, and a third of the errors without any status code (`error_type` instead).
Verdicts of the otel scenarios through Argo are in test_core_e2e.py."""

from __future__ import annotations

import pytest

from analysis.policy import Policy

POLICIES = """
policies:
  otel:
    preset: otel
  otel-by-job:
    preset: otel
    metrics: {service_label: job}
  otel-status-only:
    preset: otel
    metrics: {error_regex: "5.."}
"""


@pytest.fixture(scope="module")
def stack(stack_factory, prometheus, tmp_path_factory):
    policies = tmp_path_factory.mktemp("otel") / "policies.yaml"
    policies.write_text(POLICIES)
    return stack_factory(
        "otel",
        prometheus_url=prometheus.url,
        workers=1,
        settings={"ROLLOUT_ANALYZER_POLICIES_FILE": str(policies)},
    )


def analyse(stack, prometheus, name: str, **extra) -> dict:
    scenario = prometheus.scenarios[name]
    body = {
        "service": scenario.service,
        "namespace": scenario.namespace,
        "canary": scenario.canary.selector if scenario.canary else "6d4f8b7c9a",
        "baseline": scenario.baseline.selector,
        "policy": "otel",
    }
    with stack.client() as client:
        answer = client.post("/v1/analyze", json=body | extra)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_one_query_reads_the_histograms_count_by_status_and_its_buckets(stack, prometheus):
    result = analyse(stack, prometheus, "otel-good")

    assert result["verdict"] == "pass", result["reasons"]
    assert result["source"]["round_trips"] == 1
    [query] = result["source"]["queries"]
    assert "sum by (service_version, http_response_status_code) (increase(" in query
    assert "http_server_request_duration_seconds_count{service_name=" in query
    assert "sum by (service_version, le) (increase(" in query
    assert 'k8s_namespace_name="shop"' in query
    assert 4000 < result["requests"]["canary"] < 6000  # ~16.7 rps over 5 m, from `_count`
    assert 0.05 < result["metrics"]["latency_seconds"]["p50"]["canary"] < 0.12  # median 80 ms


def test_a_request_without_a_status_code_is_an_error(stack, prometheus):
    """1 % errors: 0.7 % answered 500, 0.3 % never got a status (`error_type="timeout"`)."""
    every = analyse(stack, prometheus, "otel-errors")
    status_only = analyse(stack, prometheus, "otel-errors", policy="otel-status-only")

    assert every["verdict"] == "fail"
    ratio = every["errors"]["canary"] / every["requests"]["canary"]
    ratio_by_status = status_only["errors"]["canary"] / status_only["requests"]["canary"]
    assert 0.0085 < ratio < 0.0115
    assert 0.0055 < ratio_by_status < 0.0085  # without the empty-status rule, 0.3 % is lost


def test_the_service_may_be_found_by_job(stack, prometheus):
    result = analyse(
        stack, prometheus, "otel-errors", service="shop/otel-errors", policy="otel-by-job"
    )

    assert result["verdict"] == "fail"
    assert 'job="shop/otel-errors"' in result["source"]["queries"][0]


def test_no_canary_data_is_inconclusive_with_nulls(stack, prometheus):
    result = analyse(stack, prometheus, "otel-no-canary")

    assert result["verdict"] == "inconclusive"
    assert result["requests"]["canary"] == 0
    assert result["metrics"]["success_rate"]["canary"] is None
    assert result["metrics"]["latency_seconds"]["p99"]["canary"] is None


def test_the_preset_conventions() -> None:
    conventions = Policy(preset="otel").conventions
    assert conventions.requests_metric == "http_server_request_duration_seconds_count"
    assert (conventions.is_error("503"), conventions.is_error(""), conventions.is_error("404")) == (
        True, True, False,
    )  # fmt: skip
    moved = Policy(preset="otel", metrics={"selector_label": "deployment_revision"})
    assert moved.conventions.selector_label == "deployment_revision"
