"""Response shapes, for the OpenAPI document (clients and the fuzzer check answers against it)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: `field` names what was wrong (or which part failed)."""

    model_config = ConfigDict(extra="allow")
    error: str
    field: str
    message: str


class Sides(BaseModel):
    canary: float | None
    baseline: float | None


class Window(BaseModel):
    model_config = ConfigDict(extra="allow")
    start: str
    end: str


class Check(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    verdict: Literal["pass", "fail"]
    canary: float | None
    baseline: float | None
    limit: float | None
    p_value: float | None


class Metrics(BaseModel):
    model_config = ConfigDict(extra="allow")
    success_rate: Sides
    latency_seconds: dict[str, Sides]
    error_budget: dict[str, float | None]


class AnalysisAnswer(BaseModel):
    """The verdict. Argo reads `{$.verdict}`; any number here can be a metric of its own."""

    model_config = ConfigDict(extra="allow")
    verdict: Literal["pass", "fail", "inconclusive"]
    # True when the window ends at the request's arrival (only then may traffic move or chat
    # hear of it); false for a replay of a past window.
    live: bool
    score: float
    analysis_id: str
    reasons: list[str]
    window: Window
    requests: Sides
    metrics: Metrics
    checks: list[Check]
    report_url: str | None = None  # the analysis page for people (/ui/analyses/{id})


class StoredAnalysis(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    status: Literal["queued", "running", "done", "error", "superseded"]
    result: dict[str, Any] | None = None
    actions: list[dict[str, Any]]
    report_url: str | None = None
    # Fields whose stored value could not be read (they are null above), and why.
    unreadable: dict[str, str] | None = None


class EventAccepted(BaseModel):
    accepted: bool
    event: str


class DeadLetterList(BaseModel):
    dead_letters: list[dict[str, Any]]


def answers(ok: type[BaseModel] | None, *codes: int) -> dict[int | str, dict[str, Any]]:
    documented: dict[int | str, dict[str, Any]] = {}
    if ok is not None:
        documented[200] = {"model": ok, "description": "OK"}
    meaning = {
        400: "malformed body",
        401: "missing or wrong bearer token",
        404: "not found",
        408: "the body did not arrive in time",
        413: "body larger than the limit",
        422: "a field is invalid; `field` names it",
        502: "the metrics could not be read",
        503: "not finished yet (a retry finds the same analysis), or Redis unreachable",
    }
    for code in codes:
        documented[code] = {"model": ErrorBody, "description": meaning[code]}
    return documented


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its local `$defs` inlined, to embed it in the OpenAPI
    document (where `#/$defs/…` would point nowhere)."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined
