"""The HTTP surface: Argo's web metric provider and people call it.

POST|PUT|GET /v1/analyze answers a verdict inside `wait_seconds` or 503 (Argo retries after
10 s and then finds the same analysis); GET /v1/analyses/{id} shows a stored one.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from contextlib import asynccontextmanager
from typing import Any

import redis.exceptions
from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as FastAPIPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import (
    CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE,
)
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from analysis.request import (
    AnalyzeRequest,
    RequestError,
    parse_request,
    request_from_query,
    resolve,
)
from webhooks.errors import error
from webhooks.limits import BodyLimit
from webhooks.metrics import WebhookMetrics
from webhooks.one_number import one_number_router
from webhooks.recent import Answer as RecentAnswer
from webhooks.recent import RecentAnswers
from webhooks.runtime import Runtime, build_runtime
from webhooks.schemas import (
    AnalysisAnswer,
    DeadLetterList,
    EventAccepted,
    StoredAnalysis,
    answers,
    inline_refs,
)
from webhooks.ui import ui_router
from webhooks.waiting import CompletionWaiter
from worker import tracing
from worker.report_links import report_url
from worker.settings import Settings, get_settings
from worker.task_names import ANALYZE_TASK, ARGO_EVENT_TASK

log = logging.getLogger("rollout_analyzer.webhook")
ANALYSIS_ID = re.compile(r"^[0-9a-f]{32}$")
STORE_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


def create_app(settings: Settings | None = None) -> Any:
    settings = settings or get_settings()
    policies = settings.policies()
    metrics = WebhookMetrics()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        runtime = build_runtime(settings)
        waiter = CompletionWaiter(runtime.client, runtime.store)
        await waiter.start()
        state.update(runtime=runtime, waiter=waiter)
        try:
            yield
        finally:
            await waiter.stop()
            await runtime.aclose()

    app = FastAPI(
        title="rollout-analyzer",
        version="0.1.0",
        summary="Canary verdicts for Argo Rollouts' web metric provider.",
        lifespan=lifespan,
        telemetry=tracing.webhook_telemetry(),
    )

    def runtime() -> Runtime:
        rt: Runtime = state["runtime"]
        return rt

    def page_of(request: Request, analysis_id: str) -> str:
        """Where a person reads this analysis (`report_url` in every answer)."""
        return report_url(settings.public_url or str(request.base_url), analysis_id)

    async def authorized(request: Request) -> None:
        if settings.api_token is None:
            return
        expected = f"Bearer {settings.api_token.get_secret_value()}".encode()
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise _Unauthorized

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("request",), "msg": "invalid"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        return error(422, ".".join(loc) or "request", str(first.get("msg", "invalid")))

    @app.exception_handler(_Unauthorized)
    async def _unauthorized(_: Request, __: Exception) -> JSONResponse:
        response = error(401, "authorization", "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    recent = RecentAnswers()

    def answered(request: Request, raw_key: bytes) -> Response | None:
        """An exact repeat of a finished latest-window request, inside its reuse window."""
        hit = recent.get(raw_key)
        if hit is None:
            return None
        metrics.dedup_hits.inc()
        metrics.verdicts.labels(hit.verdict).inc()
        request.state.log = {
            "analysis_id": hit.analysis_id,
            "service": hit.service,
            "rollout": hit.rollout,
            "verdict": hit.verdict,
            "dedup": True,
        }
        tracing.set_attributes(tracing.request_attributes(request.state.log))
        return Response(hit.body, media_type="application/json", headers=_id(hit.analysis_id))

    async def analyze(request: Request, data: Any, raw_key: bytes) -> Response:
        arrived = time.monotonic()
        try:
            spec = resolve(parse_request(data), policies)
        except RequestError as exc:
            return error(422, exc.field, exc.message)
        rt = runtime()
        try:
            claim = await rt.store.claim(
                spec.identity(),
                spec.to_json(),
                pending_seconds=settings.pending_seconds,
                result_ttl_seconds=settings.result_ttl_seconds,
                now=time.time(),
            )
            if claim.is_new:
                try:
                    await asyncio.wait_for(
                        rt.dispatcher.enqueue(ANALYZE_TASK, [claim.analysis_id]),
                        settings.wait_seconds / 2,
                    )
                except Exception as exc:
                    await rt.store.abandon(spec.identity(), claim.analysis_id, "enqueue failed")
                    metrics.store_errors.inc()
                    log.warning("enqueue failed", extra={"error": str(exc)[:200]})
                    return error(503, "queue", "the task queue is unreachable; retry later")
            else:
                metrics.dedup_hits.inc()
            record = claim.record
            if record is None:
                remaining = settings.wait_seconds - (time.monotonic() - arrived)
                record = await state["waiter"].wait(claim.analysis_id, max(0.0, remaining))
        except STORE_ERRORS as exc:
            metrics.store_errors.inc()
            log.warning("store unavailable", extra={"error": str(exc)[:200]})
            return error(503, "store", "the state store (Redis) is unreachable; retry later")
        request.state.log = {
            "analysis_id": claim.analysis_id,
            "service": spec.service,
            "rollout": spec.rollout,
            "dedup": not claim.is_new,
        }
        status = (record or {}).get("status")
        if status == "done" and isinstance(record.get("result"), dict):  # type: ignore[union-attr]
            request.state.log.update(verdict=record["result"].get("verdict"))  # type: ignore[index]
        tracing.set_attributes(tracing.request_attributes(request.state.log))
        if status == "done":
            result = record["result"]  # type: ignore[index]
            verdict = result.get("verdict")
            request.state.log.update(verdict=verdict)
            metrics.verdicts.labels(verdict).inc()
            if claim.is_new:
                timing = result.get("timing", {})
                metrics.analyses.labels(verdict).inc()
                metrics.analysis_duration.observe(
                    timing.get("duration_seconds", 0), exemplar=tracing.exemplar()
                )
                metrics.queue_wait.observe(timing.get("queue_wait_seconds", 0))
            answer = {**result, "report_url": page_of(request, claim.analysis_id)}
            body = json.dumps(answer, separators=(",", ":")).encode()
            finished = (result.get("timing") or {}).get("finished_at", 0.0)
            left = finished + settings.reuse_seconds - time.time()
            if spec.end is None and left > 0:
                expires = time.monotonic() + left
                recent.put(
                    raw_key,
                    RecentAnswer(
                        expires, claim.analysis_id, verdict, body, spec.service, spec.rollout
                    ),
                )
            return Response(body, media_type="application/json", headers=_id(claim.analysis_id))
        if status == "error":
            detail = record.get("error") if record else None
            message = detail.get("error") if isinstance(detail, dict) else str(detail)
            return error(
                502,
                "metrics",
                str(message),
                analysis_id=claim.analysis_id,
                report_url=page_of(request, claim.analysis_id),
            )
        metrics.pending.inc()
        return error(
            503,
            "analysis",
            f"not finished within {settings.wait_seconds:g} s; the next call gets its result",
            analysis_id=claim.analysis_id,
            state=status,
            report_url=page_of(request, claim.analysis_id),
        )

    request_schema = inline_refs(AnalyzeRequest.model_json_schema())
    body_doc = {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": request_schema}},
        }
    }
    analyze_answers = answers(AnalysisAnswer, 400, 401, 408, 413, 422, 502, 503)
    v1 = [Depends(authorized)]

    @app.post("/v1/analyze", dependencies=v1, openapi_extra=body_doc, responses=analyze_answers)
    @app.put("/v1/analyze", dependencies=v1, openapi_extra=body_doc, responses=analyze_answers)
    async def analyze_body(request: Request) -> Response:
        """Analyse a canary against its baseline (JSON body; Argo's POST/PUT with jsonBody)."""
        raw = await request.body()
        cached = answered(request, b"B" + raw)
        if cached is not None:
            return cached
        try:
            data = json.loads(raw) if raw.strip() else None
        except (ValueError, RecursionError):
            return error(400, "body", "is not valid JSON")
        return await analyze(request, data, b"B" + raw)

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

    @app.get("/v1/analyze", dependencies=v1, responses=analyze_answers, openapi_extra=query_doc)
    async def analyze_query(request: Request) -> Response:
        """The same analysis with query parameters (Argo's default GET); overrides as
        `overrides.NAME=value`."""
        try:
            raw_key = b"Q" + request.scope["query_string"]
            cached = answered(request, raw_key)
            if cached is not None:
                return cached
            data = request_from_query(list(request.query_params.multi_items()))
        except RequestError as exc:
            return error(422, exc.field, exc.message)
        return await analyze(request, data, raw_key)

    @app.get(
        "/v1/analyses/{analysis_id}",
        dependencies=v1,
        responses=answers(StoredAnalysis, 401, 404, 422, 503),
    )
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
            record = await runtime().store.record(analysis_id)
        except STORE_ERRORS:
            return error(503, "store", "the state store (Redis) is unreachable; retry later")
        if record is None:
            return error(404, "analysis_id", "no such analysis (or it expired)")
        record.pop("claim", None)
        try:
            actions = await runtime().client.lrange(
                f"{settings.key_prefix}actions:{analysis_id}", 0, -1
            )
        except STORE_ERRORS:
            actions = []
        record["actions"] = [json.loads(a) for a in actions]
        record["report_url"] = page_of(request, analysis_id)
        return JSONResponse(record)

    @app.post(
        "/v1/events/argo-rollouts",
        dependencies=v1,
        status_code=202,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ArgoEvent.model_json_schema()}},
            }
        },
        responses={
            202: {"model": EventAccepted, "description": "accepted"},
            **answers(None, 400, 401, 408, 413, 422, 503),
        },
    )
    async def argo_event(request: Request) -> JSONResponse:
        """A notification from Argo Rollouts' webhook service (step, abort, completion)."""
        try:
            data = json.loads(await request.body())
            event = ArgoEvent.model_validate(data)
        except (ValueError, RecursionError) as exc:
            field, message = _first_problem(exc)
            return error(400 if field == "body" else 422, field, message)
        try:
            await runtime().dispatcher.enqueue(ARGO_EVENT_TASK, [event.model_dump()])
        except Exception:
            return error(503, "queue", "the task queue is unreachable; retry later")
        return JSONResponse({"accepted": True, "event": event.event}, status_code=202)

    @app.get("/v1/dead-letters", dependencies=v1, responses=answers(DeadLetterList, 401, 422, 503))
    async def dead_letters(limit: int = Query(50, ge=1, le=1000)) -> JSONResponse:
        """Chat deliveries that failed after their retries, newest first."""
        try:
            raw = await runtime().client.lrange(f"{settings.key_prefix}dead-letters", 0, limit - 1)
        except STORE_ERRORS:
            return error(503, "store", "the state store (Redis) is unreachable; retry later")
        return JSONResponse({"dead_letters": [json.loads(item) for item in raw]})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "Redis unreachable or no live worker"}})
    async def readyz() -> JSONResponse:
        """Redis answers and at least one worker sent a heartbeat recently."""
        rt = runtime()
        try:
            await asyncio.wait_for(rt.client.ping(), 1.0)
            workers = await asyncio.wait_for(
                rt.store.live_workers(3 * settings.heartbeat_seconds), 1.0
            )
        except (TimeoutError, *STORE_ERRORS):
            return JSONResponse({"status": "unready", "redis": "unreachable"}, status_code=503)
        ready = workers > 0
        body = {"status": "ready" if ready else "unready", "redis": "ok", "workers": workers}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response:
        """Our own metrics in Prometheus (or, when asked, OpenMetrics) exposition."""
        if "application/openmetrics-text" in request.headers.get("accept", ""):
            content = generate_openmetrics(metrics.registry)
            return Response(content, media_type=OPENMETRICS_CONTENT_TYPE)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.include_router(ui_router(settings, lambda: runtime().client, policies))
    app.include_router(one_number_router(settings, policies, v1))

    observed = Observe(app, metrics)
    return BodyLimit(observed, settings.max_body_bytes, settings.body_timeout_seconds)


def _id(analysis_id: str) -> dict[str, str]:
    return {"X-Analysis-Id": analysis_id}


class _Unauthorized(Exception):
    pass


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


_NAME = r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"


class ArgoEvent(BaseModel):
    """The body our Argo Rollouts notification templates send (deploy/argo)."""

    model_config = ConfigDict(extra="ignore")

    event: str = Field(pattern=r"^[a-z0-9-]{1,63}$", description="e.g. rollout-aborted")
    rollout: str = Field(pattern=_NAME)
    namespace: str = Field(pattern=_NAME)
    revision: str | None = Field(None, pattern=r"^[0-9]{0,20}$")
    phase: str | None = Field(None, pattern=r"^[A-Za-z]{0,40}$")
    message: str | None = Field(None, max_length=2000)


def _first_problem(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        return field, "is required" if first["type"] == "missing" else str(first["msg"])
    return "body", "is not a valid JSON object"
