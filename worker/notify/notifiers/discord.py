"""Discord channel webhooks: one embed, no mentions, 204 on success; errors as JSON `code`, and
a 429 that says how long to wait in its body (`retry_after`, seconds) as well as its headers."""

from __future__ import annotations

from typing import Any

import httpx

from worker.notify.fit import fit_lines
from worker.notify.message import (
    Notification,
    Summary,
    escape_markdown,
    escape_plain,
    markdown_url,
)
from worker.notify.notifiers.base import Notifier, Reply, json_or_none

TITLE_MAX = 256
DESCRIPTION_MAX = 4096
MAX_FIELDS = 25
FIELD_NAME_MAX = 256
FIELD_VALUE_MAX = 1024
FOOTER_MAX = 2048
_COLOR = {"info": 0x2EB67D, "warn": 0xECB22E, "error": 0xE01E5A}


class Discord(Notifier):
    kind = "discord"

    def body(self, n: Notification, summary: Summary) -> dict[str, Any]:
        lines = [f"**{escape_markdown(summary.headline)}**"]
        lines += [f"• {escape_markdown(r)}" for r in summary.reasons]
        lines += [f"Traffic action: {escape_markdown(a)}" for a in summary.actions]
        lines += [f"[{escape_markdown(name)}]({markdown_url(url)})" for name, url in summary.links]
        fields = [
            {
                "name": escape_plain(label)[:FIELD_NAME_MAX] or "-",
                "value": escape_markdown(value)[:FIELD_VALUE_MAX] or "-",
                "inline": True,
            }
            for label, value in summary.facts[:MAX_FIELDS]
        ]
        embed = {
            "title": escape_plain(summary.title)[:TITLE_MAX],
            "description": fit_lines(lines, DESCRIPTION_MAX),
            "color": _COLOR[n.severity],
            "fields": fields,
            "footer": {"text": escape_plain(summary.footer)[:FOOTER_MAX]},
        }
        # No @everyone, role or user pings, whatever a service or reason name contains.
        return {"embeds": [embed], "allowed_mentions": {"parse": []}}

    def service_error(self, response: httpx.Response) -> tuple[int, str] | None:
        data = json_or_none(response) if response.status_code >= 400 else None
        code = (data or {}).get("code")
        if isinstance(code, int) and code != 0:
            return code, str((data or {}).get("message", ""))
        return None

    def read(self, response: httpx.Response, retry_after: float | None) -> Reply:
        if response.status_code == 429 and retry_after is None:
            wait = (json_or_none(response) or {}).get("retry_after")
            retry_after = float(wait) if isinstance(wait, int | float) else None
        return super().read(response, retry_after)
