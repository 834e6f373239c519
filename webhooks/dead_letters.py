"""GET /v1/dead-letters: chat deliveries that failed after their retries."""

from __future__ import annotations

import json

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from webhooks.context import STORE_ERRORS, WebhookContext
from webhooks.errors import error
from webhooks.schemas import DeadLetterList, answers


def router(ctx: WebhookContext) -> APIRouter:
    routes = APIRouter()

    @routes.get("/v1/dead-letters", responses=answers(DeadLetterList, 401, 422, 503))
    async def dead_letters(limit: int = Query(50, ge=1, le=1000)) -> JSONResponse:
        """Chat deliveries that failed after their retries, newest first."""
        try:
            raw = await ctx.runtime.client.lrange(ctx.key("dead-letters"), 0, limit - 1)
        except STORE_ERRORS:
            return error(503, "store", "the state store (Redis) is unreachable; retry later")
        return JSONResponse({"dead_letters": [json.loads(item) for item in raw]})

    return routes
