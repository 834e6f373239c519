"""Prometheus as a metrics source, with retries that never outlive the caller's budget."""

from __future__ import annotations

import random
import ssl
import time
from dataclasses import dataclass
from typing import Any

from analysis.observation import Observation
from analysis.queries import build_query, parse_vector, split_samples
from analysis.request import AnalysisSpec
from analysis.sources import SourceError
from analysis.sources.prometheus_http import (
    PrometheusAPIError,
    PrometheusHTTP,
    PrometheusHTTPError,
    Sent,
    TLSError,
    TransportError,
)

__all__ = ["PrometheusConfig", "PrometheusHTTPError", "PrometheusSource"]


@dataclass(frozen=True)
class PrometheusConfig:
    url: str
    token: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    cert_file: str | None = None  # client certificate (PEM), for mutual TLS
    key_file: str | None = None  # its key, when not in cert_file
    query_timeout_seconds: float = 5.0
    max_attempts: int = 3

    def ssl_context(self) -> ssl.SSLContext:
        """Our TLS settings for every client (the PromQL pool, httpx, the doctor)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context


# Queries sent ahead and not yet taken: at most this many, none kept longer than this. An
# analysis' task reaches its query within a few milliseconds of its message; a busy worker's
# queued one takes longer and asks again.
AHEAD_KEPT = 16
AHEAD_SECONDS = 5.0


class _Retryable(Exception):
    pass


def _server_timeout(seconds: float) -> str:
    """Prometheus' `timeout` parameter (float seconds): it stops evaluating when we stop
    waiting."""
    return f"{max(seconds, 0.001):.3f}"


def _backoff(made: int) -> float:
    """Seconds to wait after `made` failed attempts: 0.1 s doubling, plus up to 1 s of jitter,
    at most 1 s (exponential backoff with jitter, as Google's storage clients retry)."""
    return min(0.1 * 2.0 ** (made - 1) + random.uniform(0, 1), 1.0)


class PrometheusSource:
    name = "prometheus"

    def __init__(self, config: PrometheusConfig) -> None:
        self.config = config
        # Our own retries (deadline-bound, `_call`); urllib3's know no deadline and are off.
        self._http = PrometheusHTTP(config)
        # Queries sent ahead of their analysis (`send_ahead`), by (expression, time).
        self._ahead: dict[tuple[str, float], Sent] = {}

    def _call(self, what: str, deadline: float | None, fn: Any) -> Any:
        def out_of_attempts(made: int) -> bool:
            if made >= self.config.max_attempts:
                return True
            # Another attempt only while it still fits before the deadline.
            return deadline is not None and time.monotonic() + 0.2 > deadline

        def timeout() -> float:
            budget = self.config.query_timeout_seconds
            if deadline is not None:
                budget = min(budget, max(0.05, deadline - time.monotonic()))
            return budget

        def attempt() -> Any:
            try:
                return fn(timeout())
            except PrometheusHTTPError as exc:
                # 5xx: Prometheus or a proxy is struggling; 429: slow down. Both pass.
                if exc.status_code >= 500 or exc.status_code == 429:
                    raise _Retryable(str(exc)) from exc
                raise SourceError(f"{what} was rejected by Prometheus: {exc}") from exc
            except PrometheusAPIError as exc:
                raise SourceError(f"{what} failed: {str(exc)[:300]}") from exc
            except TLSError as exc:
                # A certificate problem does not heal by retrying.
                raise SourceError(f"{what}: TLS error talking to Prometheus: {exc}") from exc
            except (TransportError, OSError) as exc:
                raise _Retryable(f"{type(exc).__name__}: {str(exc)[:200]}") from exc

        # A retry loop of our own: tenacity's (a Retrying, its call state and actions per call)
        # was ~3 % of a worker's CPU per analysis, for a query that almost never fails. Same
        # schedule as tenacity's wait_exponential_jitter(multiplier=0.1, max=1.0) had.
        made = 0
        while True:
            made += 1
            try:
                return attempt()
            except _Retryable as exc:
                if out_of_attempts(made):
                    raise SourceError(f"{what} failed: {exc}") from exc
            time.sleep(_backoff(made))

    def observe(
        self,
        spec: AnalysisSpec,
        end: float,
        deadline: float | None = None,
        seconds: float | None = None,
    ) -> Observation:
        span = spec.window_seconds if seconds is None else seconds
        query = build_query(spec, span)
        ahead = self._ahead.pop((query.expr, end), None)

        answered_ahead = False

        def fetch(timeout: float) -> Any:
            nonlocal ahead, answered_ahead
            sent, ahead = ahead, None  # the first attempt's; a retry asks again
            fields = {"query": query.expr, "time": end, "timeout": _server_timeout(timeout)}
            result = self._http.query("/api/v1/query", fields, timeout, sent)
            answered_ahead = sent is not None and sent.answered
            return result

        try:
            series = self._call("the analysis query", deadline, fetch)
        finally:
            if ahead is not None:
                ahead.close()
        canary, baseline = parse_vector(query, series)
        return Observation(
            end, span, canary, baseline, (query.expr,), 1, self.name, sent_ahead=answered_ahead
        )

    def send_ahead(
        self, spec: AnalysisSpec, end: float, seconds: float | None = None, *, most: int = 1
    ) -> bool:
        """Send now the query `observe(spec, end, seconds=seconds)` will make, so that it runs
        while the caller's analysis is still being handed over (worker/ahead.py); False when it
        cannot go without waiting, or `most` answers already wait for their callers. An answer
        nobody takes is dropped after AHEAD_SECONDS."""
        if len(self._ahead) >= most:
            self._drop_stale(time.monotonic())
            if len(self._ahead) >= most:
                return False
        span = spec.window_seconds if seconds is None else seconds
        expr = build_query(spec, span).expr
        timeout = _server_timeout(self.config.query_timeout_seconds)
        fields = {"query": expr, "time": end, "timeout": timeout}
        sent = self._http.send_ahead("/api/v1/query", fields)
        if sent is None:
            return False
        self._drop_stale(sent.at)
        previous = self._ahead.pop((expr, end), None)
        if previous is not None:
            previous.close()
        self._ahead[(expr, end)] = sent
        return True

    def _drop_stale(self, now: float) -> None:
        """Answers sent ahead and never taken (their analysis ran elsewhere, or not at all): at
        most AHEAD_KEPT, none older than AHEAD_SECONDS."""
        pending = sorted(self._ahead.items(), key=lambda item: item[1].at)
        for number, (key, sent) in enumerate(pending):
            stale = now - sent.at > AHEAD_SECONDS or len(pending) - number >= AHEAD_KEPT
            if stale and self._ahead.pop(key, None) is sent:
                sent.close()

    def samples(
        self, expr: str, at: float, deadline: float | None = None
    ) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of an instant query's vector: one round trip."""
        series = self._call(
            "the query",
            deadline,
            lambda t: self._http.query("/api/v1/query", {"query": expr, "time": at}, t),
        )
        return [(s["metric"], float(s["value"][1])) for s in series]

    def observe_range(
        self,
        spec: AnalysisSpec,
        start: float,
        end: float,
        step: float,
        seconds: float | None = None,
    ) -> list[Observation]:
        """Every `step` from `start` to `end`, each over `seconds` (default: the spec's window)."""
        span = spec.window_seconds if seconds is None else seconds
        query = build_query(spec, span)
        range_timeout = max(self.config.query_timeout_seconds, 30.0)

        def fetch(timeout: float) -> Any:
            fields = {
                "query": query.expr,
                "start": start,
                "end": end,
                "step": step,
                "timeout": _server_timeout(range_timeout),
            }
            return self._http.query("/api/v1/query_range", fields, range_timeout)

        matrix = self._call("the replay range query", None, fetch)
        by_time: dict[float, list[tuple[dict[str, str], float]]] = {}
        for series in matrix:
            for ts, value in series["values"]:
                by_time.setdefault(round(float(ts), 3), []).append((series["metric"], float(value)))
        steps = round((end - start) / step) + 1
        observations = []
        for i in range(steps):
            ts = start + i * step
            canary, baseline = split_samples(query, by_time.get(round(ts, 3), []))
            # The whole replay cost one round trip; it is booked on the first point.
            trips = 1 if i == 0 else 0
            observations.append(
                Observation(ts, span, canary, baseline, (query.expr,), trips, self.name)
            )
        return observations

    def latest_time(self, spec: AnalysisSpec, now: float) -> float:
        return now
