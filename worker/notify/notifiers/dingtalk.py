"""DingTalk custom robots: markdown, an optional HMAC signature in the query string, and
errors as `errcode` inside an HTTP 200 answer."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import httpx

from worker.notify.fit import truncate_utf8
from worker.notify.message import Notification, Summary, escape_plain, render_markdown
from worker.notify.notifiers.base import (
    Notifier,
    PreparedRequest,
    errcode_error,
    json_headers,
    with_query,
)

MARKDOWN_MAX_BYTES = 20000


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """base64(HMAC-SHA256(key=secret, msg="{timestamp}\\n{secret}")), before URL-encoding."""
    string_to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), string_to_sign, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


class DingTalk(Notifier):
    kind = "dingtalk"
    rate_limit_codes = frozenset({130101, 410100})  # "send too fast, exceed 20 times/min"

    def body(self, n: Notification, summary: Summary) -> dict[str, Any]:
        text = truncate_utf8(render_markdown(n), MARKDOWN_MAX_BYTES)
        # `title` is what the conversation list and the push notification show: plain text.
        markdown = {"title": escape_plain(summary.title), "text": text}
        return {"msgtype": "markdown", "markdown": markdown}

    def prepare(
        self,
        url: str,
        body: dict[str, Any],
        notification: Notification,
        secret: str | None,
        now: float,
    ) -> PreparedRequest:
        if secret:
            timestamp_ms = int(now * 1000)
            # urlencode percent-encodes the base64 (+, /, =) as DingTalk requires.
            signed = {"timestamp": str(timestamp_ms), "sign": dingtalk_sign(secret, timestamp_ms)}
            url = with_query(url, signed)
        return PreparedRequest(url=url, headers=json_headers(), json_body=body)

    def service_error(self, response: httpx.Response) -> tuple[int, str] | None:
        return errcode_error(response, ("errcode",), ("errmsg",))
