"""Any HTTP receiver: the notification as JSON, HMAC-signed with our own headers when a
secret is set; plain HTTP status codes."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from worker.notify.message import Notification, Summary, header_safe
from worker.notify.notifiers.base import Notifier, PreparedRequest, encode_body, json_headers

SIGNATURE_HEADER = "X-Rollout-Analyzer-Signature"
TIMESTAMP_HEADER = "X-Rollout-Analyzer-Timestamp"


def generic_sign(secret: str, timestamp_s: int, body: bytes) -> str:
    """Hex HMAC-SHA256 over "{timestamp}." + body."""
    message = f"{timestamp_s}.".encode() + body
    return "sha256=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


class Generic(Notifier):
    kind = "generic"

    def body(self, n: Notification, summary: Summary) -> dict[str, Any]:
        return n.model_dump(mode="json")

    def prepare(
        self,
        url: str,
        body: dict[str, Any],
        notification: Notification,
        secret: str | None,
        now: float,
    ) -> PreparedRequest:
        headers = json_headers()
        headers["X-Rollout-Analyzer-Event"] = header_safe(notification.event)
        headers["X-Rollout-Analyzer-Analysis-Id"] = header_safe(notification.analysis_id)
        if secret:
            timestamp_s = int(now)
            headers[TIMESTAMP_HEADER] = str(timestamp_s)
            headers[SIGNATURE_HEADER] = generic_sign(secret, timestamp_s, encode_body(body))
        return PreparedRequest(url=url, headers=headers, json_body=body)
