"""What a chat notification says, independent of the chat service that carries it.

Every provider renders the same `Summary` (service, rollout, revision, verdict with score,
reasons, error-budget burn, traffic action, links) so Slack, Teams, DingTalk, WeCom and Feishu
readers all see the same facts. User-derived text (service and rollout names, reasons) is
escaped per output format here, so a hostile name cannot inject links or @-mentions.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Severity = Literal["info", "warn", "error"]
SEVERITY_ORDER: dict[str, int] = {"info": 0, "warn": 1, "error": 2}

VERDICT_SEVERITY: dict[str, Severity] = {"pass": "info", "inconclusive": "warn", "fail": "error"}

# A single reason longer than this is cut: chat cards have per-field limits (Slack: 2000/3000).
MAX_REASON_CHARS = 500

# Control characters, line/paragraph separators and bidi overrides (which can disguise text).
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]+")
# Characters with inline meaning in CommonMark-like dialects (links, emphasis, code, tables).
_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#|~!])")


class ErrorBudget(BaseModel):
    """Error-budget burn of canary versus baseline; any value may be unknown (None)."""

    model_config = ConfigDict(extra="ignore")

    slo: float | None = None
    burn_canary: float | None = None
    burn_baseline: float | None = None
    burn_delta: float | None = None
    excess_errors: float | None = None
    budget_delta: float | None = None


class RequestCounts(BaseModel):
    model_config = ConfigDict(extra="ignore")

    canary: int | None = None
    baseline: int | None = None


class TrafficAction(BaseModel):
    """What the worker did (or tried to do) to traffic after the verdict."""

    model_config = ConfigDict(extra="ignore")

    type: str
    target: str = ""
    status: str = ""
    reason: str = ""
    to_weights: dict[str, int] | None = None


class Notification(BaseModel):
    """One message about an analysis verdict or an Argo Rollouts event."""

    analysis_id: str
    service: str
    namespace: str
    rollout: str
    revision: str = ""
    # "pass" | "fail" | "inconclusive", or an Argo event name such as "rollout-aborted".
    verdict: str
    previous_verdict: str | None = None
    score: float | None = None
    reasons: list[str] = Field(default_factory=list)
    error_budget: ErrorBudget = Field(default_factory=ErrorBudget)
    requests: RequestCounts = Field(default_factory=RequestCounts)
    actions: list[TrafficAction] = Field(default_factory=list)
    links: dict[str, str] = Field(default_factory=dict)
    severity: Severity = "info"
    title: str = ""
    event: str = "verdict"
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @model_validator(mode="before")
    @classmethod
    def _derive_defaults(cls, data: Any) -> Any:
        # Severity and title follow from the verdict unless the caller chose them.
        if not isinstance(data, dict):
            return data
        data = dict(data)
        verdict = str(data.get("verdict", ""))
        if not data.get("severity"):
            data["severity"] = VERDICT_SEVERITY.get(verdict, "warn")
        if not data.get("title"):
            where = f"{data.get('namespace', '')}/{data.get('rollout', '')}"
            data["title"] = f"Canary {verdict_label(verdict)}: {where}"
        return data

    @field_validator("links")
    @classmethod
    def _links_are_plain_http(cls, links: dict[str, str]) -> dict[str, str]:
        # Buttons open these URLs; anything but a plain http(s) URL could be a script or a
        # markup breakout in one of the five formats.
        for name, url in links.items():
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"link {name!r} is not an http(s) URL")
            if any(ch.isspace() or ch in '<>"`|' or ord(ch) < 0x20 for ch in url):
                raise ValueError(f"link {name!r} contains characters not allowed in a URL")
        return links


def verdict_label(verdict: str) -> str:
    return verdict.upper() if verdict in VERDICT_SEVERITY else verdict


# --- text hygiene -------------------------------------------------------------------------------


def clean_text(text: str, max_chars: int | None = None) -> str:
    """One line of text: control characters and newlines become spaces, length is capped."""
    cleaned = _CONTROL_CHARS.sub(" ", unicodedata.normalize("NFC", text)).strip()
    if max_chars is not None and len(cleaned) > max_chars:
        cleaned = cleaned[: max_chars - 1].rstrip() + "…"
    return cleaned


def escape_markdown(text: str) -> str:
    """Escape one line for markdown dialects (DingTalk, WeCom, Feishu lark_md, Teams).

    Backslash-escapes inline specials so `[x](url)` or `**` cannot become markup, and swaps
    `<`/`>` for full-width look-alikes: WeCom (`<@user>`), Feishu (`<at id=all>`) and Teams
    (`<at>`) mention tags all start with `<`, and not every one of these renderers decodes
    HTML entities, so an entity would show up literally.
    """
    line = _MARKDOWN_SPECIALS.sub(r"\\\1", clean_text(text))
    return line.replace("<", "\uff1c").replace(">", "\uff1e")


def escape_plain(text: str) -> str:
    """Text for slots the services document as plain (titles, buttons, notes).

    Those slots are not parsed today; swapping `<`/`>` anyway means a renderer change or a
    misread doc cannot turn a service name into a mention tag there either.
    """
    return clean_text(text).replace("<", "\uff1c").replace(">", "\uff1e")


def escape_slack(text: str) -> str:
    """Escape one line for Slack mrkdwn: the three characters Slack documents (`& < >`)."""
    line = clean_text(text)
    return line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def header_safe(text: str, max_chars: int = 200) -> str:
    """A value fit for an HTTP header: printable ASCII only, no CR/LF to split headers."""
    ascii_only = text.encode("ascii", "replace").decode("ascii")
    return clean_text(ascii_only, max_chars)


def markdown_url(url: str) -> str:
    """A URL safe inside `[text](url)`: parentheses would end the link target early."""
    return url.replace("(", "%28").replace(")", "%29")


# --- the shared summary ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """Raw (unescaped, single-line) texts every provider renders in its own format."""

    title: str
    headline: str
    facts: list[tuple[str, str]]
    reasons: list[str]
    actions: list[str]
    links: list[tuple[str, str]]
    footer: str


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def describe_error_budget(budget: ErrorBudget) -> str:
    parts: list[str] = []
    if budget.burn_canary is not None or budget.burn_baseline is not None:
        parts.append(
            f"burn canary {_num(budget.burn_canary)}x vs baseline {_num(budget.burn_baseline)}x"
        )
    if budget.burn_delta is not None:
        parts.append(f"delta {budget.burn_delta:+.4g}x")
    if budget.excess_errors is not None:
        parts.append(f"{budget.excess_errors:.4g} excess errors")
    if budget.budget_delta is not None:
        parts.append(f"budget delta {budget.budget_delta:+.4g}")
    if budget.slo is not None:
        parts.append(f"SLO {budget.slo * 100:.4g}%" if budget.slo <= 1 else f"SLO {budget.slo}")
    return ", ".join(parts) if parts else "n/a"


def describe_action(action: TrafficAction) -> str:
    text = f"{action.type}"
    if action.target:
        text += f" on {action.target}"
    if action.status:
        text += f": {action.status}"
    if action.to_weights:
        weights = " / ".join(f"{name} {weight}" for name, weight in action.to_weights.items())
        text += f" (weights {weights})"
    if action.reason:
        text += f" ({action.reason})"
    return clean_text(text, MAX_REASON_CHARS)


def summarize(n: Notification) -> Summary:
    verdict = verdict_label(n.verdict)
    headline = f"{verdict} (score {_num(n.score)})"
    if n.previous_verdict:
        headline += f", previously {verdict_label(n.previous_verdict)}"
    requests = f"canary {_num_int(n.requests.canary)}, baseline {_num_int(n.requests.baseline)}"
    facts = [
        ("Service", clean_text(n.service, 200)),
        ("Rollout", clean_text(f"{n.namespace}/{n.rollout}", 200)),
        ("Revision", clean_text(n.revision, 100) or "n/a"),
        ("Verdict", clean_text(headline, 200)),
        ("Requests", requests),
        ("Error budget", describe_error_budget(n.error_budget)),
    ]
    return Summary(
        title=clean_text(n.title, 150),
        headline=clean_text(headline, 200),
        facts=facts,
        reasons=[clean_text(reason, MAX_REASON_CHARS) for reason in n.reasons if reason.strip()],
        actions=[describe_action(action) for action in n.actions] or ["none"],
        links=[(clean_text(name, 60), url) for name, url in n.links.items()],
        footer=clean_text(
            f"analysis {n.analysis_id} | {n.event} | {n.time.isoformat(timespec='seconds')}", 300
        ),
    )


def _num_int(value: int | None) -> str:
    return "n/a" if value is None else str(value)


def render_markdown(n: Notification) -> str:
    """The message in common markdown; every user-derived piece is escaped."""
    summary = summarize(n)
    lines = [f"### {escape_markdown(summary.title)}"]
    lines += [f"**{label}:** {escape_markdown(value)}" for label, value in summary.facts]
    blocks = ["\n\n".join(lines)]
    if summary.reasons:
        blocks.append(
            "**Reasons:**\n" + "\n".join(f"- {escape_markdown(r)}" for r in summary.reasons)
        )
    blocks.append(
        "**Traffic action:**\n" + "\n".join(f"- {escape_markdown(a)}" for a in summary.actions)
    )
    if summary.links:
        blocks.append(
            " | ".join(
                f"[{escape_markdown(name)}]({markdown_url(url)})" for name, url in summary.links
            )
        )
    blocks.append(f"*{escape_markdown(summary.footer)}*")
    return "\n\n".join(blocks)


def render_plain(n: Notification) -> str:
    """The message as plain text (no markup), for fallbacks and logs."""
    summary = summarize(n)
    lines = [summary.title]
    lines += [f"{label}: {value}" for label, value in summary.facts]
    if summary.reasons:
        lines.append("Reasons:")
        lines += [f"- {reason}" for reason in summary.reasons]
    lines.append("Traffic action:")
    lines += [f"- {action}" for action in summary.actions]
    lines += [f"{name}: {url}" for name, url in summary.links]
    lines.append(summary.footer)
    return "\n".join(lines)
