"""Dead letters over HTTP: list them, retry one or all, drop one.

A retry is a task on the follow-up queue (REDELIVER_TASK): the worker takes the letter out of
the list (atomically: two retries of one letter send it once) and sends it by the same path as
every notification; if it fails again it comes back with one more retry counted.
"""

from __future__ import annotations

import json
import re
from typing import Any

import redis.exceptions
from fastapi import APIRouter, Query
from fastapi import Path as FastAPIPath
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from webhooks.context import WebhookContext
from webhooks.errors import error
from webhooks.runtime import Runtime
from webhooks.schemas import DeadLetterList, answers
from worker.lua import AsyncScript
from worker.notify.dead_letter import DROP, drop_call
from worker.task_names import REDELIVER_TASK

ENTRY_ID = re.compile(r"^[0-9a-f]{32}$")
STORE_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)
UNREACHABLE = "the state store (Redis) is unreachable; retry later"


class RetryAccepted(BaseModel):
    retrying: list[str]


class Dropped(BaseModel):
    dropped: str


def _id_param() -> Any:
    return FastAPIPath(description="a dead letter's id (32 hex)", pattern=ENTRY_ID.pattern)


def router(ctx: WebhookContext) -> APIRouter:
    routes = APIRouter()
    key = ctx.key("dead-letters")

    def runtime() -> Runtime:
        return ctx.runtime

    async def entries() -> list[tuple[Any, dict[str, Any]]]:
        raw = await runtime().client.lrange(key, 0, -1)
        return [(item, json.loads(item)) for item in raw]

    async def retry(ids: list[str]) -> JSONResponse:
        try:
            for entry_id in ids:
                await runtime().dispatcher.enqueue(REDELIVER_TASK, [entry_id])
        except Exception:
            return error(503, "queue", "the task queue is unreachable; retry later")
        return JSONResponse({"retrying": ids}, status_code=202)

    @routes.get("/v1/dead-letters", responses=answers(DeadLetterList, 401, 422, 503))
    async def dead_letters(limit: int = Query(50, ge=1, le=1000)) -> JSONResponse:
        """Chat deliveries that failed after their retries, newest first."""
        try:
            raw = await runtime().client.lrange(key, 0, limit - 1)
        except STORE_ERRORS:
            return error(503, "store", UNREACHABLE)
        return JSONResponse({"dead_letters": [json.loads(item) for item in raw]})

    accepted: dict[int | str, dict[str, Any]] = {
        202: {"model": RetryAccepted, "description": "retries queued"}
    }

    @routes.post(
        "/v1/dead-letters/retry",
        status_code=202,
        responses={**accepted, **answers(None, 401, 422, 503)},
    )
    async def retry_all(
        target: str | None = Query(
            None, description="only this chat target's letters", pattern=r"^[^\x00-\x1f]{1,100}$"
        ),
    ) -> JSONResponse:
        """Send every dead letter (or every one of a target) again, oldest first, each by its
        own task on the follow-up queue."""
        try:
            ids = [
                entry["id"]
                for _, entry in reversed(await entries())
                if target is None or entry["target"] == target
            ]
        except STORE_ERRORS:
            return error(503, "store", UNREACHABLE)
        return await retry(ids)

    @routes.post(
        "/v1/dead-letters/{entry_id}/retry",
        status_code=202,
        responses={**accepted, **answers(None, 401, 404, 422, 503)},
    )
    async def retry_one(entry_id: str = _id_param()) -> JSONResponse:
        """Send one dead letter again."""
        try:
            known = any(entry["id"] == entry_id for _, entry in await entries())
        except STORE_ERRORS:
            return error(503, "store", UNREACHABLE)
        if not known:
            return error(404, "entry_id", "no such dead letter (retried or dropped already?)")
        return await retry([entry_id])

    @routes.delete(
        "/v1/dead-letters/{entry_id}",
        responses=answers(Dropped, 401, 404, 422, 503),
    )
    async def drop(entry_id: str = _id_param()) -> JSONResponse:
        """Forget one dead letter."""
        # One script: a retried call whose first reply was lost still says "dropped".
        keys, args = drop_call(key, entry_id)
        try:
            dropped = await AsyncScript(runtime().client, DROP)(keys=keys, args=args)
        except STORE_ERRORS:
            return error(503, "store", UNREACHABLE)
        if dropped:
            return JSONResponse({"dropped": entry_id})
        return error(404, "entry_id", "no such dead letter (retried or dropped already?)")

    return routes
