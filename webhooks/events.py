"""POST /v1/events/argo-rollouts: Argo Rollouts' notifications (step, abort, completion)."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from webhooks.context import WebhookContext
from webhooks.errors import error
from webhooks.schemas import EventAccepted, answers
from worker.task_names import ARGO_EVENT_TASK

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


def router(ctx: WebhookContext) -> APIRouter:
    routes = APIRouter()

    @routes.post(
        "/v1/events/argo-rollouts",
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
            await ctx.runtime.dispatcher.enqueue(ARGO_EVENT_TASK, [event.model_dump()])
        except Exception:
            return error(503, "queue", "the task queue is unreachable; retry later")
        return JSONResponse({"accepted": True, "event": event.event}, status_code=202)

    return routes


def _first_problem(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        return field, "is required" if first["type"] == "missing" else str(first["msg"])
    return "body", "is not a valid JSON object"
