"""For `tests/perf/ab.py` (a configuration's `pythonpath`): the services of that side answer each
PromQL query from memory after its first answer (the same expression, whatever the time), so the
side times everything of ours except the PromQL exchange: what the hop, the judge and the
bookkeeping cost, as a bound on what any cut outside the query can win. Bench use only."""

from __future__ import annotations

import runpy
from pathlib import Path
from typing import Any

import analysis.sources.prometheus_http as prometheus_http

_query = prometheus_http.PrometheusHTTP.query
_answers: dict[tuple[str, str], Any] = {}


def _remembered(
    self: prometheus_http.PrometheusHTTP,
    path: str,
    fields: dict[str, Any],
    timeout: float,
    ahead: prometheus_http.Sent | None = None,
) -> Any:
    key = (path, str(fields.get("query")))
    if key not in _answers:
        _answers[key] = _query(self, path, fields, timeout, ahead)
    return _answers[key]


prometheus_http.PrometheusHTTP.query = _remembered  # type: ignore[method-assign]
# Every query answered here: none sent on delivery either (worker/ahead.py), as not_ahead does.
runpy.run_path(str(Path(__file__).parents[1] / "not_ahead" / "sitecustomize.py"))
