"""Chat notifications about verdicts and rollout events (Slack, Teams, DingTalk, WeCom, Feishu)."""

from worker.notify.dead_letter import DeadLetters, RateLimiter
from worker.notify.delivery import DeliveryResult, deliver, notify, severity_allows
from worker.notify.message import Notification, render_markdown, render_plain
from worker.notify.providers import ChatTarget, PreparedRequest, TargetConfigError, build_request

__all__ = [
    "ChatTarget",
    "DeadLetters",
    "DeliveryResult",
    "Notification",
    "PreparedRequest",
    "RateLimiter",
    "TargetConfigError",
    "build_request",
    "deliver",
    "notify",
    "render_markdown",
    "render_plain",
    "severity_allows",
]
