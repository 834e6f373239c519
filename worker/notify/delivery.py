"""Deliver a notification to one chat target, with retries that respect the service.

Retried: network errors and timeouts, HTTP 429 (waiting `Retry-After`, capped), HTTP 5xx,
and the services' own rate-limit codes inside an HTTP 200 answer. Everything else (other
4xx, a wrong signature, a rejected payload) fails at once: repeating it cannot succeed.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol

import httpx
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
)

from worker.notify.message import SEVERITY_ORDER, Notification, clean_text
from worker.notify.providers import ChatTarget, TargetConfigError, build_request, redact_url

log = logging.getLogger("worker.notify")

DeliveryStatus = Literal["delivered", "failed", "suppressed"]

# Service answers (HTTP 200 with an error code in the body) that mean "slow down": retried.
DINGTALK_RATE_LIMIT_CODES = frozenset({130101, 410100})  # "send too fast, exceed 20 times/min"
WECOM_RATE_LIMIT_CODES = frozenset({45009})  # "api freq out of limit"
FEISHU_RATE_LIMIT_CODES = frozenset({11232})  # "frequency limited"

MAX_REASON_CHARS = 300


@dataclass(frozen=True)
class DeliveryResult:
    target: str
    status: DeliveryStatus
    attempts: int
    http_status: int | None = None
    # Why it failed (or was suppressed); never contains the URL or a secret.
    reason: str = ""

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
        )


class _Retryable(Exception):
    def __init__(self, reason: str, http_status: int | None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status
        self.retry_after = retry_after


class _Permanent(Exception):
    def __init__(self, reason: str, http_status: int | None):
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status


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


def _json_or_none(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _body_error(kind: str, data: dict[str, Any] | None) -> tuple[int, str] | None:
    """The service-level error code hidden in a JSON answer, if any."""
    if data is None:
        return None
    if kind in ("dingtalk", "wecom"):
        code, message = data.get("errcode", 0), data.get("errmsg", "")
    elif kind == "feishu":
        # Newer answers use code/msg; older ones StatusCode/StatusMessage.
        code = data.get("code", data.get("StatusCode", 0))
        message = data.get("msg", data.get("StatusMessage", ""))
    else:
        return None
    if isinstance(code, int) and code != 0:
        return code, str(message)
    return None


def _rate_limit_codes(kind: str) -> frozenset[int]:
    return {
        "dingtalk": DINGTALK_RATE_LIMIT_CODES,
        "wecom": WECOM_RATE_LIMIT_CODES,
        "feishu": FEISHU_RATE_LIMIT_CODES,
    }.get(kind, frozenset())


def classify_response(kind: str, response: httpx.Response, now: float) -> None:
    """Return when the service accepted the message; raise _Retryable or _Permanent if not."""
    status = response.status_code
    data = _json_or_none(response) if kind in ("dingtalk", "wecom", "feishu") else None
    body_error = _body_error(kind, data)
    if body_error is not None:
        code, message = body_error
        reason = f"{kind} error {code}: {message}"
        if code in _rate_limit_codes(kind):
            raise _Retryable(reason + " (rate limited)", status)
        raise _Permanent(reason, status)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"), now)
        raise _Retryable(f"HTTP 429: {_snippet(response)}", status, retry_after)
    if status >= 500:
        raise _Retryable(f"HTTP {status}: {_snippet(response)}", status)
    if status >= 300:
        # Slack answers 4xx with a short text such as `invalid_payload` or `no_service`.
        raise _Permanent(f"HTTP {status}: {_snippet(response)}", status)
    if kind == "slack" and response.text.strip() not in ("", "ok"):
        raise _Permanent(f"slack answered {_snippet(response)}", status)


def _snippet(response: httpx.Response) -> str:
    return clean_text(response.text, 120) or response.reason_phrase


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


def deliver(
    client: httpx.Client,
    target: ChatTarget,
    notification: Notification,
    *,
    max_attempts: int = 4,
    max_wait_seconds: float = 30,
    initial_backoff_seconds: float = 0.5,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> DeliveryResult:
    """POST `notification` to `target`, retrying transient failures.

    `max_wait_seconds` caps every single wait, including a service's `Retry-After`.
    `sleep` and `clock` are injectable so tests need not wait for real.
    """
    try:
        url = target.resolve_url()
        redact = _Redactor(url, target.resolve_secret())
    except TargetConfigError as exc:
        log.error("notify %s: %s", target.name, exc)
        return DeliveryResult(target.name, "failed", 0, None, clean_text(str(exc)))
    where = redact_url(url)
    attempts = 0
    last_status: int | None = None

    def attempt() -> int:
        nonlocal attempts, last_status
        attempts += 1
        request = build_request(target, notification, clock())
        try:
            response = client.post(request.url, content=request.content(), headers=request.headers)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timeout: {type(exc).__name__}", None) from None
        except httpx.TransportError as exc:
            raise _Retryable(
                f"network error: {type(exc).__name__}: {redact(str(exc))}", None
            ) from None
        last_status = response.status_code
        classify_response(target.kind, response, clock())
        return response.status_code

    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, _Retryable) and error.retry_after is not None:
            return min(error.retry_after, max_wait_seconds)
        # Exponential backoff with jitter, so workers that failed together do not retry together.
        # (Written out: tenacity renamed wait_exponential_jitter's parameters between versions.)
        exponential = initial_backoff_seconds * 2.0 ** (state.attempt_number - 1)
        jitter = random.uniform(0, initial_backoff_seconds)
        return min(max_wait_seconds, exponential + jitter)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        reason = redact(getattr(error, "reason", str(error)))
        log.warning(
            "notify %s (%s %s): attempt %d failed, retrying in %.2fs: %s",
            target.name, target.kind, where, state.attempt_number,
            state.next_action.sleep if state.next_action else 0.0, reason,
        )  # fmt: skip

    retrying = Retrying(
        retry=retry_if_exception_type(_Retryable),
        stop=stop_after_attempt(max(1, max_attempts)),
        wait=wait,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=False,
    )
    try:
        status = retrying(attempt)
    except RetryError as exc:
        error = exc.last_attempt.exception()
        reason = redact(getattr(error, "reason", str(error)))
        log.error("notify %s (%s %s): giving up after %d attempts: %s",
                  target.name, target.kind, where, attempts, reason)  # fmt: skip
        return DeliveryResult(target.name, "failed", attempts, last_status, reason)
    except _Permanent as exc:
        reason = redact(exc.reason)
        log.error("notify %s (%s %s): rejected: %s", target.name, target.kind, where, reason)
        return DeliveryResult(target.name, "failed", attempts, exc.http_status, reason)
    log.info(
        "notify %s (%s %s): delivered in %d attempt(s)", target.name, target.kind, where, attempts
    )
    return DeliveryResult(target.name, "delivered", attempts, status, "")


# --- fan-out --------------------------------------------------------------------------------------


class _Limiter(Protocol):
    def allow(self, key: str, per_minute: int) -> bool: ...


class _DeadLetterSink(Protocol):
    def push(self, result: DeliveryResult, notification: Notification) -> str: ...


def rate_limit_key(target: ChatTarget, notification: Notification) -> str:
    return f"{notification.namespace}/{notification.rollout}|{target.name}"


def notify(
    client: httpx.Client,
    targets: Iterable[ChatTarget],
    notification: Notification,
    *,
    rate_limiter: _Limiter | None = None,
    dead_letters: _DeadLetterSink | None = None,
    **deliver_options: Any,
) -> list[DeliveryResult]:
    """Send to every target that wants this severity and is under its rate limit.

    Failed deliveries go to `dead_letters` (when given) for a later `retry_all`.
    """
    results: list[DeliveryResult] = []
    for target in targets:
        if not severity_allows(target, notification.severity):
            results.append(DeliveryResult(target.name, "suppressed", 0, None, "below min_severity"))
            continue
        if (
            rate_limiter is not None
            and target.rate_limit_per_minute is not None
            and not rate_limiter.allow(
                rate_limit_key(target, notification), target.rate_limit_per_minute
            )
        ):
            log.warning("notify %s: rate limit reached, message dropped", target.name)
            results.append(DeliveryResult(target.name, "suppressed", 0, None, "rate limited"))
            continue
        result = deliver(client, target, notification, **deliver_options)
        if result.status == "failed" and dead_letters is not None:
            dead_letters.push(result, notification)
        results.append(result)
    return results
