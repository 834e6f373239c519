"""`--html FILE` of `analyze` and `replay`: the service's analysis page, written offline.

The same template as /ui/analyses/{id}; the stylesheet is inline and allowed by a
Content-Security-Policy meta tag, so the file opens anywhere and fetches nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.history import poll_summary


def write_report_html(
    path: str, result: dict[str, Any], *, live: bool, polls: list[dict[str, Any]] | None = None
) -> None:
    from webhooks.ui import render

    result = {**result, "analysis_id": result.get("analysis_id") or ""}
    record = {"id": result["analysis_id"], "status": "done", "result": result}
    context = render.analysis_context(
        {**record, "spec": {"end": None if live else result["window"]["end"]}},
        actions=[],
        event=None,
        polls=polls if polls is not None else [poll_summary(result, live)],
        links=[],
        timeline_url=None,
    )
    Path(path).write_text(render.page("analysis.html", offline=True, **context), "utf-8")


def replay_polls(reports: list[dict[str, Any]], measured: int) -> list[dict[str, Any]]:
    """The measurements Argo took, as the page's polls (ids are their measurement numbers)."""
    return [
        poll_summary({**r, "analysis_id": f"measurement #{i + 1}"}, live=False)
        for i, r in enumerate(reports[:measured])
    ]
