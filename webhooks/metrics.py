"""Our own RED metrics and analysis counters, in Prometheus' naming conventions."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 8, 10, 30)


class WebhookMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "rollout_analyzer_http_requests", "HTTP requests served.",
            ["method", "route", "code"], registry=r,
        )  # fmt: skip
        self.request_duration = Histogram(
            "rollout_analyzer_http_request_duration_seconds", "Time to answer an HTTP request.",
            ["route"], buckets=_LATENCY_BUCKETS, unit="seconds", registry=r,
        )  # fmt: skip
        self.verdicts = Counter(
            "rollout_analyzer_verdicts_served", "Verdicts returned to callers.", ["verdict"],
            registry=r,
        )  # fmt: skip
        self.analyses = Counter(
            "rollout_analyzer_analyses", "Analyses completed that this process started.",
            ["verdict"], registry=r,
        )  # fmt: skip
        self.analysis_duration = Histogram(
            "rollout_analyzer_analysis_duration_seconds", "Worker time of one analysis.",
            buckets=_LATENCY_BUCKETS, unit="seconds", registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "rollout_analyzer_queue_wait_seconds", "Time an analysis waited for a worker.",
            buckets=_LATENCY_BUCKETS, unit="seconds", registry=r,
        )  # fmt: skip
        self.dedup_hits = Counter(
            "rollout_analyzer_dedup_hits", "Calls answered by an analysis already started.",
            registry=r,
        )  # fmt: skip
        self.pending = Counter(
            "rollout_analyzer_pending_answers", "503 answers: the analysis was not done in time.",
            registry=r,
        )  # fmt: skip
        self.store_errors = Counter(
            "rollout_analyzer_store_errors", "Calls that failed because Redis was unreachable.",
            registry=r,
        )  # fmt: skip
        self.late_claims = Counter(
            "rollout_analyzer_late_claims",
            "503 answers at the deadline while the claim or enqueue still ran (it ran on).",
            registry=r,
        )  # fmt: skip
