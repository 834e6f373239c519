"""GET /v1/analyses/{analysis_id}: a stored analysis and the actions that followed it."""

from __future__ import annotations

import json
import re

from fastapi import APIRouter, Request
from fastapi import Path as FastAPIPath
from fastapi.responses import JSONResponse

from webhooks.context import STORE_ERRORS, WebhookContext
from webhooks.errors import error
from webhooks.schemas import StoredAnalysis, answers

ANALYSIS_ID = re.compile(r"^[0-9a-f]{32}$")


def router(ctx: WebhookContext) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/analyses/{analysis_id}", responses=answers(StoredAnalysis, 401, 404, 422, 503))
    async def stored(
        request: Request,
        analysis_id: str = FastAPIPath(
            description="32 lowercase hex characters", pattern=ANALYSIS_ID.pattern
        ),
    ) -> JSONResponse:
        """A stored analysis (kept for `result_ttl_seconds`)."""
        if not ANALYSIS_ID.match(analysis_id):
            return error(422, "analysis_id", "must be 32 lowercase hex characters")
        try:
            record = await ctx.runtime.store.record(analysis_id)
        except STORE_ERRORS:
            return error(503, "store", "the state store (Redis) is unreachable; retry later")
        if record is None:
            return error(404, "analysis_id", "no such analysis (or it expired)")
        record.pop("claim", None)
        try:
            actions = await ctx.runtime.client.lrange(ctx.key(f"actions:{analysis_id}"), 0, -1)
        except STORE_ERRORS:
            actions = []  # the analysis itself is still worth answering
        record["actions"] = [json.loads(a) for a in actions]
        record["report_url"] = ctx.page_of(request, analysis_id)
        return JSONResponse(record)

    return routes
