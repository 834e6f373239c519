"""POST|PUT|GET /v1/analyze: Argo's web metric provider asks for a verdict.

The answer comes inside `wait_seconds` or as a 503 (Argo retries after 10 s and then finds the
same analysis); an exact repeat of a finished latest-window request is answered from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.routing import Route

from analysis.request import (
    AnalysisSpec,
    AnalyzeRequest,
    RequestError,
    parse_request,
    request_from_query,
    resolve,
)
from webhooks.auth import authorize
from webhooks.context import STORE_ERRORS, WebhookContext
from webhooks.deadline import Late
from webhooks.errors import error
from webhooks.recent import Answer as RecentAnswer
from webhooks.schemas import AnalysisAnswer, answers, inline_refs
from webhooks.waiting import Expected
from worker import codec, hints, tracing
from worker.keyspace import new_analysis_id
from worker.sequences import sequence_id, sequence_key
from worker.store import RESULT_TEXT, Claim
from worker.task_names import ANALYZE_TASK

log = logging.getLogger("rollout_analyzer.webhook")
ANALYZE_PATH = "/v1/analyze"


def analysis_id_header(analysis_id: str) -> dict[str, str]:
    return {"X-Analysis-Id": analysis_id}


def router(ctx: WebhookContext) -> APIRouter:
    routes = APIRouter()
    request_schema = inline_refs(AnalyzeRequest.model_json_schema())
    body_doc = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": request_schema}},
        }
    }
    query_doc = {
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": name in request_schema["required"],
                "schema": schema,
            }
            for name, schema in request_schema["properties"].items()
            if name not in ("overrides", "traffic")  # GET: `overrides.NAME=value`; no traffic
        ]
    }
    analyze_answers = answers(AnalysisAnswer, 400, 401, 408, 413, 422, 502, 503)

    @routes.post(ANALYZE_PATH, openapi_extra=body_doc, responses=analyze_answers)
    @routes.put(ANALYZE_PATH, openapi_extra=body_doc, responses=analyze_answers)
    async def analyze_body(request: Request) -> Response:
        """Analyse a canary against its baseline (JSON body; Argo's POST/PUT with jsonBody)."""
        return await serve_body(ctx, request)

    @routes.get(ANALYZE_PATH, responses=analyze_answers, openapi_extra=query_doc)
    async def analyze_query(request: Request) -> Response:
        """The same analysis with query parameters (Argo's default GET); overrides as
        `overrides.NAME=value`."""
        return await serve_query(ctx, request)

    return routes


def plain_routes(ctx: WebhookContext) -> list[Route]:
    """/v1/analyze as plain Starlette routes, placed before the documented ones above, which
    they shadow: FastAPI's APIRoute (dependency solving, its request wrapper) cost ~0.1 ms of
    CPU a request, on every poll. The same handlers, the same token check, the same errors
    (the app's exception handlers), the server span named by route as FastAPI names it."""

    def served(handler: Callable[[WebhookContext, Request], Awaitable[Response]]) -> Any:
        async def endpoint(request: Request) -> Response:
            tracing.name_route(request.method, ANALYZE_PATH)
            authorize(ctx.settings, request)
            return await handler(ctx, request)

        return endpoint

    return [
        Route(ANALYZE_PATH, served(serve_body), methods=["POST", "PUT"]),
        Route(ANALYZE_PATH, served(serve_query), methods=["GET"]),
    ]


async def serve_body(ctx: WebhookContext, request: Request) -> Response:
    raw = await request.body()
    cached = answered(ctx, request, b"B" + raw)
    if cached is not None:
        return cached
    try:
        data = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        return error(400, "body", "is not valid JSON")
    return await analyze(ctx, request, data, b"B" + raw)


async def serve_query(ctx: WebhookContext, request: Request) -> Response:
    try:
        raw_key = b"Q" + request.scope["query_string"]
        cached = answered(ctx, request, raw_key)
        if cached is not None:
            return cached
        data = request_from_query(list(request.query_params.multi_items()))
    except RequestError as exc:
        return error(422, exc.field, exc.message)
    return await analyze(ctx, request, data, raw_key)


def answered(ctx: WebhookContext, request: Request, raw_key: bytes) -> Response | None:
    """An exact repeat of a finished latest-window request, inside its reuse window."""
    hit = ctx.recent.get(raw_key)
    if hit is None:
        return None
    ctx.metrics.dedup_hits.inc()
    ctx.metrics.verdicts.labels(hit.verdict).inc()
    request.state.log = {
        "analysis_id": hit.analysis_id,
        "service": hit.service,
        "rollout": hit.rollout,
        "verdict": hit.verdict,
        "dedup": True,
    }
    tracing.set_attributes(tracing.request_attributes(request.state.log))
    return Response(
        hit.body, media_type="application/json", headers=analysis_id_header(hit.analysis_id)
    )


async def analyze(ctx: WebhookContext, request: Request, data: Any, raw_key: bytes) -> Response:
    """Claim the analysis (or join the identical one), wait for it, answer what it became."""
    arrived = time.monotonic()
    try:
        spec = resolve(parse_request(data), ctx.policies)
    except RequestError as exc:
        return error(422, exc.field, exc.message)
    wait_seconds = ctx.settings.wait_seconds
    try:
        # Never past the wait's own deadline, whatever the steps' timeouts add up to.
        claimed = await ctx.outliving.within(
            claim_and_enqueue(ctx, spec),
            wait_seconds - (time.monotonic() - arrived),
            lambda late: forget_wait(ctx, late),
        )
        if claimed is None:
            return error(503, "queue", "the task queue is unreachable; retry later")
        claim, expected = claimed
        record = claim.record
        if record is None:
            remaining = wait_seconds - (time.monotonic() - arrived)
            record = await ctx.waiter.wait(claim.analysis_id, max(0.0, remaining), expected)
    except Late:
        ctx.metrics.late_claims.inc()
        log.warning("claim or enqueue not done by the deadline")
        return error(
            503,
            "store",
            f"the state store or the task queue did not answer within {wait_seconds:g} s; "
            "retry later (the analysis goes on if it was started)",
        )
    except STORE_ERRORS as exc:
        ctx.metrics.store_errors.inc()
        log.warning("store unavailable", extra={"error": str(exc)[:200]})
        return error(503, "store", "the state store (Redis) is unreachable; retry later")
    status = (record or {}).get("status")
    result = (record or {}).get("result")
    describe_request(request, spec, claim, result if status == "done" else None)
    page = ctx.page_of(request, claim.analysis_id)
    if status == "done":
        if not isinstance(result, dict) or not isinstance(result.get("verdict"), str):
            return error(  # its stored result is corrupt
                503,
                "store",
                "the stored result of this analysis cannot be read; a call after its reuse "
                "window starts a new analysis",
                analysis_id=claim.analysis_id,
                report_url=page,
            )
        text = (record or {}).get(RESULT_TEXT)
        return finished(ctx, spec, claim, result, page, raw_key, text)
    if status == "error":
        detail = (record or {}).get("error")
        message = detail.get("error") if isinstance(detail, dict) else str(detail)
        return error(502, "metrics", str(message), analysis_id=claim.analysis_id, report_url=page)
    ctx.metrics.pending.inc()
    return error(
        503,
        "analysis",
        f"not finished within {ctx.settings.wait_seconds:g} s; the next call gets its result",
        analysis_id=claim.analysis_id,
        state=status,
        report_url=page,
    )


async def claim_and_enqueue(
    ctx: WebhookContext, spec: AnalysisSpec
) -> tuple[Claim, Expected | None] | None:
    """The analysis' claim, and for a new one (enqueued) the wait for its completion, begun
    before the enqueue; None: the queue could not take it.

    With the broker on the store's Redis the task's message goes in with the claim, in one
    script (one round trip less, and no claim without its task); otherwise it is enqueued next.
    """
    rt, settings = ctx.runtime, ctx.settings
    identity = spec.identity()
    new_id = new_analysis_id(identity)
    spec_json, now = spec.to_json(), time.time()
    # The task tells its worker the spec and its query slot ahead of START (worker/hints.py).
    hint, slot = hints.for_claim(spec_json, now, ctx.query_cap)
    task = rt.dispatcher.message(ANALYZE_TASK, [new_id], {hints.HEADER: hint.header()})
    task_slot = (slot, *hint.slot_marker()) if task is not None and slot is not None else None
    # A live poll's hint says when its sequence's last poll ended (worker/ahead.py).
    task_since = None
    if task is not None and spec.live:
        sequence = sequence_key(settings.key_prefix, sequence_id(spec))
        task_since = (sequence, hints.SINCE_UNKNOWN, hints.SINCE_NEW)
    # Listen first: a task pushed by the claim script may finish before this coroutine resumes.
    expected = ctx.waiter.expect(new_id)
    try:
        claim = await rt.store.claim(
            identity,
            spec_json,
            pending_seconds=settings.pending_seconds,
            result_ttl_seconds=settings.result_ttl_seconds,
            now=now,
            new_id=new_id,
            task=task,
            task_slot=task_slot,
            task_since=task_since,
        )
    except BaseException as exc:
        ctx.waiter.forget(new_id, expected.future)
        if task is None and isinstance(exc, STORE_ERRORS):
            await settle_lost_claim(ctx, identity, new_id)
        raise
    if not claim.is_new:
        ctx.waiter.forget(new_id, expected.future)
        ctx.metrics.dedup_hits.inc()
        return claim, None
    if task is not None:
        return claim, expected
    try:
        enqueued = rt.dispatcher.enqueue(ANALYZE_TASK, [claim.analysis_id])
        await asyncio.wait_for(enqueued, settings.wait_seconds / 2)
    except Exception as exc:
        ctx.waiter.forget(claim.analysis_id, expected.future)
        await rt.store.abandon(identity, claim.analysis_id, "enqueue failed")
        ctx.metrics.store_errors.inc()
        log.warning("enqueue failed", extra={"error": str(exc)[:200]})
        return None
    return claim, expected


def forget_wait(ctx: WebhookContext, claimed: tuple[Claim, Expected | None] | None) -> None:
    """A claim made after its request answered: nobody waits for its completion."""
    if claimed is not None and claimed[1] is not None:
        ctx.waiter.forget(claimed[0].analysis_id, claimed[1].future)


async def settle_lost_claim(ctx: WebhookContext, identity: str, new_id: str) -> None:
    """A claim whose reply was lost may have been made: every poll of this request would join
    it, and wait for a task never sent, until it expired (`pending_seconds`). It is undone; if
    the store cannot be reached for that either, its task goes to the broker (a Redis of its
    own here), to run once the store is back. A claim that was never made: its task finds
    nothing and ends."""
    with contextlib.suppress(*STORE_ERRORS, TimeoutError):
        async with asyncio.timeout(1):
            await ctx.runtime.store.abandon(identity, new_id, "the claim's reply was lost")
            return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1):
            await ctx.runtime.dispatcher.enqueue(ANALYZE_TASK, [new_id])


def answer_body(result: dict[str, Any], page: str, text: bytes | None = None) -> bytes:
    """The result with its page's address, as compact JSON; from `text` (the result's JSON as
    the worker wrote it) without parsing and dumping it again."""
    if text and text.endswith(b"}") and result and "report_url" not in result:
        return text[:-1] + b',"report_url":' + codec.dump_bytes(page) + b"}"
    return codec.dump_bytes({**result, "report_url": page})


def describe_request(
    request: Request, spec: AnalysisSpec, claim: Claim, result: dict[str, Any] | None
) -> None:
    """The request's log line fields and trace attributes."""
    request.state.log = {
        "analysis_id": claim.analysis_id,
        "service": spec.service,
        "rollout": spec.rollout,
        "dedup": not claim.is_new,
    }
    if isinstance(result, dict):
        request.state.log.update(verdict=result.get("verdict"))
    tracing.set_attributes(tracing.request_attributes(request.state.log))


def finished(
    ctx: WebhookContext,
    spec: AnalysisSpec,
    claim: Claim,
    result: dict[str, Any],
    page: str,
    raw_key: bytes,
    text: bytes | None = None,
) -> Response:
    """A done analysis (its answer: the result and its page): count it, remember a
    latest-window answer for its reuse window. `text`: the result's JSON as the worker wrote
    it (from the completion message), answered as it is."""
    verdict: str = result["verdict"]
    metrics = ctx.metrics
    metrics.verdicts.labels(verdict).inc()
    if claim.is_new:
        timing = result.get("timing", {})
        metrics.analyses.labels(verdict).inc()
        metrics.analysis_duration.observe(
            timing.get("duration_seconds", 0), exemplar=tracing.exemplar()
        )
        metrics.queue_wait.observe(timing.get("queue_wait_seconds", 0))
    body = answer_body(result, page, text)
    finished_at = (result.get("timing") or {}).get("finished_at", 0.0)
    left = finished_at + ctx.settings.reuse_seconds - time.time()
    if spec.end is None and left > 0:
        expires = time.monotonic() + left
        answer = RecentAnswer(expires, claim.analysis_id, verdict, body, spec.service, spec.rollout)
        ctx.recent.put(raw_key, answer)
    headers = analysis_id_header(claim.analysis_id)
    return Response(body, media_type="application/json", headers=headers)
