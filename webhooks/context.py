"""What every route group shares: settings, policies, our metrics, and the runtime (Redis,
dispatcher, completion waiter) that exists only while the app runs (its lifespan)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import redis.exceptions
from fastapi import Request

from analysis.policy import PolicySet
from webhooks.deadline import Outliving
from webhooks.metrics import WebhookMetrics
from webhooks.recent import RecentAnswers
from webhooks.runtime import Runtime, build_runtime
from webhooks.waiting import CompletionWaiter
from worker import hints
from worker.report_links import report_url
from worker.settings import Settings

# What a route answers 503 for: the state store (Redis) cannot be reached.
STORE_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)
# At shutdown, how long a claim still running may take to get its task or its undo.
DRAIN_SECONDS = 10.0


@dataclass
class WebhookContext:
    settings: Settings
    policies: PolicySet
    metrics: WebhookMetrics = field(default_factory=WebhookMetrics)
    recent: RecentAnswers = field(default_factory=RecentAnswers)
    outliving: Outliving = field(default_factory=Outliving)  # claims past their answer
    _running: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> WebhookContext:
        return cls(settings, settings.policies())

    @cached_property
    def query_cap(self) -> tuple[str, int, int] | None:
        """The workers' cap on PromQL queries: a claim takes a slot of it for its task."""
        return hints.cap_of(self.settings)

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self._running["runtime"]
        return runtime

    @property
    def waiter(self) -> CompletionWaiter:
        waiter: CompletionWaiter = self._running["waiter"]
        return waiter

    def page_of(self, request: Request, analysis_id: str) -> str:
        """Where a person reads this analysis (`report_url` in every answer)."""
        return report_url(self.settings.public_url or str(request.base_url), analysis_id)

    def key(self, name: str) -> str:
        """A Redis key of ours (under the configured prefix)."""
        return f"{self.settings.key_prefix}{name}"

    @asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        runtime = build_runtime(self.settings)
        waiter = CompletionWaiter(runtime.client, runtime.store)
        await waiter.start()
        self._running.update(runtime=runtime, waiter=waiter)
        try:
            yield
        finally:
            await self.outliving.drain(DRAIN_SECONDS)
            await waiter.stop()
            await runtime.aclose()
