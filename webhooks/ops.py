"""Operations: liveness, readiness and our own metrics (no token: probes and scrapers)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from webhooks.context import STORE_ERRORS, WebhookContext


def router(ctx: WebhookContext) -> APIRouter:
    routes = APIRouter()

    @routes.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @routes.get("/readyz", responses={503: {"description": "Redis unreachable or no live worker"}})
    async def readyz() -> JSONResponse:
        """Redis answers and at least one worker sent a heartbeat recently."""
        # `workers` answer analyses; `followup_workers` consume only follow-ups (traffic, chat).
        rt = ctx.runtime
        try:
            await asyncio.wait_for(rt.client.ping(), 1.0)
            workers, followups = await asyncio.wait_for(
                rt.store.live_workers(3 * ctx.settings.heartbeat_seconds), 1.0
            )
        except (TimeoutError, *STORE_ERRORS):
            return JSONResponse({"status": "unready", "redis": "unreachable"}, status_code=503)
        ready = workers > 0
        body = {"status": "ready" if ready else "unready", "redis": "ok", "workers": workers}
        body["followup_workers"] = followups
        return JSONResponse(body, status_code=200 if ready else 503)

    @routes.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        """Our own metrics in Prometheus (or, when asked, OpenMetrics) exposition."""
        registry = ctx.metrics.registry
        if "application/openmetrics-text" in request.headers.get("accept", ""):
            text = generate_openmetrics(registry)  # type: ignore[no-untyped-call]  # no annotations
            return Response(text, media_type=OPENMETRICS_CONTENT_TYPE)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return routes
