"""HTML of the report pages: Jinja2 templates with autoescaping, so every value from a request or
from Prometheus is text, never markup. Pages carry their stylesheet inline and allow exactly it
(by hash) in the Content-Security-Policy: no script, no request to anywhere."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from analysis.durations import format_duration
from webhooks.ui import charts

TEMPLATES = Path(__file__).parent / "templates"
CSS = (TEMPLATES / "report.css").read_text(encoding="utf-8")
_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
# No script at all; styles only our own; images only inline SVG (part of the document).
CSP = (
    f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# A <meta> policy cannot hold frame-ancestors (browsers ignore it there, with a warning).
CSP_META = CSP.removesuffix("; frame-ancestors 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def num(value: Any) -> str:
    v = _finite(value)
    return "n/a" if v is None else f"{v:.4g}"


def pct(value: Any) -> str:
    v = _finite(value)
    return "n/a" if v is None else f"{v * 100:.2f}%"


def secs(value: Any) -> str:
    v = _finite(value)
    if v is None:
        return "n/a"
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.3f} s"


def count(value: Any) -> str:
    v = _finite(value)
    return "n/a" if v is None else f"{v:,.0f}"


# A check's numbers in its own unit (the CLI's `analyze` table reads them the same way):
# rates as percentages, latencies in time, tolerances as factors, burn as multiples.
def check_value(value: Any, check: str) -> str:
    if _finite(value) is None:
        return "n/a"
    if check.startswith("success_rate") or check == "error_budget.spend":
        return pct(value)
    if check.startswith("latency"):
        return secs(value)
    return f"{num(value)}x"


def check_limit(value: Any, check: str) -> str:
    if _finite(value) is None:
        return "n/a"
    if check in ("success_rate.slo", "error_budget.spend"):
        return pct(value)
    if check == "success_rate.regression":
        return f"+{num(value)} pp"
    if check.endswith(".slo"):
        return secs(value)
    if check.startswith("latency"):
        return f"x{num(value)}"
    return f"{num(value)}x"


def when(ts: Any) -> str:
    v = _finite(ts)
    if v is None:
        return ""
    return datetime.fromtimestamp(v, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(value: Any) -> str:
    v = _finite(value)
    if v is None:
        return "n/a"
    try:
        return format_duration(v)
    except ValueError:  # zero or fractional: a sequence's first poll, a window from its start
        return f"{v:g} s"


def scalar(value: Any) -> str:
    if isinstance(value, float):
        return num(value)
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True)[:300]
    return "" if value is None else str(value)


def columns(rows: list[Any]) -> list[str]:
    """The keys of a list of records, in first-seen order, for a generic table."""
    seen: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            seen.update(dict.fromkeys(str(k) for k in row))
    return list(seen)


def css_class(value: Any) -> str:
    """A value as a class name: only [a-z_-], so no value can add a class of its choosing."""
    return re.sub(r"[^a-z_-]", "", str(value).lower())[:30] or "unknown"


class _Environment(Environment):
    """StrictUndefined catches template typos; but records written by older versions may lack
    fields, so a missing key of a dict reads as None."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, dict):
            return obj[attribute] if attribute in obj else getattr(obj, attribute, None)
        return getattr(obj, attribute, None)


def _environment() -> Environment:
    env = _Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"], default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        num=num,
        pct=pct,
        secs=secs,
        count=count,
        check_value=check_value,
        check_limit=check_limit,
        when=when,
        scalar=scalar,
        columns=columns,
        css_class=css_class,
        duration=duration,
        tojson_pretty=lambda v: json.dumps(v, indent=2, sort_keys=True),
    )
    return env


ENV = _environment()


def page(template: str, *, offline: bool = False, **context: Any) -> str:
    context.setdefault("root", "")
    context.setdefault("refresh", None)
    return ENV.get_template(template).render(
        css=Markup(CSS),  # noqa: S704 - our own stylesheet, allowed by its hash
        csp=CSP_META,
        offline=offline,
        **context,
    )


# --- the analysis page ------------------------------------------------------------------------


def analysis_context(
    record: dict[str, Any],
    *,
    actions: list[dict[str, Any]],
    event: Any,
    polls: list[dict[str, Any]],
    links: list[tuple[str, str]],
    timeline_url: str | None,
) -> dict[str, Any]:
    status = record.get("status") or "unknown"
    result = record.get("result") if isinstance(record.get("result"), dict) else None
    spec: dict[str, Any] = record["spec"] if isinstance(record.get("spec"), dict) else {}
    named: dict[str, Any] = result or spec
    who = {k: named.get(k) for k in ("service", "namespace", "canary", "baseline")}
    who.update(
        rollout=named.get("rollout"),
        revision=named.get("revision"),
        policy=(result or {}).get("policy") or spec.get("policy") or "default",
    )
    live = (result or {}).get("live")
    if live is None:  # answers gain `live` (issue 12); until then no explicit end = live
        live = spec.get("end") is None
    verdict = (result or {}).get("verdict") or {"queued": "pending", "running": "pending"}.get(
        status, status
    )
    error = record.get("error")
    if isinstance(error, dict):
        error = error.get("error")
    if not actions and event is not None:
        actions = list(event.actions)
    return {
        "analysis_id": record.get("id") or (result or {}).get("analysis_id") or "",
        "status": status,
        "result": result,
        "who": who,
        "live": bool(live),
        "verdict": verdict,
        "error": error,
        "unreadable": sorted(record.get("unreadable") or {}),  # fields kept corrupt in Redis
        "budget": ((result or {}).get("metrics") or {}).get("error_budget") or {},
        "charts": analysis_charts(result, polls) if result else [],
        "sequence": (result or {}).get("sequence"),
        "actions": actions,
        "event": event,
        "polls": polls,
        "links": links,
        "timeline_url": timeline_url,
        "refresh": 3 if status in ("queued", "running") else None,
    }


def analysis_charts(
    result: dict[str, Any], polls: list[dict[str, Any]]
) -> list[tuple[str, Markup]]:
    found: list[tuple[str, Markup]] = []
    histograms = result.get("histograms") or {}
    if histograms.get("canary") or histograms.get("baseline"):
        shares = {side: charts.bucket_shares(histograms.get(side) or {}) for side in charts.SIDES}
        bounds = sorted({le for side in shares.values() for le in side}, key=charts.bound)
        found.append(
            (
                "Latency distribution: share of requests per bucket (le, seconds)",
                charts.grouped_bars(
                    "latency histogram",
                    bounds,
                    {side: [shares[side].get(le) for le in bounds] for side in charts.SIDES},
                    percent=True,
                ),
            )
        )
    latency = (result.get("metrics") or {}).get("latency_seconds") or {}
    if latency:
        found.append(
            (
                "Latency quantiles (seconds)",
                charts.grouped_bars(
                    "latency quantiles",
                    list(latency),
                    {side: [pair.get(side) for pair in latency.values()] for side in charts.SIDES},
                    unit="s",
                ),
            )
        )
    found += poll_charts(polls)
    return found


def poll_charts(polls: list[dict[str, Any]]) -> list[tuple[str, Markup]]:
    if not polls:
        return []
    times = [str(p.get("time") or "") for p in polls]

    def series(field: str) -> dict[str, list[float | None]]:
        return {side: [((p.get(field) or {}).get(side)) for p in polls] for side in charts.SIDES}

    return [
        (
            f"Success rate over {len(polls)} poll(s)",
            charts.poll_lines("success rate", times, series("success_rate"), percent=True),
        ),
        (
            f"Error budget burn over {len(polls)} poll(s)",
            charts.poll_lines("error budget burn", times, series("burn"), unit="x"),
        ),
    ]
