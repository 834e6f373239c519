"""RED metrics and one JSON log line per request, around the whole app."""

from __future__ import annotations

import logging
import time
from typing import Any

from webhooks.metrics import WebhookMetrics
from worker import tracing

log = logging.getLogger("rollout_analyzer.webhook")


class Observe:
    """RED metrics and one JSON log line per request (plain ASGI: Starlette's `http`
    middleware cost ~40 % of the webhook's CPU on cached polls)."""

    def __init__(self, app: Any, metrics: WebhookMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        trace: dict[str, Any] = {}

        async def sending(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Still inside the request's server span here, unlike after the app returns.
                trace.update(tracing.current_ids() or {})
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            log.exception("unhandled error", extra={"path": scope.get("path")})
            raise
        finally:
            elapsed = time.perf_counter() - started
            name = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], name, str(status)).inc()
            self.metrics.request_duration.labels(name).observe(elapsed)
            state = scope.get("state") or {}
            log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope.get("path", ""),
                    "status": status,
                    "duration_seconds": round(elapsed, 6),
                    **(state.get("log") or {}),
                    **trace,
                },
            )
