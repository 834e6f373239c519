"""Prometheus through prometheus-api-client, with retries that never outlive the caller's budget."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter
from urllib3.util.retry import Retry

from analysis.observation import Observation
from analysis.queries import build_query, parse_vector, split_samples
from analysis.request import AnalysisSpec
from analysis.sources import SourceError


@dataclass(frozen=True)
class PrometheusConfig:
    url: str
    token: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    query_timeout_seconds: float = 5.0
    max_attempts: int = 3


class _Retryable(Exception):
    pass


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, _Retryable)


class PrometheusSource:
    name = "prometheus"

    def __init__(self, config: PrometheusConfig) -> None:
        self.config = config
        session = requests.Session()
        if config.ca_file:
            session.verify = config.ca_file
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else None
        auth = (config.username, config.password or "") if config.username else None
        # Our own retries (tenacity, deadline-bound) replace urllib3's, which know no deadline.
        self._client = PrometheusConnect(
            url=config.url.rstrip("/"),
            headers=headers,
            disable_ssl=config.insecure,
            retry=Retry(total=0, status_forcelist=[], raise_on_status=False),
            auth=auth,
            session=session,
        )

    def _call(self, what: str, deadline: float | None, fn: Any) -> Any:
        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= self.config.max_attempts:
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
            except PrometheusApiClientException as exc:
                text = str(exc)
                if "Status Code 5" in text or "Status Code 429" in text:
                    raise _Retryable(text[:300]) from exc
                raise SourceError(f"{what} was rejected by Prometheus: {text[:300]}") from exc
            except requests.RequestException as exc:
                raise _Retryable(f"{type(exc).__name__}: {str(exc)[:200]}") from exc

        try:
            for try_ in Retrying(
                stop=stop,
                wait=wait_exponential_jitter(initial=0.1, max=1.0),
                retry=retry_if_exception(_is_retryable),
                reraise=True,
            ):
                with try_:
                    return attempt()
        except _Retryable as exc:
            raise SourceError(f"{what} failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def observe(
        self,
        spec: AnalysisSpec,
        end: float,
        deadline: float | None = None,
        seconds: float | None = None,
    ) -> Observation:
        span = spec.window_seconds if seconds is None else seconds
        query = build_query(spec, span)
        series = self._call(
            "the analysis query",
            deadline,
            lambda t: self._client.custom_query(query.expr, params={"time": end}, timeout=t),
        )
        canary, baseline = parse_vector(query, series)
        return Observation(end, span, canary, baseline, (query.expr,), 1, self.name)

    def samples(
        self, expr: str, at: float, deadline: float | None = None
    ) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of an instant query's vector: one round trip."""
        series = self._call(
            "the query",
            deadline,
            lambda t: self._client.custom_query(expr, params={"time": at}, timeout=t),
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
        params = {"query": query.expr, "start": start, "end": end, "step": step}

        def fetch(timeout: float) -> Any:
            # custom_query_range insists on datetimes; the raw endpoint takes unix seconds.
            response = self._client._session.get(
                f"{self._client.url}/api/v1/query_range",
                params=params,
                headers=self._client.headers,
                auth=self._client.auth,
                verify=self._client._session.verify,
                timeout=max(timeout, 30.0),
            )
            if response.status_code != 200:
                raise PrometheusApiClientException(
                    f"HTTP Status Code {response.status_code} ({response.content[:300]!r})"
                )
            return response.json()["data"]["result"]

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
