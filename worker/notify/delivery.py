"""The one delivery path: one POST of a notification to a chat target, and what to do next.

`send_once` makes a single attempt and says *delivered*, *retry* (network errors, timeouts,
HTTP 429 and 5xx, a service's own rate-limit codes) or *failed* (everything else: repeating it
cannot succeed). It never sleeps: the caller schedules the next attempt (the worker through
Celery's retry with a countdown, see worker/chat.py), so no worker slot waits for a chat service.
What each service sends and answers is its notifier's business (worker/notify/notifiers/).
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx

from worker.notify.message import SEVERITY_ORDER, Notification, clean_text
from worker.notify.notifiers import Reply, notifier_for
from worker.notify.providers import ChatTarget, TargetConfigError, build_request, redact_url

log = logging.getLogger("worker.notify")

DeliveryStatus = Literal["delivered", "retry", "failed", "suppressed"]

MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class DeliveryResult:
    target: str
    status: DeliveryStatus
    attempts: int
    http_status: int | None = None
    # Why it failed (or was suppressed); never contains the URL or a secret.
    reason: str = ""
    # For `retry`: the service's own Retry-After, in seconds, when it sent one.
    retry_after: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeliveryResult:
        return cls(
            target=str(data["target"]),
            status=data["status"],
            attempts=int(data["attempts"]),
            http_status=data.get("http_status"),
            reason=str(data.get("reason", "")),
            retry_after=data.get("retry_after"),
        )


def severity_allows(target: ChatTarget, severity: str) -> bool:
    """True when a message of `severity` is at or above the target's `min_severity`."""
    return SEVERITY_ORDER.get(severity, 0) >= SEVERITY_ORDER[target.min_severity]


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


def backoff_seconds(
    attempt: int, retry_after: float | None, *, initial: float = 0.5, cap: float = 60.0
) -> float:
    """The wait before attempt `attempt + 1`: the service's Retry-After when it sent one, else
    exponential with jitter (so workers that failed together do not retry together); capped."""
    if retry_after is not None:
        return min(retry_after, cap)
    exponential = initial * 2.0 ** (max(1, attempt) - 1)
    return min(cap, exponential + random.uniform(0, initial))


class _Redactor:
    """Removes the resolved URL (and its token-carrying parts) and the secret from text."""

    def __init__(self, url: str | None, secret: str | None):
        self._needles = [s for s in (url, secret) if s and len(s) >= 4]
        if url:
            parts = httpx.URL(url)
            self._needles += [p for p in (parts.path, parts.query.decode()) if len(p) >= 4]
        self._needles.sort(key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for needle in self._needles:
            text = text.replace(needle, "…")
        return clean_text(text, MAX_REASON_CHARS)


def send_once(
    client: httpx.Client, target: ChatTarget, notification: Notification, now: float, attempt: int
) -> DeliveryResult:
    """POST `notification` to `target` once (attempt number `attempt`, signed at `now`)."""
    try:
        url = target.resolve_url()
        redact = _Redactor(url, target.resolve_secret())
        request = build_request(target, notification, now)
    except TargetConfigError as exc:
        log.error("notify %s: %s", target.name, exc)
        return DeliveryResult(target.name, "failed", attempt - 1, None, clean_text(str(exc)))
    try:
        response = client.post(request.url, content=request.content(), headers=request.headers)
    except httpx.TimeoutException as exc:
        reply = Reply("retry", None, f"timeout: {type(exc).__name__}")
    except httpx.TransportError as exc:
        reply = Reply("retry", None, f"network error: {type(exc).__name__}: {redact(str(exc))}")
    else:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
        reply = notifier_for(target.kind).read(response, retry_after)
    result = DeliveryResult(
        target.name, reply.status, attempt, reply.http_status, redact(reply.reason),
        reply.retry_after,
    )  # fmt: skip
    where = f"{target.kind} {redact_url(url)}"
    if result.status == "delivered":
        log.info("notify %s (%s): delivered at attempt %d", target.name, where, attempt)
    else:
        log.warning("notify %s (%s): attempt %d: %s: %s",
                    target.name, where, attempt, result.status, result.reason)  # fmt: skip
    return result
