"""The shared fixtures run real servers holding the data the scenarios promise."""

from __future__ import annotations

import math
import socket
import time
from typing import Any

import httpx
import pytest
import redis

from tests.support.procs import PrometheusServer, RedisServer, wait_for
from tests.support.scenarios import (
    BASELINE_HASH,
    CANARY_HASH,
    DATA_END,
    DATA_START,
    SCENARIOS,
    STEP_SECONDS,
    render_openmetrics,
)

pytestmark = pytest.mark.integration


def instant(prom: PrometheusServer, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": expr, "time": f"{time.time() if at is None else at:.3f}"}
    response = httpx.get(f"{prom.url}/api/v1/query", params=params, timeout=10)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def by_side(result: list[dict[str, Any]], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s["metric"].get(k, "") for k in labels): float(s["value"][1]) for s in result}


def requests_5m(prom: PrometheusServer, service: str, at: float | None = None) -> dict[str, float]:
    expr = (
        "sum by (rollouts_pod_template_hash) "
        f'(increase(http_requests_total{{service="{service}",namespace="shop"}}[5m]))'
    )
    return {
        k[0]: v for k, v in by_side(instant(prom, expr, at), "rollouts_pod_template_hash").items()
    }


def test_good_scenario_has_5000_canary_and_15000_baseline_requests_in_5m(
    prometheus: PrometheusServer,
) -> None:
    expr = (
        "sum by (rollouts_pod_template_hash, code) "
        '(increase(http_requests_total{service="good",namespace="shop"}[5m]))'
    )
    series = by_side(instant(prometheus, expr), "rollouts_pod_template_hash", "code")
    assert {code for _, code in series} == {"200", "404", "500", "503"}
    canary = sum(v for (side, _), v in series.items() if side == CANARY_HASH)
    baseline = sum(v for (side, _), v in series.items() if side == BASELINE_HASH)
    assert canary == pytest.approx(5000, rel=0.15)
    assert baseline == pytest.approx(15000, rel=0.15)
    canary_errors = series[(CANARY_HASH, "500")] + series[(CANARY_HASH, "503")]
    assert canary_errors / canary == pytest.approx(0.001, rel=0.5)


def test_error_regression_shows_ten_times_the_baseline_error_ratio(
    prometheus: PrometheusServer,
) -> None:
    expr = (
        "sum by (rollouts_pod_template_hash) "
        '(increase(http_requests_total{service="errors",code=~"5.."}[5m])) '
        "/ sum by (rollouts_pod_template_hash) "
        '(increase(http_requests_total{service="errors"}[5m]))'
    )
    ratios = {
        k[0]: v for k, v in by_side(instant(prometheus, expr), "rollouts_pod_template_hash").items()
    }
    assert ratios[CANARY_HASH] == pytest.approx(0.01, rel=0.1)
    assert ratios[BASELINE_HASH] == pytest.approx(0.001, rel=0.3)


def quantiles(prom: PrometheusServer, q: float, service: str) -> dict[str, float]:
    expr = (
        f"histogram_quantile({q}, sum by (rollouts_pod_template_hash, le) "
        f'(increase(http_request_duration_seconds_bucket{{service="{service}"}}[5m])))'
    )
    return {k[0]: v for k, v in by_side(instant(prom, expr), "rollouts_pod_template_hash").items()}


def test_histogram_quantile_reads_the_log_normal_latencies(prometheus: PrometheusServer) -> None:
    # Baseline: median 80 ms, sigma 0.6 -> p99 = 0.08 * e^(2.326 * 0.6) = 0.32 s.
    p50 = quantiles(prometheus, 0.5, "good")
    p99 = quantiles(prometheus, 0.99, "good")
    for side in (CANARY_HASH, BASELINE_HASH):
        assert 0.05 < p50[side] <= 0.1
        assert 0.25 < p99[side] <= 0.5
    slow_p50 = quantiles(prometheus, 0.5, "latency")
    slow_p99 = quantiles(prometheus, 0.99, "latency")
    assert slow_p50[CANARY_HASH] == pytest.approx(2 * slow_p50[BASELINE_HASH], rel=0.25)
    assert slow_p99[CANARY_HASH] == pytest.approx(2 * slow_p99[BASELINE_HASH], rel=0.25)
    # Tail regression: the median barely moves, p99 is several times the baseline's.
    tail_p50 = quantiles(prometheus, 0.5, "tail")
    tail_p99 = quantiles(prometheus, 0.99, "tail")
    assert tail_p50[CANARY_HASH] == pytest.approx(tail_p50[BASELINE_HASH], rel=0.15)
    assert tail_p99[CANARY_HASH] > 3 * tail_p99[BASELINE_HASH]


def test_buckets_are_monotonic_in_le_and_count_equals_inf_bucket(
    prometheus: PrometheusServer,
) -> None:
    at = time.time()  # one instant for the three reads: a later one may see a newer sample
    buckets = instant(prometheus, 'http_request_duration_seconds_bucket{service="tail"}', at)
    counts = instant(prometheus, 'http_request_duration_seconds_count{service="tail"}', at)
    requests = instant(
        prometheus,
        'sum by (rollouts_pod_template_hash) (http_requests_total{service="tail"})',
        at,
    )
    totals = by_side(requests, "rollouts_pod_template_hash")
    for side in (CANARY_HASH, BASELINE_HASH):
        ladder = sorted(
            (float(s["metric"]["le"]), float(s["value"][1]))
            for s in buckets
            if s["metric"]["rollouts_pod_template_hash"] == side
        )
        assert len(ladder) == 12 and math.isinf(ladder[-1][0])
        values = [v for _, v in ladder]
        assert values == sorted(values)
        count = by_side(counts, "rollouts_pod_template_hash")[(side,)]
        assert values[-1] == count == totals[(side,)]


def test_counters_never_decrease_over_the_whole_data(prometheus: PrometheusServer) -> None:
    # resets() counts every drop between consecutive samples; the data must have none.
    assert prometheus.data_start is not None
    span = int((time.time() - prometheus.data_start) // 60) * 60
    for metric in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "istio_requests_total",
        "istio_request_duration_milliseconds_bucket",
    ):
        result = instant(prometheus, f"max(resets({metric}[{span}s]))")
        assert float(result[0]["value"][1]) == 0, metric


def test_istio_latency_is_in_milliseconds(prometheus: PrometheusServer) -> None:
    expr = (
        "histogram_quantile(0.5, sum by (rollouts_pod_template_hash, le) (increase("
        'istio_request_duration_milliseconds_bucket{reporter="destination",'
        'destination_workload="istio-good",destination_workload_namespace="shop"}[5m])))'
    )
    p50 = by_side(instant(prometheus, expr), "rollouts_pod_template_hash")
    assert set(p50) == {(CANARY_HASH,), (BASELINE_HASH,)}
    assert all(50 < value <= 100 for value in p50.values())  # 80 ms median
    ratio = by_side(
        instant(
            prometheus,
            "sum by (rollouts_pod_template_hash) (increase(istio_requests_total"
            '{destination_workload="istio-errors",response_code=~"5.."}[5m])) '
            "/ sum by (rollouts_pod_template_hash) (increase(istio_requests_total"
            '{destination_workload="istio-errors"}[5m]))',
        ),
        "rollouts_pod_template_hash",
    )
    assert ratio[(CANARY_HASH,)] == pytest.approx(0.01, rel=0.1)
    assert ratio[(BASELINE_HASH,)] == pytest.approx(0.001, rel=0.3)


def test_no_data_scenarios_lack_exactly_one_side(prometheus: PrometheusServer) -> None:
    for metric in ("http_requests_total", "http_request_duration_seconds_bucket"):
        for service, present, absent in (
            ("no-canary", BASELINE_HASH, CANARY_HASH),
            ("no-baseline", CANARY_HASH, BASELINE_HASH),
        ):
            result = instant(
                prometheus,
                f'count by (rollouts_pod_template_hash) ({metric}{{service="{service}"}})',
            )
            sides = {s["metric"]["rollouts_pod_template_hash"] for s in result}
            assert sides == {present}, (metric, service)
            # Over all the data, not just now: the missing side never had a series.
            absent_side = f'{metric}{{service="{service}",rollouts_pod_template_hash="{absent}"}}'
            series = httpx.get(
                f"{prometheus.url}/api/v1/series",
                params={
                    "match[]": absent_side,
                    "start": str(prometheus.data_start),
                    "end": str(prometheus.data_end),
                },
                timeout=10,
            ).json()
            assert series["status"] == "success" and series["data"] == []


def test_low_traffic_canary_has_about_20_requests(prometheus: PrometheusServer) -> None:
    counts = requests_5m(prometheus, "low-traffic")
    assert 10 <= counts[CANARY_HASH] <= 30
    assert counts[BASELINE_HASH] == pytest.approx(15000, rel=0.15)


def test_degrading_canary_is_good_before_the_change_and_bad_after(
    prometheus: PrometheusServer,
) -> None:
    scenario = prometheus.scenarios["degrades"]
    assert scenario.changes_at is not None
    canary = f'service="degrades",rollouts_pod_template_hash="{CANARY_HASH}"'
    expr = (
        f'sum(increase(http_requests_total{{{canary},code=~"5.."}}[5m])) '
        f"/ sum(increase(http_requests_total{{{canary}}}[5m]))"
    )
    before = float(instant(prometheus, expr, at=scenario.changes_at - 10 * 60)[0]["value"][1])
    after = float(instant(prometheus, expr, at=scenario.changes_at + 10 * 60)[0]["value"][1])
    assert before == pytest.approx(0.001, rel=0.5)
    assert after == pytest.approx(0.01, rel=0.1)


def test_query_log_records_the_promql_that_was_evaluated(prometheus: PrometheusServer) -> None:
    marker = f'count(http_requests_total{{service="good",code="{time.time_ns()}"}})'
    instant(prometheus, marker)
    wait_for(lambda: marker in prometheus.queries(), 5, "the query to appear in the query log")


def test_each_instant_query_is_one_counted_round_trip(prometheus: PrometheusServer) -> None:
    before = prometheus.http_requests_total("/api/v1/query")
    for done in range(1, 6):
        instant(prometheus, 'sum(http_requests_total{service="good"})')
        assert prometheus.http_requests_total("/api/v1/query") == before + done
    # Reading /metrics or other endpoints does not count as a query.
    httpx.get(f"{prometheus.url}/api/v1/labels", timeout=10).raise_for_status()
    assert prometheus.http_requests_total("/api/v1/query") == before + 5


def test_data_window_spans_two_hours_back_to_one_hour_ahead(prometheus: PrometheusServer) -> None:
    assert prometheus.data_start is not None and prometheus.data_end is not None
    # Made when the suite was collected (tests/support/scenarios.py): 2 h back, 1 h ahead.
    assert prometheus.data_end - prometheus.data_start == 3 * 3600
    now = time.time()
    assert prometheus.data_start <= now - 2 * 3600 + STEP_SECONDS
    # Still far past now however long the suite has run so far (18 minutes on a slow host):
    # the tests after this one read "now" and a little ahead of it.
    assert prometheus.data_end >= now + 30 * 60
    # The newest sample Prometheus returns "at now" is at most one step old.
    result = instant(prometheus, 'timestamp(http_requests_total{service="good",code="200"})')
    assert all(now - float(s["value"][1]) <= STEP_SECONDS for s in result)
    assert len(result) == 2


def test_redis_restarts_on_the_same_port_without_its_data(redis_server: RedisServer) -> None:
    # A server of its own: stopping the session one would disturb other tests.
    server = RedisServer(work_dir=redis_server.work_dir.parent / "restart").start()
    try:
        client = redis.Redis(port=server.port, socket_timeout=5)
        client.set("k", "v")
        port = server.port
        server.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        server.start()
        assert server.port == port
        assert client.ping()
        assert client.get("k") is None  # --save '' : nothing survives a restart
        server.kill()
        assert not server.running
        server.start()
        assert redis.Redis(port=port).ping()
    finally:
        server.kill()


def test_redis_flushed_gives_an_empty_database(redis_flushed: RedisServer) -> None:
    client = redis.Redis.from_url(redis_flushed.url)
    assert client.dbsize() == 0
    client.set("left-over", 1)


def test_redis_flushed_again_after_a_test_wrote_to_it(redis_flushed: RedisServer) -> None:
    assert redis.Redis.from_url(redis_flushed.url).dbsize() == 0


def test_rendered_openmetrics_is_integer_monotonic_and_consistent() -> None:
    # Checks every sample promtool is given, not only what one query happens to look at.
    text = render_openmetrics(SCENARIOS, DATA_START, DATA_END)
    lines = text.splitlines()
    assert lines[-1] == "# EOF" and "# EOF" not in lines[:-1]
    assert [ln for ln in lines if ln.startswith("# TYPE")] == [
        "# TYPE http_requests counter",
        "# TYPE http_request_duration_seconds histogram",
        "# TYPE istio_requests counter",
        "# TYPE istio_request_duration_milliseconds histogram",
        "# TYPE http_server_request_duration_seconds histogram",
    ]
    last: dict[str, tuple[float, float]] = {}  # series -> (timestamp, value)
    ladder: dict[tuple[str, float], list[float]] = {}  # (series without le, ts) -> bucket values
    counts: dict[tuple[str, float], float] = {}
    for line in lines:
        if line.startswith("#"):
            continue
        series, value_text, ts_text = line.rsplit(" ", 2)
        value, ts = float(value_text), float(ts_text)
        if not series.split("{")[0].endswith("_sum"):
            assert value == int(value_text), line
        if series in last:
            prev_ts, prev_value = last[series]
            assert ts == prev_ts + STEP_SECONDS and value >= prev_value, line
        last[series] = (ts, value)
        if "_bucket{" in series:
            base = series.replace("_bucket{", "{").rsplit(',le="', 1)[0]
            ladder.setdefault((base, ts), []).append(value)
        elif "_count{" in series:
            counts[(series.replace("_count{", "{").rstrip("}"), ts)] = value
    assert ladder and ladder.keys() == counts.keys()
    for key, values in ladder.items():
        assert len(values) == 12 and values == sorted(values) and values[-1] == counts[key], key
