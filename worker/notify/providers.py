"""Chat targets (where a message goes) and the request for one, built by its service's notifier.

`build_request(target, notification, now)` is pure apart from resolving the target's URL and
secret (from the value, an environment variable or a file, read when needed so a rotated
secret is picked up). Signatures use `now`, so a retry signs afresh. What each service expects
lives in worker/notify/notifiers/, one module per service.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from worker.notify.message import Notification, Severity, summarize
from worker.notify.notifiers import NOTIFIERS, PreparedRequest, notifier_for
from worker.notify.notifiers.base import redact_url


class TargetConfigError(ValueError):
    """A target whose URL or secret cannot be resolved (messages never contain the value)."""


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
    kind: str = Field(description="a chat service: one of worker/notify/notifiers' kinds")
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

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in NOTIFIERS:
            raise ValueError(f"unknown chat service {kind!r} (one of {', '.join(NOTIFIERS)})")
        return kind

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


def build_request(target: ChatTarget, notification: Notification, now: float) -> PreparedRequest:
    """The POST that delivers `notification` to `target`, signed at time `now` (epoch seconds)."""
    notifier = notifier_for(target.kind)
    body = notifier.body(notification, summarize(notification))
    return notifier.prepare(target.resolve_url(), body, notification, target.resolve_secret(), now)


__all__ = ["ChatTarget", "PreparedRequest", "TargetConfigError", "build_request", "redact_url"]
