"""Microsoft Teams (Workflows / incoming webhook): an Adaptive Card in a message attachment."""

from __future__ import annotations

from typing import Any

from worker.notify.message import Notification, Summary, escape_markdown, escape_plain
from worker.notify.notifiers.base import Notifier

_COLOR = {"info": "Good", "warn": "Warning", "error": "Attention"}


def _text(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **style}


class Teams(Notifier):
    kind = "teams"

    def body(self, n: Notification, summary: Summary) -> dict[str, Any]:
        facts = [
            {"title": label, "value": escape_markdown(value)} for label, value in summary.facts
        ]
        body: list[dict[str, Any]] = [
            _text(
                escape_markdown(summary.title),
                size="Large",
                weight="Bolder",
                color=_COLOR[n.severity],
            ),
            {"type": "FactSet", "facts": facts},
        ]
        if summary.reasons:
            body.append(_text("Reasons", weight="Bolder"))
            body.append(_text("\n".join(f"- {escape_markdown(r)}" for r in summary.reasons)))
        body.append(_text("Traffic action", weight="Bolder"))
        body.append(_text("\n".join(f"- {escape_markdown(a)}" for a in summary.actions)))
        body.append(_text(escape_markdown(summary.footer), isSubtle=True, size="Small"))
        card: dict[str, Any] = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": body,
            "msteams": {"width": "Full"},
        }
        if summary.links:
            card["actions"] = [
                {"type": "Action.OpenUrl", "title": escape_plain(name) or "link", "url": url}
                for name, url in summary.links
            ]
        attachment = {
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": card,
        }
        return {"type": "message", "attachments": [attachment]}
