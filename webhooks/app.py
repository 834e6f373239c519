"""The HTTP surface: Argo's web metric provider and people call it.

Routes come in groups, one module each: `analyze` (POST|PUT|GET /v1/analyze, the verdict),
`analyses` (GET /v1/analyses/{id}), `events` (Argo Rollouts' notifications), `dead_letters`,
`one_number` (POST /metrics/analysis), `ops` (probes, our metrics) and `ui` (the report pages
for people). The API groups need the bearer token; `ops` needs none, `ui` has its own. Around
the app: body limits, then metrics and a log line per request.
"""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI

from webhooks import analyses, analyze, dead_letters, events, one_number, ops
from webhooks.auth import bearer_token
from webhooks.context import WebhookContext
from webhooks.handlers import install_handlers
from webhooks.limits import BodyLimit
from webhooks.observe import Observe
from webhooks.ui import ui_router
from worker import tracing
from worker.settings import Settings, get_settings

API_GROUPS = (analyze, analyses, events, dead_letters, one_number)


def create_app(settings: Settings | None = None) -> Any:
    ctx = WebhookContext.build(settings or get_settings())
    app = FastAPI(
        title="rollout-analyzer",
        version="0.1.0",
        summary="Canary verdicts for Argo Rollouts' web metric provider.",
        lifespan=ctx.lifespan,
        telemetry=tracing.webhook_telemetry(),
    )
    install_handlers(app)
    token = [Depends(bearer_token(ctx.settings))]
    for group in API_GROUPS:
        app.include_router(group.router(ctx), dependencies=token)
    # Every poll's route served without FastAPI's per-request machinery (analyze.py says why);
    # first in line, so its documented APIRoutes above are only the OpenAPI description.
    app.router.routes[0:0] = analyze.plain_routes(ctx)
    app.include_router(ops.router(ctx))
    app.include_router(ui_router(ctx.settings, lambda: ctx.runtime.client, ctx.policies))
    # Observe outermost: a body refused by the limits (400/408/413) is logged and counted too.
    limited = BodyLimit(app, ctx.settings.max_body_bytes, ctx.settings.body_timeout_seconds)
    return Observe(limited, ctx.metrics)
