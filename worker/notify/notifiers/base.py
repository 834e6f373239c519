"""The notifier interface: everything one chat service needs, behind one class.

A notifier turns a `Notification` into that service's request (payload and signature) and reads
the service's answer (its error and rate-limit codes) into a `Reply`. The one delivery path
(worker/notify/delivery.py) knows no service by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import urlencode, urlsplit

import httpx

from worker.notify.message import Notification, Summary, clean_text

USER_AGENT = "rollout-analyzer-notify/1"

ReplyStatus = Literal["delivered", "retry", "failed"]


@dataclass(frozen=True)
class PreparedRequest:
    """One POST to a chat service. `repr` hides the URL: it carries the access token."""

    url: str = field(repr=False)
    headers: dict[str, str]
    json_body: dict[str, Any] = field(repr=False)

    def content(self) -> bytes:
        # The exact bytes sent; signatures over the body are computed over these.
        return encode_body(self.json_body)

    def __repr__(self) -> str:
        return f"PreparedRequest(url={redact_url(self.url)!r}, headers={self.headers!r})"


@dataclass(frozen=True)
class Reply:
    """What one answer of a chat service means for the message."""

    status: ReplyStatus
    http_status: int | None
    reason: str = ""  # never contains the URL or a secret (the caller redacts)
    retry_after: float | None = None  # the service's own wish, in seconds


def redact_url(url: str) -> str:
    """`scheme://host/…`: enough to tell targets apart in logs, nothing that grants access."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme or '?'}://{host}/…"


def encode_body(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_headers() -> dict[str, str]:
    return {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT}


def with_query(url: str, params: dict[str, str]) -> str:
    return url + ("&" if urlsplit(url).query else "?") + urlencode(params)


def json_or_none(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def snippet(response: httpx.Response) -> str:
    return clean_text(response.text, 120) or response.reason_phrase


class Notifier:
    """One chat service. Subclasses set `kind` and `body`, and override the hooks they need."""

    kind: ClassVar[str]
    # Codes inside an HTTP 200 answer that mean "slow down": retried like a 429.
    rate_limit_codes: ClassVar[frozenset[int]] = frozenset()

    def body(self, notification: Notification, summary: Summary) -> dict[str, Any]:
        raise NotImplementedError

    def prepare(
        self,
        url: str,
        body: dict[str, Any],
        notification: Notification,
        secret: str | None,
        now: float,
    ) -> PreparedRequest:
        """The request as sent, signed at `now` where the service signs (each retry afresh)."""
        return PreparedRequest(url=url, headers=json_headers(), json_body=body)

    def service_error(self, response: httpx.Response) -> tuple[int, str] | None:
        """The service's own error code hidden in an answer, if it has such codes."""
        return None

    def rejected_ok(self, response: httpx.Response) -> str | None:
        """A reason when a 2xx answer still means the message was not taken."""
        return None

    def read(self, response: httpx.Response, retry_after: float | None) -> Reply:
        """Delivered, retry (5xx, 429, the service's rate-limit codes) or failed (the rest)."""
        status = response.status_code
        error = self.service_error(response)
        if error is not None:
            code, message = error
            reason = f"{self.kind} error {code}: {message}"
            if code in self.rate_limit_codes:
                return Reply("retry", status, reason + " (rate limited)", retry_after)
            return Reply("failed", status, reason)
        if status == 429:
            return Reply("retry", status, f"HTTP 429: {snippet(response)}", retry_after)
        if status >= 500:
            return Reply("retry", status, f"HTTP {status}: {snippet(response)}", retry_after)
        if status >= 300:
            return Reply("failed", status, f"HTTP {status}: {snippet(response)}")
        refused = self.rejected_ok(response)
        if refused is not None:
            return Reply("failed", status, refused)
        return Reply("delivered", status)


def errcode_error(
    response: httpx.Response, code_keys: tuple[str, ...], message_keys: tuple[str, ...]
) -> tuple[int, str] | None:
    """A non-zero `errcode`-style field of a JSON answer (the Chinese services' convention)."""
    data = json_or_none(response)
    if data is None:
        return None
    code = next((data[k] for k in code_keys if k in data), 0)
    message = next((data[k] for k in message_keys if k in data), "")
    if isinstance(code, int) and code != 0:
        return code, str(message)
    return None
