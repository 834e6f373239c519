"""Chat deliveries as follow-up steps: exactly once per (event, target), never sleeping.

Each call makes one attempt (worker/notify/delivery.py). A transient failure raises
`RetryLater`: the Celery task re-schedules itself with that countdown (Retry-After when the
service sent one, else exponential backoff), so a chat service that answers 429 holds no worker
slot while it waits. The step key in Redis says who may send: absent (nobody started, or a
dead worker's lease lapsed), `running:N:<token>`, `retry:N` (attempt N is scheduled) or the outcome.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, NoReturn

import httpx
import redis

from worker import tracing
from worker.lua import Script
from worker.notify.dead_letter import DeadLetters, RateLimiter
from worker.notify.delivery import DeliveryResult, backoff_seconds, send_once, severity_allows
from worker.notify.holds import TargetHolds
from worker.notify.message import Notification
from worker.notify.providers import ChatTarget

log = logging.getLogger("rollout_analyzer.chat")

STEP_LEASE_SECONDS = 120
OUTCOME_TTL_SECONDS = 7 * 86400

# Attempt N may start when nobody holds the step, or when attempt N was scheduled. ARGV[3] is
# this call's token: the same call run again (its reply was lost, the client retried) finds its
# own mark and may still start.
_BEGIN = """
local mine = 'running:' .. ARGV[1] .. ':' .. ARGV[3]
local current = redis.call('GET', KEYS[1])
if current == mine then return 1 end
if current == false or current == 'retry:' .. ARGV[1] then
  redis.call('SET', KEYS[1], mine, 'EX', ARGV[2])
  return 1
end
return 0
"""


class RetryLater(Exception):
    """Attempt `attempt` should run in `countdown` seconds."""

    def __init__(self, countdown: float, attempt: int) -> None:
        super().__init__(f"attempt {attempt} in {countdown:.2f}s")
        self.countdown = countdown
        self.attempt = attempt


@dataclass
class ChatSender:
    redis: redis.Redis
    prefix: str
    targets: dict[str, ChatTarget]
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=10))
    max_attempts: int = 4
    max_wait_seconds: float = 60.0
    initial_backoff_seconds: float = 0.5
    clock: Callable[[], float] = time.time  # what signatures are made at
    # Retry-After per target: no request into a wait the service asked for (notify/holds.py).
    holds: TargetHolds = field(default_factory=TargetHolds)

    def __post_init__(self) -> None:
        self._begin = Script(self.redis, _BEGIN)
        self.dead_letters = DeadLetters(self.redis, key=f"{self.prefix}dead-letters")
        self.limiter = RateLimiter(self.redis, prefix=f"{self.prefix}rate")

    def send(
        self,
        step_key: str,
        target_name: str,
        notification: Notification,
        attempt: int = 1,
        rate_key: str | None = None,
    ) -> str:
        """Deliver once per `step_key`; returns the outcome or raises RetryLater."""
        target = self.targets.get(target_name)
        if target is None:
            return "unknown"
        if not severity_allows(target, notification.severity):
            return "suppressed"
        if not self._may_start(step_key, attempt):
            return "duplicate"
        # A failure always gets through; the rate limit is for chatter (and counts a message
        # once, at its first attempt).
        if (
            attempt == 1
            and rate_key is not None
            and notification.severity != "error"
            and target.rate_limit_per_minute is not None
            and not self.limiter.allow(rate_key, target.rate_limit_per_minute, step_key)
        ):
            self._finish(step_key, {"status": "rate_limited"})
            return "rate_limited"
        result = self._attempt(step_key, target, notification, attempt)
        if result.status == "failed":
            self.dead_letters.push(result, notification)
        return self._finish(step_key, result.to_dict())

    def retry_dead_letter(self, entry_id: str, attempt: int = 1) -> str:
        """The REDELIVER task: take the letter out (repeatably), then send it like any message."""
        entry = self.dead_letters.take(entry_id)
        if entry is None:
            return "gone"  # retried or dropped by someone else meanwhile
        return self.redeliver(entry, attempt)

    def redeliver(self, entry: dict[str, Any], attempt: int = 1) -> str:
        """A dead letter sent again on an operator's request, by the same path; when it fails
        again it goes back to the dead letters with one more retry counted."""
        step_key = f"{self.prefix}step:dead:{entry['id']}:{entry.get('retries', 0)}"
        target = self.targets.get(entry["target"])
        if target is None:
            failed = DeliveryResult(entry["target"], "failed", 0, None, "no such target configured")
            self.dead_letters.restore(entry, failed)
            return "unknown"
        if not self._may_start(step_key, attempt):
            return "duplicate"
        notification = Notification.model_validate(entry["notification"])
        result = self._attempt(step_key, target, notification, attempt)
        if result.status == "failed":
            self.dead_letters.restore(entry, result)
        else:
            self.dead_letters.release(entry["id"])
        return self._finish(step_key, result.to_dict())

    def _may_start(self, step_key: str, attempt: int) -> bool:
        token = uuid.uuid4().hex
        return bool(int(self._begin(keys=[step_key], args=[attempt, STEP_LEASE_SECONDS, token])))

    def _attempt(
        self, step_key: str, target: ChatTarget, notification: Notification, attempt: int
    ) -> DeliveryResult:
        """One POST; delivered or failed, or RetryLater with the next attempt scheduled."""
        last = attempt >= self.max_attempts
        held = self.holds.wait_for(target.name)
        if held > 0 and not last:
            # The service refuses until then: this attempt is spent as its 429 would have
            # spent it, without the request. The last attempt always asks: only a real answer
            # makes a dead letter.
            tracing.set_attributes({"chat.target": target.name, "chat.status": "held"})
            self._schedule(step_key, held, attempt + 1)
        # Name and kind only: a chat webhook URL is a credential.
        with tracing.span("chat.deliver", **{"chat.target": target.name, "chat.kind": target.kind}):
            result = send_once(self.http, target, notification, self.clock(), attempt)
            tracing.set_attributes(
                {
                    "chat.status": result.status,
                    "chat.attempts": attempt,
                    "http.response.status_code": result.http_status,
                }
            )
        if result.status == "retry" and result.retry_after is not None:
            self.holds.hold(target.name, min(result.retry_after, self.max_wait_seconds))
        if result.status == "retry" and not last:
            countdown = backoff_seconds(
                attempt,
                result.retry_after,
                initial=self.initial_backoff_seconds,
                cap=self.max_wait_seconds,
            )
            self._schedule(step_key, countdown, attempt + 1)
        if result.status != "delivered":
            return replace(result, status="failed", retry_after=None)
        return result

    def _schedule(self, step_key: str, countdown: float, attempt: int) -> NoReturn:
        # The scheduled attempt owns the step; a duplicate of this one finds it taken.
        lease = int(countdown) + STEP_LEASE_SECONDS
        self.redis.set(step_key, f"retry:{attempt}", ex=lease)
        raise RetryLater(countdown, attempt)

    def _finish(self, step_key: str, outcome: dict[str, Any]) -> str:
        self.redis.set(step_key, json.dumps(outcome), ex=OUTCOME_TTL_SECONDS)
        log.info(
            "notification", extra={k: outcome.get(k) for k in ("target", "status", "attempts")}
        )
        return str(outcome["status"])
