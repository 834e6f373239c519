"""For `tests/perf/ab.py` (a configuration's `pythonpath`): the services of that side send no
query ahead of its task (worker/ahead.py), every query goes when its task asks, as before the
twentieth pass: what sending it on delivery wins. Bench use only."""

from __future__ import annotations

from typing import Any

import analysis.sources.prometheus_http as prometheus_http


def _not_ahead(self: prometheus_http.PrometheusHTTP, path: str, fields: dict[str, Any]) -> None:
    return None


prometheus_http.PrometheusHTTP.send_ahead = _not_ahead  # type: ignore[method-assign]
