"""Chat notifications about verdicts and rollout events, one notifier per chat service
(worker/notify/notifiers/) and one delivery path (delivery.send_once, driven by worker/chat.py)."""

from worker.notify.dead_letter import DeadLetters, RateLimiter
from worker.notify.delivery import DeliveryResult, send_once, severity_allows
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
    "render_markdown",
    "render_plain",
    "send_once",
    "severity_allows",
]
