"""The baseline: what Argo's built-in Prometheus provider sends for the same metric set.

One PromQL instant query per metric and side: success rate and p50/p90/p95/p99
(`histogram_quantile`) for canary and baseline, ten queries, issued one after another with the
same client library (prometheus-api-client) against the same Prometheus.
"""

from __future__ import annotations

from prometheus_api_client import PrometheusConnect

QUANTILES = (0.5, 0.9, 0.95, 0.99)


def naive_queries(service: str, namespace: str, canary: str, baseline: str) -> list[str]:
    queries = []
    for side in (canary, baseline):
        sel = f'service="{service}",namespace="{namespace}",rollouts_pod_template_hash="{side}"'
        queries.append(
            f'sum(increase(http_requests_total{{{sel},code!~"5.."}}[5m]))'
            f" / sum(increase(http_requests_total{{{sel}}}[5m]))"
        )
        for q in QUANTILES:
            queries.append(
                f"histogram_quantile({q}, sum by (le) "
                f"(increase(http_request_duration_seconds_bucket{{{sel}}}[5m])))"
            )
    return queries


def run_naive(client: PrometheusConnect, queries: list[str], end: float) -> list[float]:
    """Issue the queries sequentially; return the ten values (NaN when a side has no data)."""
    values = []
    for query in queries:
        result = client.custom_query(query, params={"time": end})
        values.append(float(result[0]["value"][1]) if result else float("nan"))
    return values
