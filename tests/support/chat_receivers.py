"""Local stand-ins for the chat services' webhook endpoints, for tests.

`ChatReceivers` runs one threaded HTTP server on 127.0.0.1 (free port) with a path per
service: /slack, /teams, /dingtalk, /wecom, /feishu, /discord, /generic. Each path checks what that
service checks (payload shape and limits; DingTalk and Feishu signatures and timestamp
freshness, ±1 h) and answers the way the real service answers on failure, e.g. DingTalk
`{"errcode":310000,...}` with HTTP 200, Feishu `{"code":19021,...}`, Slack 400 `invalid_payload`.

The validators are plain functions (`validate_slack(body) -> list[str]`, ...) written from the
services' documentation, independently of the code under test, so unit tests can use them
without HTTP.

Scripted answers make failure modes reproducible:

    with ChatReceivers(dingtalk_secret="SEC...") as rx:
        rx.script("slack", Answer.status_only(500), Answer.status_only(500))  # then normal
        rx.script("teams", Answer.rate_limited(retry_after="1"))
        rx.always("wecom", Answer.status_only(500))          # 500 forever
        rx.always("feishu", Answer.slow(2.0))                 # sleep, then behave normally
        ... rx.url("slack"), rx.accepted("slack"), rx.rejected("dingtalk"), rx.hits("slack")
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

PATHS = ("slack", "teams", "dingtalk", "wecom", "feishu", "discord", "generic")

# Documented limits.
SLACK_MAX_BLOCKS = 50
SLACK_HEADER_MAX = 150
SLACK_SECTION_TEXT_MAX = 3000
SLACK_FIELD_MAX = 2000
SLACK_MAX_FIELDS = 10
SLACK_MAX_ACTION_ELEMENTS = 25
SLACK_BUTTON_TEXT_MAX = 75
SLACK_URL_MAX = 3000
WECOM_MARKDOWN_MAX_BYTES = 4096
DINGTALK_MAX_BYTES = 20000
FEISHU_CARD_MAX_BYTES = 30 * 1024
# Discord: https://discord.com/developers/docs/resources/webhook#execute-webhook and the embed
# limits of https://discord.com/developers/docs/resources/message#embed-object-embed-limits
DISCORD_CONTENT_MAX = 2000
DISCORD_MAX_EMBEDS = 10
DISCORD_TITLE_MAX = 256
DISCORD_DESCRIPTION_MAX = 4096
DISCORD_MAX_FIELDS = 25
DISCORD_FIELD_NAME_MAX = 256
DISCORD_FIELD_VALUE_MAX = 1024
DISCORD_FOOTER_MAX = 2048
DISCORD_EMBEDS_TOTAL_MAX = 6000
SIGNATURE_FRESHNESS_SECONDS = 3600

ADAPTIVE_CARD_CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"


# --- validators: return a list of problems, empty when the payload is acceptable ---------------


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _slack_text_object(obj: Any, where: str, max_len: int, plain_only: bool = False) -> list[str]:
    if not isinstance(obj, dict):
        return [f"{where}: text object must be an object"]
    kind = obj.get("type")
    allowed = ("plain_text",) if plain_only else ("plain_text", "mrkdwn")
    problems = []
    if kind not in allowed:
        problems.append(f"{where}: text type must be one of {allowed}, got {kind!r}")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        problems.append(f"{where}: text must be a non-empty string")
    elif len(text) > max_len:
        problems.append(f"{where}: text longer than {max_len} characters")
    if kind == "plain_text" and "verbatim" in obj:
        problems.append(f"{where}: verbatim is only valid on mrkdwn")
    if kind == "mrkdwn" and "emoji" in obj:
        problems.append(f"{where}: emoji is only valid on plain_text")
    return problems


def _slack_block(block: Any, index: int, action_ids: set[str]) -> list[str]:
    where = f"blocks[{index}]"
    if not isinstance(block, dict):
        return [f"{where}: must be an object"]
    kind = block.get("type")
    problems: list[str] = []
    if kind == "header":
        problems += _slack_text_object(block.get("text"), where, SLACK_HEADER_MAX, plain_only=True)
    elif kind == "section":
        if "text" not in block and "fields" not in block:
            problems.append(f"{where}: section needs text or fields")
        if "text" in block:
            problems += _slack_text_object(block["text"], where, SLACK_SECTION_TEXT_MAX)
        fields = block.get("fields", [])
        if not isinstance(fields, list) or len(fields) > SLACK_MAX_FIELDS:
            problems.append(f"{where}: fields must be a list of at most {SLACK_MAX_FIELDS}")
        else:
            for i, item in enumerate(fields):
                problems += _slack_text_object(item, f"{where}.fields[{i}]", SLACK_FIELD_MAX)
    elif kind == "context":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= 10:
            problems.append(f"{where}: context needs 1..10 elements")
        else:
            for i, item in enumerate(elements):
                if isinstance(item, dict) and item.get("type") == "image":
                    continue
                problems += _slack_text_object(item, f"{where}.elements[{i}]", 3000)
    elif kind == "actions":
        elements = block.get("elements")
        if not isinstance(elements, list) or not 1 <= len(elements) <= SLACK_MAX_ACTION_ELEMENTS:
            problems.append(f"{where}: actions needs 1..{SLACK_MAX_ACTION_ELEMENTS} elements")
        else:
            for i, button in enumerate(elements):
                bwhere = f"{where}.elements[{i}]"
                if not isinstance(button, dict) or button.get("type") != "button":
                    problems.append(f"{bwhere}: only buttons are expected here")
                    continue
                problems += _slack_text_object(
                    button.get("text"), bwhere, SLACK_BUTTON_TEXT_MAX, plain_only=True
                )
                url = button.get("url")
                if url is not None and (not _is_http_url(url) or len(url) > SLACK_URL_MAX):
                    problems.append(f"{bwhere}: url must be an http(s) URL of at most 3000 chars")
                action_id = button.get("action_id")
                if action_id is not None:
                    if action_id in action_ids:
                        problems.append(f"{bwhere}: duplicate action_id {action_id!r}")
                    action_ids.add(action_id)
    elif kind == "divider":
        pass
    else:
        problems.append(f"{where}: unexpected block type {kind!r}")
    return problems


def validate_slack(body: Any) -> list[str]:
    """Slack incoming webhook: `text` and/or Block Kit `blocks`."""
    if not isinstance(body, dict):
        return ["payload must be a JSON object"]
    text, blocks = body.get("text"), body.get("blocks")
    if text is None and blocks is None:
        return ["payload needs text or blocks"]
    problems = []
    if text is not None and (not isinstance(text, str) or not text):
        problems.append("text must be a non-empty string")
    if blocks is not None:
        if not isinstance(blocks, list) or not 1 <= len(blocks) <= SLACK_MAX_BLOCKS:
            return [*problems, f"blocks must be a list of 1..{SLACK_MAX_BLOCKS} blocks"]
        action_ids: set[str] = set()
        for index, block in enumerate(blocks):
            problems += _slack_block(block, index, action_ids)
    return problems


_AC_TEXT_COLORS = {"Default", "Dark", "Light", "Accent", "Good", "Warning", "Attention"}
_AC_SIZES = {"Default", "Small", "Medium", "Large", "ExtraLarge"}
_AC_WEIGHTS = {"Default", "Lighter", "Bolder"}
_AC_ELEMENTS = {
    "TextBlock",
    "FactSet",
    "ColumnSet",
    "Container",
    "Image",
    "ActionSet",
    "RichTextBlock",
}
_AC_ACTIONS = {"Action.OpenUrl", "Action.ShowCard", "Action.ToggleVisibility", "Action.Execute"}


def _adaptive_element(element: Any, where: str) -> list[str]:
    if not isinstance(element, dict):
        return [f"{where}: element must be an object"]
    kind = element.get("type")
    problems: list[str] = []
    if kind not in _AC_ELEMENTS:
        return [f"{where}: unknown element type {kind!r}"]
    if kind == "TextBlock":
        if not isinstance(element.get("text"), str) or not element["text"]:
            problems.append(f"{where}: TextBlock.text must be a non-empty string")
        if element.get("color", "Default") not in _AC_TEXT_COLORS:
            problems.append(f"{where}: bad color {element.get('color')!r}")
        if element.get("size", "Default") not in _AC_SIZES:
            problems.append(f"{where}: bad size {element.get('size')!r}")
        if element.get("weight", "Default") not in _AC_WEIGHTS:
            problems.append(f"{where}: bad weight {element.get('weight')!r}")
    if kind == "FactSet":
        facts = element.get("facts")
        if not isinstance(facts, list) or not facts:
            problems.append(f"{where}: FactSet.facts must be a non-empty list")
        else:
            for i, fact in enumerate(facts):
                if not (
                    isinstance(fact, dict)
                    and isinstance(fact.get("title"), str)
                    and isinstance(fact.get("value"), str)
                ):
                    problems.append(f"{where}.facts[{i}]: needs string title and value")
    return problems


def validate_teams(body: Any) -> list[str]:
    """Teams Workflows webhook: a message whose attachments carry Adaptive Cards."""
    if not isinstance(body, dict):
        return ["payload must be a JSON object"]
    problems = []
    if body.get("type") != "message":
        problems.append("type must be 'message'")
    attachments = body.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return [*problems, "attachments must be a non-empty list"]
    for a, attachment in enumerate(attachments):
        where = f"attachments[{a}]"
        if not isinstance(attachment, dict):
            problems.append(f"{where}: must be an object")
            continue
        if attachment.get("contentType") != ADAPTIVE_CARD_CONTENT_TYPE:
            problems.append(f"{where}: contentType must be {ADAPTIVE_CARD_CONTENT_TYPE}")
        card = attachment.get("content")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            problems.append(f"{where}: content must be an AdaptiveCard")
            continue
        version = card.get("version")
        if not isinstance(version, str) or not re.fullmatch(r"1\.[0-6]", version):
            problems.append(f"{where}: version must be a string 1.0..1.6, got {version!r}")
        card_body = card.get("body")
        if not isinstance(card_body, list) or not card_body:
            problems.append(f"{where}: body must be a non-empty list")
        else:
            for i, element in enumerate(card_body):
                problems += _adaptive_element(element, f"{where}.body[{i}]")
        for i, action in enumerate(card.get("actions", [])):
            awhere = f"{where}.actions[{i}]"
            if not isinstance(action, dict) or action.get("type") not in _AC_ACTIONS:
                problems.append(f"{awhere}: unknown action")
            elif action["type"] == "Action.OpenUrl" and not _is_http_url(action.get("url")):
                problems.append(f"{awhere}: Action.OpenUrl needs an http(s) url")
    return problems


def validate_dingtalk(body: Any) -> list[str]:
    """DingTalk custom robot; we only ever expect `markdown` (title + text)."""
    if not isinstance(body, dict):
        return ["payload must be a JSON object"]
    if body.get("msgtype") not in ("text", "link", "markdown", "actionCard", "feedCard"):
        return [f"unknown msgtype {body.get('msgtype')!r}"]
    if body["msgtype"] != "markdown":
        return ["expected msgtype markdown"]
    markdown = body.get("markdown")
    if not isinstance(markdown, dict):
        return ["markdown must be an object"]
    problems = []
    for key in ("title", "text"):
        if not isinstance(markdown.get(key), str) or not markdown[key]:
            problems.append(f"markdown.{key} must be a non-empty string")
    text = markdown.get("text")
    if isinstance(text, str) and len(text.encode("utf-8")) > DINGTALK_MAX_BYTES:
        problems.append(f"markdown.text longer than {DINGTALK_MAX_BYTES} bytes")
    return problems


def validate_wecom(body: Any) -> list[str]:
    """WeCom group robot; we only ever expect `markdown` with content ≤ 4096 UTF-8 bytes."""
    if not isinstance(body, dict):
        return ["payload must be a JSON object"]
    if body.get("msgtype") != "markdown":
        return [f"expected msgtype markdown, got {body.get('msgtype')!r}"]
    markdown = body.get("markdown")
    content = markdown.get("content") if isinstance(markdown, dict) else None
    if not isinstance(content, str) or not content:
        return ["markdown.content must be a non-empty string"]
    if len(content.encode("utf-8")) > WECOM_MARKDOWN_MAX_BYTES:
        return [f"markdown.content exceed max length {WECOM_MARKDOWN_MAX_BYTES}"]
    return []


_FEISHU_TEMPLATES = {
    "blue", "wathet", "turquoise", "green", "yellow", "orange", "red",
    "carmine", "violet", "purple", "indigo", "grey", "default",
}  # fmt: skip
_FEISHU_TEXT_TAGS = {"plain_text", "lark_md"}


def _feishu_text(obj: Any, where: str) -> list[str]:
    if not isinstance(obj, dict) or obj.get("tag") not in _FEISHU_TEXT_TAGS:
        return [f"{where}: text needs tag plain_text or lark_md"]
    if not isinstance(obj.get("content"), str):
        return [f"{where}: text content must be a string"]
    return []


def _feishu_element(element: Any, where: str) -> list[str]:
    if not isinstance(element, dict):
        return [f"{where}: must be an object"]
    tag = element.get("tag")
    problems: list[str] = []
    if tag == "div":
        if "text" not in element and "fields" not in element:
            problems.append(f"{where}: div needs text or fields")
        if "text" in element:
            problems += _feishu_text(element["text"], where)
        for i, item in enumerate(element.get("fields", [])):
            if not isinstance(item, dict) or not isinstance(item.get("is_short"), bool):
                problems.append(f"{where}.fields[{i}]: needs boolean is_short")
                continue
            problems += _feishu_text(item.get("text"), f"{where}.fields[{i}]")
    elif tag == "action":
        actions = element.get("actions")
        if not isinstance(actions, list) or not actions:
            problems.append(f"{where}: action needs a non-empty actions list")
        else:
            for i, button in enumerate(actions):
                bwhere = f"{where}.actions[{i}]"
                if not isinstance(button, dict) or button.get("tag") != "button":
                    problems.append(f"{bwhere}: only buttons are expected")
                    continue
                problems += _feishu_text(button.get("text"), bwhere)
                if "url" in button and not _is_http_url(button["url"]):
                    problems.append(f"{bwhere}: url must be http(s)")
                if button.get("type", "default") not in ("default", "primary", "danger"):
                    problems.append(f"{bwhere}: bad button type")
    elif tag == "note":
        elements = element.get("elements")
        if not isinstance(elements, list) or not elements:
            problems.append(f"{where}: note needs elements")
        else:
            for i, item in enumerate(elements):
                problems += _feishu_text(item, f"{where}.elements[{i}]")
    elif tag not in ("hr", "img", "markdown"):
        problems.append(f"{where}: unexpected element tag {tag!r}")
    return problems


def validate_feishu(body: Any) -> list[str]:
    """Feishu/Lark custom bot; we only ever expect `interactive` cards."""
    if not isinstance(body, dict):
        return ["payload must be a JSON object"]
    if body.get("msg_type") != "interactive":
        return [f"expected msg_type interactive, got {body.get('msg_type')!r}"]
    card = body.get("card")
    if not isinstance(card, dict):
        return ["card must be an object"]
    problems = []
    header = card.get("header")
    if header is not None:
        if not isinstance(header, dict):
            problems.append("card.header must be an object")
        else:
            title = header.get("title")
            problems += _feishu_text(title, "card.header.title")
            if header.get("template", "default") not in _FEISHU_TEMPLATES:
                problems.append(f"card.header.template {header.get('template')!r} unknown")
    elements = card.get("elements")
    if not isinstance(elements, list) or not elements:
        problems.append("card.elements must be a non-empty list")
    else:
        for i, element in enumerate(elements):
            problems += _feishu_element(element, f"card.elements[{i}]")
    if len(json.dumps(card, ensure_ascii=False).encode()) > FEISHU_CARD_MAX_BYTES:
        problems.append("card larger than 30 KB")
    return problems


def _discord_embed(embed: Any, where: str) -> tuple[list[str], int]:
    """Problems of one embed, and the characters it counts towards the 6000 total."""
    if not isinstance(embed, dict):
        return [f"{where} must be an object"], 0
    problems: list[str] = []
    total = 0
    for key, limit in (("title", DISCORD_TITLE_MAX), ("description", DISCORD_DESCRIPTION_MAX)):
        value = embed.get(key)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            problems.append(f"{where}.{key} must be a string of at most {limit}")
        total += len(value) if isinstance(value, str) else 0
    color = embed.get("color")
    if color is not None and not (isinstance(color, int) and 0 <= color <= 0xFFFFFF):
        problems.append(f"{where}.color must be an integer 0..0xFFFFFF")
    fields = embed.get("fields") or []
    if not isinstance(fields, list) or len(fields) > DISCORD_MAX_FIELDS:
        problems.append(f"{where}.fields: at most {DISCORD_MAX_FIELDS}")
        fields = []
    for i, item in enumerate(fields):
        name, value = (item or {}).get("name"), (item or {}).get("value")
        if not isinstance(name, str) or not 0 < len(name) <= DISCORD_FIELD_NAME_MAX:
            problems.append(f"{where}.fields[{i}].name: 1..{DISCORD_FIELD_NAME_MAX} characters")
        if not isinstance(value, str) or not 0 < len(value) <= DISCORD_FIELD_VALUE_MAX:
            problems.append(f"{where}.fields[{i}].value: 1..{DISCORD_FIELD_VALUE_MAX} characters")
        total += sum(len(x) for x in (name, value) if isinstance(x, str))
    footer = (embed.get("footer") or {}).get("text", "")
    if not isinstance(footer, str) or len(footer) > DISCORD_FOOTER_MAX:
        problems.append(f"{where}.footer.text: at most {DISCORD_FOOTER_MAX} characters")
    total += len(footer) if isinstance(footer, str) else 0
    return problems, total


def validate_discord(body: Any) -> list[str]:
    """A Discord webhook message: `content` and/or `embeds`, within Discord's limits."""
    if not isinstance(body, dict):
        return ["payload must be a JSON object"]
    content, embeds = body.get("content"), body.get("embeds")
    if not content and not embeds:
        return ["Cannot send an empty message"]
    problems: list[str] = []
    if content is not None and (not isinstance(content, str) or len(content) > DISCORD_CONTENT_MAX):
        problems.append(f"content: at most {DISCORD_CONTENT_MAX} characters")
    if embeds is not None and (not isinstance(embeds, list) or len(embeds) > DISCORD_MAX_EMBEDS):
        return [*problems, f"embeds: a list of at most {DISCORD_MAX_EMBEDS}"]
    total = 0
    for i, embed in enumerate(embeds or []):
        found, chars = _discord_embed(embed, f"embeds[{i}]")
        problems += found
        total += chars
    if total > DISCORD_EMBEDS_TOTAL_MAX:
        problems.append(f"embeds: {total} characters in all, at most {DISCORD_EMBEDS_TOTAL_MAX}")
    parse = (body.get("allowed_mentions") or {}).get("parse", [])
    if not isinstance(parse, list) or not set(parse) <= {"roles", "users", "everyone"}:
        problems.append("allowed_mentions.parse: a list of roles, users, everyone")
    return problems


_GENERIC_STRINGS = ("analysis_id", "service", "namespace", "rollout", "verdict", "event", "time")


def validate_generic(body: Any) -> list[str]:
    """Our generic JSON webhook: the notification's fields, with their JSON types."""
    if not isinstance(body, dict):
        return ["payload must be a JSON object"]
    problems = [
        f"{key} must be a string" for key in _GENERIC_STRINGS if not isinstance(body.get(key), str)
    ]
    if body.get("severity") not in ("info", "warn", "error"):
        problems.append("severity must be info, warn or error")
    if not isinstance(body.get("reasons"), list) or not all(
        isinstance(r, str) for r in body["reasons"]
    ):
        problems.append("reasons must be a list of strings")
    for key in ("error_budget", "requests", "links"):
        if not isinstance(body.get(key), dict):
            problems.append(f"{key} must be an object")
    if not isinstance(body.get("actions"), list):
        problems.append("actions must be a list")
    return problems


VALIDATORS: dict[str, Callable[[Any], list[str]]] = {
    "slack": validate_slack,
    "teams": validate_teams,
    "dingtalk": validate_dingtalk,
    "wecom": validate_wecom,
    "feishu": validate_feishu,
    "discord": validate_discord,
    "generic": validate_generic,
}


# --- signature checks: return a problem, or None when the signature is good --------------------


def check_dingtalk_signature(query: str, secret: str, now: float) -> str | None:
    """DingTalk: `timestamp` (ms) and URL-encoded base64 HMAC-SHA256(secret, "ts\\nsecret")."""
    params = parse_qs(query)
    timestamp, sign = params.get("timestamp", [""])[0], params.get("sign", [""])[0]
    if not timestamp.isdigit() or not sign:
        return "sign not match: timestamp and sign are required"
    if abs(now * 1000 - int(timestamp)) > SIGNATURE_FRESHNESS_SECONDS * 1000:
        return "invalid timestamp: more than one hour from the server's time"
    digest = hmac.new(secret.encode(), f"{timestamp}\n{secret}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(base64.b64encode(digest).decode(), sign):
        return "sign not match"
    return None


def check_feishu_signature(body: Any, secret: str, now: float) -> str | None:
    """Feishu: body `timestamp` (s) and base64 HMAC-SHA256(key="ts\\nsecret", msg=empty)."""
    if not isinstance(body, dict):
        return "sign match fail"
    timestamp, sign = str(body.get("timestamp", "")), body.get("sign")
    if not timestamp.isdigit() or not isinstance(sign, str):
        return "sign match fail: timestamp and sign are required"
    if abs(now - int(timestamp)) > SIGNATURE_FRESHNESS_SECONDS:
        return "timestamp is not within one hour from current time"
    key = f"{timestamp}\n{secret}".encode()
    expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    if not hmac.compare_digest(expected, sign):
        return "sign match fail"
    return None


def check_generic_signature(
    headers: Mapping[str, str], raw: bytes, secret: str, now: float
) -> str | None:
    """Generic: `X-Rollout-Analyzer-Signature: sha256=hex(HMAC(secret, "ts." + body))`."""
    lowered = {name.lower(): value for name, value in headers.items()}
    timestamp = lowered.get("x-rollout-analyzer-timestamp", "")
    signature = lowered.get("x-rollout-analyzer-signature", "")
    if not timestamp.isdigit() or not signature:
        return "missing signature headers"
    if abs(now - int(timestamp)) > SIGNATURE_FRESHNESS_SECONDS:
        return "stale timestamp"
    expected = (
        "sha256="
        + hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()
    )
    if not hmac.compare_digest(expected, signature):
        return "bad signature"
    return None


# --- the server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A programmed answer. `status=None` means: behave like the service (validate, reply)."""

    status: int | None = None
    body: str | bytes | dict[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_seconds: float = 0.0

    @classmethod
    def status_only(cls, status: int, body: str = "") -> Answer:
        return cls(status=status, body=body or f"error {status}")

    @classmethod
    def rate_limited(cls, retry_after: str = "1") -> Answer:
        return cls(status=429, body="rate_limited", headers={"Retry-After": retry_after})

    @classmethod
    def slow(cls, seconds: float) -> Answer:
        return cls(delay_seconds=seconds)

    @classmethod
    def json(cls, payload: dict[str, Any], status: int = 200) -> Answer:
        return cls(status=status, body=payload)


@dataclass(frozen=True)
class Received:
    path: str
    query: str
    headers: dict[str, str]  # names lower-cased
    raw: bytes
    body: Any
    reason: str = ""


@dataclass
class _Route:
    queue: list[Answer] = field(default_factory=list)
    default: Answer | None = None
    hits: int = 0
    accepted: list[Received] = field(default_factory=list)
    rejected: list[Received] = field(default_factory=list)


class ChatReceivers:
    """Threaded local webhook receivers; use as a context manager."""

    def __init__(
        self,
        *,
        dingtalk_secret: str | None = None,
        feishu_secret: str | None = None,
        generic_secret: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secrets = {
            "dingtalk": dingtalk_secret,
            "feishu": feishu_secret,
            "generic": generic_secret,
        }
        self.clock = clock
        self._routes = {path: _Route() for path in PATHS}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval keeps close() (which waits for one poll) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # lifecycle
    def __enter__(self) -> ChatReceivers:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closing.set()  # wakes handlers sleeping in a slow answer
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    # programming
    def script(self, path: str, *answers: Answer) -> None:
        """Answers used once each, in order, before the default behaviour."""
        with self._lock:
            self._routes[path].queue.extend(answers)

    def always(self, path: str, answer: Answer | None) -> None:
        """The answer once the script is used up (None: behave like the service)."""
        with self._lock:
            self._routes[path].default = answer

    # inspection
    def reset(self) -> None:
        """Forget every message and scripted answer (between tests sharing one receiver)."""
        with self._lock:
            self._routes = {path: _Route() for path in PATHS}

    def hits(self, path: str) -> int:
        with self._lock:
            return self._routes[path].hits

    def accepted(self, path: str) -> list[Received]:
        with self._lock:
            return list(self._routes[path].accepted)

    def rejected(self, path: str) -> list[Received]:
        with self._lock:
            return list(self._routes[path].rejected)

    # request handling
    def _next_answer(self, path: str) -> Answer | None:
        with self._lock:
            route = self._routes[path]
            route.hits += 1
            return route.queue.pop(0) if route.queue else route.default

    def _record(self, received: Received, accepted: bool) -> None:
        with self._lock:
            route = self._routes[received.path]
            (route.accepted if accepted else route.rejected).append(received)

    def _service_answer(self, received: Received) -> tuple[int, Any]:
        """Validate like the service and return (HTTP status, answer body)."""
        path, now = received.path, self.clock()
        secret = self.secrets.get(path)
        if received.body is None:
            problems = ["body is not JSON"]
        else:
            problems = VALIDATORS[path](received.body)
        signature_problem = None
        if secret and path == "dingtalk":
            signature_problem = check_dingtalk_signature(received.query, secret, now)
        elif secret and path == "feishu":
            signature_problem = check_feishu_signature(received.body, secret, now)
        elif secret and path == "generic":
            signature_problem = check_generic_signature(received.headers, received.raw, secret, now)
        if signature_problem:
            self._record(_with_reason(received, signature_problem), accepted=False)
            return {
                "dingtalk": (200, {"errcode": 310000, "errmsg": signature_problem}),
                "feishu": (200, {"code": 19021, "msg": signature_problem}),
            }.get(path, (401, {"error": signature_problem}))
        if problems:
            reason = "; ".join(problems)
            self._record(_with_reason(received, reason), accepted=False)
            return {
                "slack": (400, "invalid_blocks" if "blocks" in reason else "invalid_payload"),
                "teams": (400, {"error": {"code": "InvalidRequestContent", "message": reason}}),
                "dingtalk": (200, {"errcode": 40035, "errmsg": f"invalid parameter: {reason}"}),
                "wecom": (200, {"errcode": 40058, "errmsg": reason}),
                "feishu": (400, {"code": 9499, "msg": f"Bad Request: {reason}"}),
                "discord": (400, {"code": 50035, "message": f"Invalid Form Body: {reason}"}),
            }.get(path, (400, {"error": reason}))
        self._record(received, accepted=True)
        return {
            "slack": (200, "ok"),
            "teams": (202, ""),
            "dingtalk": (200, {"errcode": 0, "errmsg": "ok"}),
            "wecom": (200, {"errcode": 0, "errmsg": "ok"}),
            "feishu": (200, {"code": 0, "msg": "success", "data": {}}),
            "discord": (204, ""),
        }.get(path, (200, {"ok": True}))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receivers = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                path = parts.path.strip("/")
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                if path not in PATHS:
                    self._reply(404, "no_service", {})
                    return
                answer = receivers._next_answer(path)
                delay = answer.delay_seconds if answer is not None else 0.0
                if delay > 0 and receivers._closing.wait(delay):
                    return  # shutting down
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    body = None
                headers = {name.lower(): value for name, value in self.headers.items()}
                received = Received(path, parts.query, headers, raw, body)
                if answer is not None and answer.status is not None:
                    self._reply(answer.status, answer.body, answer.headers)
                    return
                status, reply = receivers._service_answer(received)
                self._reply(status, reply, {})

            def _reply(self, status: int, body: Any, headers: Mapping[str, str]) -> None:
                if isinstance(body, dict):
                    payload, content_type = json.dumps(body).encode(), "application/json"
                elif isinstance(body, bytes):
                    payload, content_type = body, "application/octet-stream"
                else:
                    payload, content_type = str(body or "").encode(), "text/plain; charset=utf-8"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(payload)))
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): nothing to tell it

        return Handler


def _with_reason(received: Received, reason: str) -> Received:
    return Received(
        received.path, received.query, received.headers, received.raw, received.body, reason
    )
