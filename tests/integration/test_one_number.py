"""POST /metrics/analysis, the one-number-per-metric contract, on the backfilled Prometheus:
a template from the wild run by the Argo emulator, values checked against Prometheus' own
arithmetic, labels through each preset's conventions, no data as null, bad input as 422."""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from analysis.durations import format_time
from analysis.one_number import METRICS
from tests.integration.conftest import AUTH, TOKEN
from tests.support.argo import Phase, load_template, run_metric
from tests.support.scenarios import BASELINE_HASH, CANARY_HASH
from worker.query_cap import QueryCap, cap_key

POLICIES = """
policies:
  istio:
    preset: istio
  otel:
    preset: otel
"""

# As such templates are written: one number per metric, judged by Argo.
TEMPLATE = """
apiVersion: argoproj.io/v1alpha1
kind: AnalysisTemplate
metadata:
  name: one-number
spec:
  args:
  - name: service
  - name: canary-hash
  - name: start
  - name: end
  - name: token
  metrics:
  - name: success-rate
    interval: 30s
    count: 5
    successCondition: result >= 99
    provider:
      web:
        url: http://rollout-analyzer.rollout-analyzer.svc:8080/metrics/analysis
        method: POST
        headers: [{key: Authorization, value: "Bearer {{args.token}}"}]
        timeoutSeconds: 10
        jsonPath: "{$.value}"
        jsonBody:
          metricName: http_success_rate
          startTimestamp: "{{args.start}}"
          endTimestamp: "{{args.end}}"
          labels: {service: "{{args.service}}", rollout: "{{args.canary-hash}}"}
  - name: latency-p99
    interval: 30s
    count: 5
    successCondition: result <= 500
    provider:
      web:
        url: http://rollout-analyzer.rollout-analyzer.svc:8080/metrics/analysis
        method: POST
        headers: [{key: Authorization, value: "Bearer {{args.token}}"}]
        timeoutSeconds: 10
        jsonPath: "{$.value}"
        jsonBody:
          metricName: http_latency_p99
          startTimestamp: "{{args.start}}"
          endTimestamp: "{{args.end}}"
          labels: {service: "{{args.service}}", rollout: "{{args.canary-hash}}"}
"""

END = time.time() - 60
START = END - 300


@pytest.fixture(scope="module")
def stack(stack_factory, prometheus, tmp_path_factory):
    policies = tmp_path_factory.mktemp("one-number") / "policies.yaml"
    policies.write_text(POLICIES)
    return stack_factory(
        "one-number",
        prometheus_url=prometheus.url,
        workers=0,  # no verdict, no task: the webhook answers alone
        settings={
            "ROLLOUT_ANALYZER_POLICIES_FILE": str(policies),
            "ROLLOUT_ANALYZER_PROMETHEUS_MAX_CONCURRENT_QUERIES": "2",
            "ROLLOUT_ANALYZER_WAIT_SECONDS": "2",  # how long a call may wait for a query slot
        },
    )


def ask(stack, metric: str, labels: dict, **extra) -> httpx.Response:
    body = {
        "metricName": metric,
        "startTimestamp": format_time(START),
        "endTimestamp": format_time(END),
        "labels": labels,
    }
    with stack.client() as client:
        return client.post("/metrics/analysis", json=body | extra)


def promql(prometheus, expr: str) -> float | None:
    answer = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expr, "time": END})
    result = answer.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def known(value: float | None) -> float:
    """A value the arithmetic needs: Prometheus answered with a sample."""
    assert value is not None
    return value


def run_template(stack, service: str) -> dict[str, tuple[Phase, int]]:
    """Each metric's phase and how many measurements Argo took to reach it."""
    args = {
        "service": service, "canary-hash": CANARY_HASH, "token": TOKEN,
        "start": format_time(START), "end": format_time(END),
    }  # fmt: skip
    phases = {}
    with httpx.Client() as client:
        for metric in load_template(TEMPLATE, args):
            run = run_metric(metric, client, base_url=stack.url, sleep=lambda _: None)
            phases[metric.name] = (run.phase, len(run.measurements))
    return phases


def test_a_one_number_template_works_unchanged(stack):
    assert run_template(stack, "good") == {
        "success-rate": (Phase.SUCCESSFUL, 5), "latency-p99": (Phase.SUCCESSFUL, 5),
    }  # fmt: skip
    assert run_template(stack, "latency") == {
        "success-rate": (Phase.SUCCESSFUL, 5), "latency-p99": (Phase.FAILED, 1),  # p99 > 500 ms
    }  # fmt: skip


def test_no_data_is_null_and_argo_never_passes_it(stack):
    answer = ask(stack, "http_success_rate", {"service": "no-canary", "rollout": CANARY_HASH})

    assert answer.status_code == 200
    assert answer.json() == {"value": None, "unit": "%", "timestamp": format_time(END)}
    # Comparing null with a number is an error to Argo: Error after its 5 consecutive errors.
    phases = run_template(stack, "no-canary")
    assert phases == {"success-rate": (Phase.ERROR, 5), "latency-p99": (Phase.ERROR, 5)}


def http_selector(service: str, side: str = CANARY_HASH) -> str:
    return f'service="{service}", namespace="shop", rollouts_pod_template_hash="{side}"'


def expected_values(prometheus, metric: str, sel: str, requests: str, buckets: str, unit: float):
    """Each metric computed by Prometheus itself, with expressions written independently."""
    total = f"sum(increase({requests}{{{sel}}}[5m]))"
    errors = f'sum(increase({requests}{{{sel}, code=~"5.."}}[5m])) or vector(0)'
    if metric.startswith("http_latency_p"):
        q = int(metric.removeprefix("http_latency_p")) / 100
        value = promql(
            prometheus, f"histogram_quantile({q}, sum by (le) (increase({buckets}{{{sel}}}[5m])))"
        )
        return None if value is None else value * unit
    return {
        "http_success_rate": lambda: 100 * (1 - known(promql(prometheus, f"({errors}) / {total}"))),
        "http_error_rate": lambda: 100 * known(promql(prometheus, f"({errors}) / {total}")),
        "http_request_rate": lambda: promql(prometheus, f"{total} / 300"),
        "error_budget_burn_rate": lambda: promql(prometheus, f"({errors}) / {total} / 0.001"),
    }[metric]()


@pytest.mark.parametrize("metric", list(METRICS))
def test_each_value_is_what_prometheus_computes(stack, prometheus, metric):
    answer = ask(stack, metric, {"service": "errors", "namespace": "shop", "rollout": CANARY_HASH})

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["unit"] == METRICS[metric].unit
    expected = expected_values(
        prometheus, metric, http_selector("errors"), "http_requests_total",
        "http_request_duration_seconds_bucket", 1000.0,
    )  # fmt: skip
    assert body["value"] == pytest.approx(expected, rel=1e-9)


def test_labels_go_through_the_policys_conventions(stack, prometheus):
    labels = {"service": "istio-good", "rollout": CANARY_HASH}
    istio = ask(stack, "http_latency_p99", labels, policy="istio")
    sel = (
        'destination_workload="istio-good", reporter="destination", '
        f'rollouts_pod_template_hash="{CANARY_HASH}"'
    )
    buckets = f"istio_request_duration_milliseconds_bucket{{{sel}}}"
    expected = promql(
        prometheus, f"histogram_quantile(0.99, sum by (le) (increase({buckets}[5m])))"
    )
    assert istio.json()["value"] == pytest.approx(expected, rel=1e-9)  # Istio reports ms already

    otel = ask(
        stack,
        "http_request_rate",
        {"service": "otel-good", "rollout": BASELINE_HASH},
        policy="otel",
    )
    count = "http_server_request_duration_seconds_count"
    sel = f'service_name="otel-good", service_version="{BASELINE_HASH}"'
    assert otel.json()["value"] == pytest.approx(
        promql(prometheus, f"sum(increase({count}{{{sel}}}[5m])) / 300"), rel=1e-9
    )
    assert 45 < otel.json()["value"] < 55  # the baseline's 50 rps


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"metricName": "http_success_ratio"}, "metricName", "unknown metric"),
        ({"labels": {"service": "good", "pod": "x"}}, "labels.pod", "unknown label"),
        ({"labels": {"rollout": CANARY_HASH}}, "labels.service", "required"),
        ({"labels": {"service": 'good"}'}}, "labels.service", "pattern"),
        ({"startTimestamp": format_time(END + 10)}, "startTimestamp", "before endTimestamp"),
        ({"endTimestamp": "yesterday"}, "endTimestamp", "RFC 3339"),
        ({"endTimestamp": format_time(time.time() + 3600)}, "endTimestamp", "future"),
        ({"startTimestamp": "-1e400"}, "startTimestamp", "after 1970"),
        ({"policy": "nope"}, "policy", "unknown policy"),
        ({"window": "5m"}, "window", "not a known field"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(stack, change, field, words):
    body = {
        "metricName": "http_success_rate",
        "startTimestamp": format_time(START),
        "endTimestamp": format_time(END),
        "labels": {"service": "good"},
    }
    with stack.client() as client:
        answer = client.post("/metrics/analysis", json=body | change)
    assert answer.status_code == 422, answer.text
    assert answer.json()["field"] == field
    assert words in answer.json()["message"]


def test_the_workers_query_cap_holds_for_these_queries_too(stack, prometheus):
    client = redis.Redis.from_url(stack.env["ROLLOUT_ANALYZER_REDIS_URL"])
    cap = QueryCap(client, cap_key(stack.env["ROLLOUT_ANALYZER_KEY_PREFIX"], prometheus.url), 2)
    assert cap.try_acquire("worker-a") and cap.try_acquire("worker-b")  # the cap is full
    try:
        busy = ask(stack, "http_success_rate", {"service": "good", "rollout": CANARY_HASH})
    finally:
        cap.release("worker-a")
        cap.release("worker-b")
    assert busy.status_code == 502
    assert (busy.json()["field"], "Prometheus is busy") == ("metrics", busy.json()["message"][:18])
    assert ask(stack, "http_success_rate", {"service": "good"}).status_code == 200


def test_no_token_no_json(stack):
    assert httpx.post(f"{stack.url}/metrics/analysis", json={}).status_code == 401
    with stack.client() as client:
        answer = client.post("/metrics/analysis", content=b"{", headers=AUTH)
    assert (answer.status_code, answer.json()["field"]) == (400, "body")
