"""The report pages: /ui/ (recent rollouts), /ui/analyses/{id}, /ui/rollouts/{ns}/{rollout},
/ui/canaries/{ns}/{service}/{canary}. Server-rendered HTML, no script, nothing from outside."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import redis.asyncio as aioredis
import redis.exceptions
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from analysis.policy import PolicySet
from analysis.request import LABEL_VALUE_PATTERN
from webhooks.ui import render
from webhooks.ui.auth import REALM, UiAuth
from webhooks.ui.data import UiData
from worker.report_links import canary_path, timeline_path
from worker.settings import Settings

ANALYSIS_ID = re.compile(r"^[0-9a-f]{32}$")
LABEL_VALUE = re.compile(LABEL_VALUE_PATTERN)
STORE_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


def html(body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**render.HEADERS, **(headers or {})})


def problem(status: int, field: str, message: str, **headers: str) -> HTMLResponse:
    body = render.page("error.html", status=status, field=field, message=message)
    return html(body, status, headers)


def ui_router(
    settings: Settings, client: Callable[[], aioredis.Redis], policies: PolicySet | None = None
) -> APIRouter:
    auth = UiAuth(settings)
    policies = policies or settings.policies()
    router = APIRouter(prefix="/ui", include_in_schema=False)

    def data() -> UiData:
        return UiData(client(), settings.key_prefix)

    def denied(request: Request) -> HTMLResponse | None:
        if auth.allows(request):
            return None
        return problem(
            401,
            "authorization",
            "reading these pages needs the API token, the read-only UI token (as the password "
            "your browser asks for, any user name) or your auth proxy's sign-in",
            **{"WWW-Authenticate": REALM},
        )

    def unreachable() -> HTMLResponse:
        return problem(503, "store", "the state store (Redis) is unreachable; retry later")

    @router.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> HTMLResponse:
        if (refused := denied(request)) is not None:
            return refused
        try:
            found = await data().rollouts()
        except STORE_ERRORS:
            return unreachable()
        rows = [_index_row(key, seen, last) for key, seen, last in found]
        return html(render.page("index.html", rows=rows))

    @router.get("/analyses/{analysis_id}", response_class=HTMLResponse)
    async def analysis(request: Request, analysis_id: str) -> HTMLResponse:
        if (refused := denied(request)) is not None:
            return refused
        if not ANALYSIS_ID.match(analysis_id):
            return problem(422, "analysis_id", "must be 32 lowercase hex characters")
        try:
            view = await data().analysis(analysis_id)
        except STORE_ERRORS:
            return unreachable()
        if view is None:
            return problem(404, "analysis_id", "no such analysis (or it expired)")
        result = view.record.get("result")
        result = result if isinstance(result, dict) else None
        context = render.analysis_context(
            view.record,
            actions=view.actions,
            event=view.event,
            polls=view.polls,
            links=report_links(result, settings.prometheus_graph_url, policies),
            timeline_url=_timeline_url(result or view.record.get("spec") or {}),
        )
        return html(render.page("analysis.html", **context))

    @router.get("/rollouts/{namespace}/{rollout}", response_class=HTMLResponse)
    async def rollout(
        request: Request, namespace: str, rollout: str, revision: str | None = None
    ) -> HTMLResponse:
        if (refused := denied(request)) is not None:
            return refused
        named = (("namespace", namespace), ("rollout", rollout), ("revision", revision))
        for field, value in named:
            if value is not None and not LABEL_VALUE.match(value):
                return problem(422, field, "is not a valid name")
        name = f"{namespace}/{rollout}"
        try:
            reader = data()
            key = f"{name}@{revision}" if revision else await reader.newest_revision(name)
            view = await reader.timeline(key or f"{name}@-", name)
        except STORE_ERRORS:
            return unreachable()
        current = view.key.rpartition("@")[2]
        revisions = [
            {
                "revision": k.rpartition("@")[2],
                "url": timeline_path(namespace, rollout, k.rpartition("@")[2]),
                "seen": seen,
                "last": last,
                "current": k == view.key,
            }
            for k, seen, last in view.revisions
        ]
        return html(
            render.page(
                "timeline.html",
                heading=f"{rollout} in {namespace}",
                subheading=f"Rollout revision {current}: every poll, verdict change, Argo "
                "event and action",
                what="revision",
                last=view.polls[-1] if view.polls else None,
                polls=view.polls,
                events=view.events,
                charts=render.poll_charts(view.polls),
                revisions=revisions,
            )
        )

    @router.get("/canaries/{namespace}/{service}/{canary}", response_class=HTMLResponse)
    async def canary(request: Request, namespace: str, service: str, canary: str) -> HTMLResponse:
        if (refused := denied(request)) is not None:
            return refused
        for field, value in (("namespace", namespace), ("service", service), ("canary", canary)):
            if not LABEL_VALUE.match(value):
                return problem(422, field, "is not a valid name")
        try:
            view = await data().timeline(f"{namespace}/{service}#{canary}", None)
        except STORE_ERRORS:
            return unreachable()
        return html(
            render.page(
                "timeline.html",
                heading=f"{service} in {namespace}",
                subheading=f"Canary {canary} (the requests named no rollout): every poll, "
                "verdict change and action",
                what="canary",
                last=view.polls[-1] if view.polls else None,
                polls=view.polls,
                events=view.events,
                charts=render.poll_charts(view.polls),
                revisions=[],
            )
        )

    return router


def report_links(
    result: dict[str, Any] | None, prometheus_graph_url: str | None, policies: PolicySet
) -> list[tuple[str, str]]:
    """The Prometheus graph of each exact query, and the policy's dashboard."""
    if result is None:
        return []
    links: list[tuple[str, str]] = []
    queries = (result.get("source") or {}).get("queries") or []
    if prometheus_graph_url:
        for i, query in enumerate(queries):
            params = urlencode({"g0.expr": query, "g0.tab": "0", "g0.range_input": "1h"})
            name = "Prometheus graph" + (f" (query {i + 1})" if len(queries) > 1 else "")
            links.append((name, f"{prometheus_graph_url.rstrip('/')}/graph?{params}"))
    policy = policies.get(result.get("policy") or "default")
    notify = ((policy.actions if policy else None) or {}).get("notify") or {}
    dashboard = notify.get("dashboard_url")
    if isinstance(dashboard, str) and dashboard:
        values = {k: result.get(k) or "" for k in ("service", "namespace", "rollout")}
        # A template with other placeholders: no link rather than a wrong one.
        with contextlib.suppress(KeyError, IndexError, ValueError):
            links.append(("Dashboard", dashboard.format(**values)))
    return [(name, url) for name, url in links if url.startswith(("http://", "https://"))]


def _timeline_url(who: dict[str, Any]) -> str | None:
    if who.get("rollout"):
        return timeline_path(who.get("namespace"), who["rollout"], who.get("revision"))
    if who.get("service") and who.get("canary"):
        return canary_path(who.get("namespace"), who["service"], who["canary"])
    return None


def _index_row(key: str, seen: float, last: dict[str, Any] | None) -> dict[str, Any]:
    namespace, _, rest = key.partition("/")
    if "#" in rest:  # names and revisions cannot hold "#": a canary key
        service, _, canary = rest.partition("#")
        return {
            "namespace": namespace,
            "name": service,
            "which": f"canary {canary}",
            "url": canary_path(namespace, service, canary),
            "seen": seen,
            "last": last,
        }
    name, _, revision = rest.rpartition("@")
    return {
        "namespace": namespace,
        "name": name,
        "which": f"revision {revision}",
        "url": timeline_path(namespace, name, revision),
        "seen": seen,
        "last": last,
    }
