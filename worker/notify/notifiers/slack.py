"""Slack incoming webhooks: Block Kit, answered by the text `ok` (or a 4xx with a short code)."""

from __future__ import annotations

from typing import Any

import httpx

from worker.notify.fit import fit_lines
from worker.notify.message import Notification, Summary, escape_plain, escape_slack
from worker.notify.notifiers.base import Notifier, snippet

HEADER_MAX = 150
FIELD_MAX = 2000
SECTION_MAX = 3000
BUTTON_TEXT_MAX = 75
MAX_FIELDS = 10
MAX_BUTTONS = 25

_ICON = {"info": ":large_green_circle:", "warn": ":warning:", "error": ":red_circle:"}


def _mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: no auto-linking of URLs, channel names or mentions in user-derived text.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


class Slack(Notifier):
    kind = "slack"

    def body(self, n: Notification, summary: Summary) -> dict[str, Any]:
        fields = [
            _mrkdwn(f"*{label}:*\n{escape_slack(value)}"[:FIELD_MAX])
            for label, value in summary.facts[:MAX_FIELDS]
        ]
        headline = f"{_ICON[n.severity]} *{escape_slack(summary.headline)}*"
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": escape_plain(summary.title)[:HEADER_MAX],
                    "emoji": False,
                },
            },
            {"type": "section", "text": _mrkdwn(headline), "fields": fields},
        ]
        if summary.reasons:
            reasons = fit_lines([f"• {escape_slack(r)}" for r in summary.reasons], SECTION_MAX)
            blocks.append({"type": "section", "text": _mrkdwn(f"*Reasons:*\n{reasons}")})
        actions = fit_lines([f"• {escape_slack(a)}" for a in summary.actions], SECTION_MAX)
        blocks.append({"type": "section", "text": _mrkdwn(f"*Traffic action:*\n{actions}")})
        blocks.append({"type": "context", "elements": [_mrkdwn(escape_slack(summary.footer))]})
        if summary.links:
            buttons = [
                {
                    "type": "button",
                    "text": {
                        "type": "plain_text",
                        "text": escape_plain(name)[:BUTTON_TEXT_MAX] or "link",
                    },
                    "url": url,
                    "action_id": f"link-{index}",
                }
                for index, (name, url) in enumerate(summary.links[:MAX_BUTTONS])
            ]
            blocks.append({"type": "actions", "elements": buttons})
        # `text` is the notification/accessibility fallback; it is parsed as mrkdwn too.
        fallback = f"{escape_slack(summary.title)}: {escape_slack(summary.headline)}"
        return {"text": fallback, "blocks": blocks}

    def rejected_ok(self, response: httpx.Response) -> str | None:
        if response.text.strip() in ("", "ok"):
            return None
        return f"slack answered {snippet(response)}"
