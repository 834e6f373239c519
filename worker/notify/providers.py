"""Chat targets and the request each chat service expects for a `Notification`.

`build_request(target, notification, now)` is pure apart from resolving the target's URL and
secret (from the value, an environment variable or a file, read when needed so a rotated
secret is picked up). Signatures use `now`, so a retry signs afresh.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from worker.notify.message import (
    Notification,
    Severity,
    Summary,
    escape_markdown,
    escape_plain,
    escape_slack,
    header_safe,
    render_markdown,
    render_plain,
    summarize,
)

Kind = Literal["slack", "teams", "dingtalk", "wecom", "feishu", "generic"]

# Documented size limits (bytes of UTF-8 for the Chinese services, characters for Slack).
WECOM_MARKDOWN_MAX_BYTES = 4096
DINGTALK_MARKDOWN_MAX_BYTES = 20000
SLACK_HEADER_MAX = 150
SLACK_FIELD_MAX = 2000
SLACK_SECTION_MAX = 3000
SLACK_BUTTON_TEXT_MAX = 75
SLACK_MAX_FIELDS = 10
SLACK_MAX_BUTTONS = 25
TRUNCATION_MARKER = "\n\n…(truncated)"

USER_AGENT = "rollout-analyzer-notify/1"
GENERIC_SIGNATURE_HEADER = "X-Rollout-Analyzer-Signature"
GENERIC_TIMESTAMP_HEADER = "X-Rollout-Analyzer-Timestamp"


class TargetConfigError(ValueError):
    """A target whose URL or secret cannot be resolved (messages never contain the value)."""


def redact_url(url: str) -> str:
    """`scheme://host/…`: enough to tell targets apart in logs, nothing that grants access."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme or '?'}://{host}/…"


def _read_source(
    target: str, what: str, value: SecretStr | None, env: str | None, file: Path | None
) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if env is not None:
        from_env = os.environ.get(env)
        if not from_env:
            raise TargetConfigError(
                f"target {target!r}: environment variable {env} for the {what} is not set"
            )
        return from_env.strip()
    if file is not None:
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise TargetConfigError(
                f"target {target!r}: cannot read the {what} file {file} ({exc.strerror})"
            ) from None
    return None


class ChatTarget(BaseModel):
    """Where a notification goes. The URL of a chat webhook is itself a credential."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    kind: Kind
    url: SecretStr | None = None
    url_env: str | None = None
    url_file: Path | None = None
    # Signing secret: DingTalk and Feishu "signature" security setting, HMAC for generic.
    secret: SecretStr | None = None
    secret_env: str | None = None
    secret_file: Path | None = None
    min_severity: Severity = "info"
    # Messages per minute per (rollout, target); None switches the limiter off.
    rate_limit_per_minute: int | None = Field(default=6, ge=1)

    @model_validator(mode="after")
    def _one_source_each(self) -> ChatTarget:
        url_sources = [s for s in (self.url, self.url_env, self.url_file) if s is not None]
        if len(url_sources) != 1:
            raise ValueError(
                f"target {self.name!r}: set exactly one of url, url_env, url_file "
                f"(got {len(url_sources)})"
            )
        secret_sources = [
            s for s in (self.secret, self.secret_env, self.secret_file) if s is not None
        ]
        if len(secret_sources) > 1:
            raise ValueError(
                f"target {self.name!r}: set at most one of secret, secret_env, secret_file"
            )
        return self

    def resolve_url(self) -> str:
        url = _read_source(self.name, "URL", self.url, self.url_env, self.url_file)
        if not url:
            raise TargetConfigError(f"target {self.name!r}: the webhook URL is empty")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TargetConfigError(f"target {self.name!r}: the webhook URL is not an http(s) URL")
        return url

    def resolve_secret(self) -> str | None:
        secret = _read_source(self.name, "secret", self.secret, self.secret_env, self.secret_file)
        return secret or None


@dataclass(frozen=True)
class PreparedRequest:
    """One POST to a chat service. `repr` hides the URL: it carries the access token."""

    url: str = field(repr=False)
    headers: dict[str, str]
    json_body: dict[str, Any] = field(repr=False)

    def content(self) -> bytes:
        # The exact bytes sent; the generic HMAC signature is computed over these.
        return encode_body(self.json_body)

    def __repr__(self) -> str:
        return f"PreparedRequest(url={redact_url(self.url)!r}, headers={self.headers!r})"


def encode_body(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _json_headers() -> dict[str, str]:
    return {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}


# --- signatures ----------------------------------------------------------------------------------


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk: base64(HMAC-SHA256(key=secret, msg="{timestamp}\\n{secret}")).

    Returned before URL-encoding; `build_request` encodes it into the query string.
    """
    string_to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), string_to_sign, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu/Lark: base64(HMAC-SHA256(key="{timestamp}\\n{secret}", msg=empty))."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode("ascii")


def generic_sign(secret: str, timestamp_s: int, body: bytes) -> str:
    """Our own scheme for generic receivers: hex HMAC-SHA256 over "{timestamp}." + body."""
    message = f"{timestamp_s}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


# --- size-limited text ---------------------------------------------------------------------------


def truncate_utf8(text: str, max_bytes: int, marker: str = TRUNCATION_MARKER) -> str:
    """Cut `text` to at most `max_bytes` of UTF-8, at a line break when one is near.

    Never splits a multi-byte character, and drops a dangling backslash so the marker is
    not swallowed by an escape.
    """
    if len(text.encode("utf-8")) <= max_bytes:
        return text
    budget = max_bytes - len(marker.encode("utf-8"))
    if budget <= 0:
        return marker.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
    head = text.encode("utf-8")[:budget].decode("utf-8", "ignore")
    line_break = head.rfind("\n")
    if line_break >= len(head) // 2:
        head = head[:line_break]
    head = head.rstrip()
    while head.endswith("\\"):
        head = head[:-1]
    return head + marker


def _fit_lines(lines: list[str], max_chars: int, joiner: str = "\n") -> str:
    """Join whole lines while they fit, then say how many were left out."""
    kept: list[str] = []
    used = 0
    for index, line in enumerate(lines):
        extra = len(line) + (len(joiner) if kept else 0)
        if used + extra > max_chars - 40:
            kept.append(f"…and {len(lines) - index} more")
            break
        kept.append(line)
        used += extra
    return joiner.join(kept)


# --- providers -----------------------------------------------------------------------------------

_SLACK_ICON = {"info": ":large_green_circle:", "warn": ":warning:", "error": ":red_circle:"}


def _slack_mrkdwn(text: str) -> dict[str, Any]:
    # verbatim: no auto-linking of URLs, channel names or mentions in user-derived text.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _slack_body(n: Notification, summary: Summary) -> dict[str, Any]:
    fields = [
        _slack_mrkdwn(f"*{label}:*\n{escape_slack(value)}"[:SLACK_FIELD_MAX])
        for label, value in summary.facts[:SLACK_MAX_FIELDS]
    ]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": escape_plain(summary.title)[:SLACK_HEADER_MAX],
                "emoji": False,
            },
        },
        {
            "type": "section",
            "text": _slack_mrkdwn(f"{_SLACK_ICON[n.severity]} *{escape_slack(summary.headline)}*"),
            "fields": fields,
        },
    ]
    if summary.reasons:
        reasons = _fit_lines([f"• {escape_slack(r)}" for r in summary.reasons], SLACK_SECTION_MAX)
        blocks.append({"type": "section", "text": _slack_mrkdwn(f"*Reasons:*\n{reasons}")})
    actions = _fit_lines([f"• {escape_slack(a)}" for a in summary.actions], SLACK_SECTION_MAX)
    blocks.append({"type": "section", "text": _slack_mrkdwn(f"*Traffic action:*\n{actions}")})
    blocks.append({"type": "context", "elements": [_slack_mrkdwn(escape_slack(summary.footer))]})
    if summary.links:
        buttons = [
            {
                "type": "button",
                "text": {
                    "type": "plain_text",
                    "text": escape_plain(name)[:SLACK_BUTTON_TEXT_MAX] or "link",
                },
                "url": url,
                "action_id": f"link-{index}",
            }
            for index, (name, url) in enumerate(summary.links[:SLACK_MAX_BUTTONS])
        ]
        blocks.append({"type": "actions", "elements": buttons})
    # `text` is the notification/accessibility fallback; it is parsed as mrkdwn too.
    fallback = f"{escape_slack(summary.title)}: {escape_slack(summary.headline)}"
    return {"text": fallback, "blocks": blocks}


_TEAMS_COLOR = {"info": "Good", "warn": "Warning", "error": "Attention"}


def _teams_body(n: Notification, summary: Summary) -> dict[str, Any]:
    body: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": escape_markdown(summary.title),
            "size": "Large",
            "weight": "Bolder",
            "color": _TEAMS_COLOR[n.severity],
            "wrap": True,
        },
        {
            "type": "FactSet",
            "facts": [
                {"title": label, "value": escape_markdown(value)} for label, value in summary.facts
            ],
        },
    ]
    if summary.reasons:
        body.append({"type": "TextBlock", "text": "Reasons", "weight": "Bolder", "wrap": True})
        body.append(
            {
                "type": "TextBlock",
                "text": "\n".join(f"- {escape_markdown(r)}" for r in summary.reasons),
                "wrap": True,
            }
        )
    body.append({"type": "TextBlock", "text": "Traffic action", "weight": "Bolder", "wrap": True})
    body.append(
        {
            "type": "TextBlock",
            "text": "\n".join(f"- {escape_markdown(a)}" for a in summary.actions),
            "wrap": True,
        }
    )
    body.append(
        {
            "type": "TextBlock",
            "text": escape_markdown(summary.footer),
            "isSubtle": True,
            "size": "Small",
            "wrap": True,
        }
    )
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
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def _dingtalk_body(n: Notification, summary: Summary) -> dict[str, Any]:
    text = truncate_utf8(render_markdown(n), DINGTALK_MARKDOWN_MAX_BYTES)
    # `title` is what the conversation list and the push notification show: plain text.
    return {"msgtype": "markdown", "markdown": {"title": escape_plain(summary.title), "text": text}}


def _wecom_body(n: Notification, summary: Summary) -> dict[str, Any]:
    content = truncate_utf8(render_markdown(n), WECOM_MARKDOWN_MAX_BYTES)
    return {"msgtype": "markdown", "markdown": {"content": content}}


_FEISHU_TEMPLATE = {"info": "green", "warn": "orange", "error": "red"}


def _feishu_body(n: Notification, summary: Summary) -> dict[str, Any]:
    facts = [
        {
            "is_short": True,
            "text": {"tag": "lark_md", "content": f"**{label}**\n{escape_markdown(value)}"},
        }
        for label, value in summary.facts
    ]
    elements: list[dict[str, Any]] = [
        {"tag": "div", "fields": facts},
    ]
    if summary.reasons:
        reasons = "\n".join(f"- {escape_markdown(r)}" for r in summary.reasons)
        elements.append(
            {"tag": "div", "text": {"tag": "lark_md", "content": f"**Reasons**\n{reasons}"}}
        )
    actions = "\n".join(f"- {escape_markdown(a)}" for a in summary.actions)
    elements.append(
        {"tag": "div", "text": {"tag": "lark_md", "content": f"**Traffic action**\n{actions}"}}
    )
    if summary.links:
        elements.append({"tag": "hr"})
        elements.append(
            {
                "tag": "action",
                "actions": [
                    {
                        "tag": "button",
                        "text": {"tag": "plain_text", "content": escape_plain(name) or "link"},
                        "url": url,
                        "type": "default",
                    }
                    for name, url in summary.links
                ],
            }
        )
    elements.append(
        {
            "tag": "note",
            "elements": [{"tag": "plain_text", "content": escape_plain(summary.footer)}],
        }
    )
    return {
        "msg_type": "interactive",
        "card": {
            "config": {"wide_screen_mode": True},
            "header": {
                "title": {"tag": "plain_text", "content": escape_plain(summary.title)},
                "template": _FEISHU_TEMPLATE[n.severity],
            },
            "elements": elements,
        },
    }


def _generic_body(n: Notification, summary: Summary) -> dict[str, Any]:
    return n.model_dump(mode="json")


_BODIES: dict[str, Callable[[Notification, Summary], dict[str, Any]]] = {
    "slack": _slack_body,
    "teams": _teams_body,
    "dingtalk": _dingtalk_body,
    "wecom": _wecom_body,
    "feishu": _feishu_body,
    "generic": _generic_body,
}


def _with_query(url: str, params: dict[str, str]) -> str:
    return url + ("&" if urlsplit(url).query else "?") + urlencode(params)


def build_request(target: ChatTarget, notification: Notification, now: float) -> PreparedRequest:
    """The POST that delivers `notification` to `target`, signed at time `now` (epoch seconds)."""
    url = target.resolve_url()
    secret = target.resolve_secret()
    body = _BODIES[target.kind](notification, summarize(notification))
    headers = _json_headers()
    if target.kind == "dingtalk" and secret:
        timestamp_ms = int(now * 1000)
        # urlencode percent-encodes the base64 (+, /, =) as DingTalk requires.
        url = _with_query(
            url, {"timestamp": str(timestamp_ms), "sign": dingtalk_sign(secret, timestamp_ms)}
        )
    elif target.kind == "feishu" and secret:
        timestamp_s = int(now)
        body = {"timestamp": str(timestamp_s), "sign": feishu_sign(secret, timestamp_s), **body}
    elif target.kind == "generic":
        headers["X-Rollout-Analyzer-Event"] = header_safe(notification.event)
        headers["X-Rollout-Analyzer-Analysis-Id"] = header_safe(notification.analysis_id)
        if secret:
            timestamp_s = int(now)
            headers[GENERIC_TIMESTAMP_HEADER] = str(timestamp_s)
            headers[GENERIC_SIGNATURE_HEADER] = generic_sign(secret, timestamp_s, encode_body(body))
    return PreparedRequest(url=url, headers=headers, json_body=body)


__all__ = [
    "ChatTarget",
    "Kind",
    "PreparedRequest",
    "TargetConfigError",
    "build_request",
    "dingtalk_sign",
    "encode_body",
    "feishu_sign",
    "generic_sign",
    "redact_url",
    "render_plain",
    "truncate_utf8",
]
