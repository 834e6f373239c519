"""Feishu / Lark custom bots: an interactive card, an optional signature in the body, errors
as `code` (or the older `StatusCode`) inside an HTTP 200 answer."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import httpx

from worker.notify.message import Notification, Summary, escape_markdown, escape_plain
from worker.notify.notifiers.base import Notifier, PreparedRequest, errcode_error, json_headers

_TEMPLATE = {"info": "green", "warn": "orange", "error": "red"}


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """base64(HMAC-SHA256(key="{timestamp}\\n{secret}", msg=empty))."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode("ascii")


def _md(content: str) -> dict[str, Any]:
    return {"tag": "lark_md", "content": content}


class Feishu(Notifier):
    kind = "feishu"
    rate_limit_codes = frozenset({11232})  # "frequency limited"

    def body(self, n: Notification, summary: Summary) -> dict[str, Any]:
        facts = [
            {"is_short": True, "text": _md(f"**{label}**\n{escape_markdown(value)}")}
            for label, value in summary.facts
        ]
        elements: list[dict[str, Any]] = [{"tag": "div", "fields": facts}]
        if summary.reasons:
            reasons = "\n".join(f"- {escape_markdown(r)}" for r in summary.reasons)
            elements.append({"tag": "div", "text": _md(f"**Reasons**\n{reasons}")})
        actions = "\n".join(f"- {escape_markdown(a)}" for a in summary.actions)
        elements.append({"tag": "div", "text": _md(f"**Traffic action**\n{actions}")})
        if summary.links:
            buttons = [
                {
                    "tag": "button",
                    "text": {"tag": "plain_text", "content": escape_plain(name) or "link"},
                    "url": url,
                    "type": "default",
                }
                for name, url in summary.links
            ]
            elements += [{"tag": "hr"}, {"tag": "action", "actions": buttons}]
        footer = {"tag": "plain_text", "content": escape_plain(summary.footer)}
        elements.append({"tag": "note", "elements": [footer]})
        header = {
            "title": {"tag": "plain_text", "content": escape_plain(summary.title)},
            "template": _TEMPLATE[n.severity],
        }
        card = {"config": {"wide_screen_mode": True}, "header": header, "elements": elements}
        return {"msg_type": "interactive", "card": card}

    def prepare(
        self,
        url: str,
        body: dict[str, Any],
        notification: Notification,
        secret: str | None,
        now: float,
    ) -> PreparedRequest:
        if secret:
            timestamp_s = int(now)
            body = {"timestamp": str(timestamp_s), "sign": feishu_sign(secret, timestamp_s), **body}
        return PreparedRequest(url=url, headers=json_headers(), json_body=body)

    def service_error(self, response: httpx.Response) -> tuple[int, str] | None:
        # Newer answers use code/msg; older ones StatusCode/StatusMessage.
        return errcode_error(response, ("code", "StatusCode"), ("msg", "StatusMessage"))
