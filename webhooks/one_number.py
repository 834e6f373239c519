"""POST /metrics/analysis: the one-number-per-metric contract (analysis/one_number.py).

The value is read here, in one PromQL round trip from the webhook process: there is no verdict,
no event and no follow-up, so nothing needs a worker, and Argo's 30 s polls stay cheap.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from analysis.one_number import OneNumberRequest, resolve_one_number
from analysis.request import RequestError
from analysis.sources import SourceError
from analysis.sources.recording import RecordingSource
from webhooks.context import WebhookContext
from webhooks.errors import error
from webhooks.schemas import answers, inline_refs
from worker.query_cap import CappedSource, QueryCap, cap_key
from worker.settings import Settings


class OneNumber(BaseModel):
    """One metric's value over the range; `null` when there is no data to compute it from."""

    value: float | None
    unit: str
    timestamp: str


def router(ctx: WebhookContext) -> APIRouter:
    routes = APIRouter()
    settings, policies = ctx.settings, ctx.policies
    sources: dict[str, Any] = {}

    def source() -> Any:
        if "source" not in sources:
            sources["source"] = capped(settings, settings.source())
        return sources["source"]

    body_doc = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": inline_refs(OneNumberRequest.model_json_schema())}
            },
        }
    }

    @routes.post(
        "/metrics/analysis",
        openapi_extra=body_doc,
        responses=answers(OneNumber, 400, 401, 408, 413, 422, 502, 503),
    )
    async def metric_value(request: Request) -> JSONResponse:
        """One metric's value for a range and labels (read with jsonPath `{$.value}`)."""
        try:
            data = json.loads(await request.body())
        except (ValueError, RecursionError):
            return error(400, "body", "is not valid JSON")
        try:
            spec = resolve_one_number(data, policies, now=time.time())
        except RequestError as exc:
            return error(422, exc.field, exc.message)
        try:
            metrics = source()
        except (RuntimeError, ValueError, OSError) as exc:  # no Prometheus, bad recording file
            return error(503, "metrics", str(exc))
        request.state.log = {"metric": spec.metric, "policy": spec.policy.name}
        if isinstance(metrics, RecordingSource):  # the demo, an offline replay
            side = metrics.one_side(dict(spec.labels), spec.end, spec.window_seconds)
            return JSONResponse(spec.answer(spec.value_of(side)))
        if not hasattr(metrics, "samples"):
            return error(503, "metrics", "the one-number contract needs Prometheus or a recording")
        deadline = time.monotonic() + settings.wait_seconds
        try:
            samples = await asyncio.to_thread(metrics.samples, spec.query(), spec.end, deadline)
        except SourceError as exc:
            return error(502, "metrics", str(exc))
        return JSONResponse(spec.answer(spec.value(samples)))

    return routes


def capped(settings: Settings, source: Any) -> Any:
    """The workers' shared cap on concurrent PromQL queries holds for our queries too."""
    limit = settings.prometheus_max_concurrent_queries
    if not limit or settings.recording or not settings.prometheus_url:
        return source
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=2)
    key = cap_key(settings.key_prefix, settings.prometheus_url)
    return CappedSource(source, QueryCap(client, key, limit, settings.task_soft_time_limit))
