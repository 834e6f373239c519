"""WeCom (WeChat Work) group robots: markdown of at most 4096 bytes, errors as `errcode`."""

from __future__ import annotations

from typing import Any

import httpx

from worker.notify.fit import truncate_utf8
from worker.notify.message import Notification, Summary, render_markdown
from worker.notify.notifiers.base import Notifier, errcode_error

MARKDOWN_MAX_BYTES = 4096


class WeCom(Notifier):
    kind = "wecom"
    rate_limit_codes = frozenset({45009})  # "api freq out of limit"

    def body(self, n: Notification, summary: Summary) -> dict[str, Any]:
        content = truncate_utf8(render_markdown(n), MARKDOWN_MAX_BYTES)
        return {"msgtype": "markdown", "markdown": {"content": content}}

    def service_error(self, response: httpx.Response) -> tuple[int, str] | None:
        return errcode_error(response, ("errcode",), ("errmsg",))
