"""Celery tasks. Each carries only ids; the state waits in Redis.

analyze(analysis_id) → on a new verdict event: act(event_id) → notify(event_id, target) each.
The follow-ups (act, notify, argo_event, redeliver) run on their own queue (worker/queues.py);
a chat delivery that must wait is re-scheduled by Celery's retry, never slept in a task.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import redis.exceptions
from celery import Task, current_app, shared_task

from analysis.policy import PolicySet
from analysis.sources import MetricsSource
from worker import hints
from worker.celery_app import worker_name, worker_store
from worker.chat import RetryLater
from worker.followup import Followup, build_followup
from worker.jobs import execute
from worker.query_cap import CappedSource, QueryCap
from worker.queues import priority_for, queue_for
from worker.sequences import SequenceStore
from worker.settings import get_settings
from worker.task_names import (
    ACT_TASK,
    ANALYZE_TASK,
    ARGO_EVENT_TASK,
    NOTIFY_TASK,
    REDELIVER_TASK,
)


@lru_cache(maxsize=1)
def analysis_source() -> MetricsSource:
    settings = get_settings()
    source = settings.source()
    # The same cap the webhook's claims take slots of (worker/hints.py). A slot is never held
    # longer than a task may run: a dead holder frees it by then.
    capped = hints.cap_of(settings)
    if capped is not None:
        key, limit, lease_ms = capped
        return CappedSource(source, QueryCap(worker_store().redis, key, limit, lease_ms / 1000))
    return source


@lru_cache(maxsize=1)
def analysis_policies() -> PolicySet:
    return get_settings().policies()


@lru_cache(maxsize=1)
def followup() -> Followup:
    settings = get_settings()

    def enqueue(task: str, args: list[Any]) -> None:
        queue, priority = queue_for(settings, task), priority_for(task)
        current_app.send_task(task, args=args, queue=queue, priority=priority)

    return build_followup(settings, worker_store().redis, enqueue)


@lru_cache(maxsize=1)
def _sequences() -> SequenceStore:
    settings = get_settings()
    return SequenceStore(worker_store().redis, settings.key_prefix, settings.sequence_ttl_seconds)


# Redis out of reach past the client's own retries: the task runs again later rather than be
# dropped (acked as failed). Every step is safe to redo: a done analysis offers its follow-up
# again, a done step is skipped.
REDIS_UNREACHABLE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)
RETRIED = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "autoretry_for": REDIS_UNREACHABLE,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "max_retries": 8,
}


# Its message's query goes to Prometheus as the message is read (worker/ahead.py).
@shared_task(bind=True, name=ANALYZE_TASK, Strategy="worker.ahead:strategy", **RETRIED)
def analyze(self: Task, analysis_id: str) -> str:
    settings = get_settings()
    return execute(
        worker_store(),
        analysis_id,
        worker=worker_name(),
        source=analysis_source(),
        policies=analysis_policies(),
        lease_seconds=settings.lease_seconds,
        reuse_seconds=settings.reuse_seconds,
        budget_seconds=settings.task_soft_time_limit - 1,
        after=followup().on_verdict,
        sequences=_sequences(),
        history=followup().history,
        # What the webhook's message says ahead of START (worker/hints.py).
        hint=hints.read(self.request),
    )


@shared_task(name=ACT_TASK, **RETRIED)
def act(event_id: str) -> int:
    return len(followup().act(event_id))


# One attempt per run: a transient failure re-schedules the task (Celery's countdown), so a
# chat service that is down or rate-limiting holds no worker slot. Our ChatSender counts the
# attempts (the step key in Redis), hence max_retries=None here.
@shared_task(bind=True, name=NOTIFY_TASK, **RETRIED)
def notify(self: Task, event_id: str, target: str, attempt: int = 1) -> str:
    try:
        return followup().notify(event_id, target, attempt)
    except RetryLater as later:
        args = [event_id, target, later.attempt]
        raise self.retry(args=args, countdown=later.countdown, max_retries=None) from None


@shared_task(bind=True, name=REDELIVER_TASK, **RETRIED)
def redeliver(self: Task, entry_id: str, attempt: int = 1) -> str:
    chat = followup().chat
    assert chat is not None
    try:
        return chat.retry_dead_letter(entry_id, attempt)
    except RetryLater as later:
        args = [entry_id, later.attempt]
        raise self.retry(args=args, countdown=later.countdown, max_retries=None) from None


@shared_task(name=ARGO_EVENT_TASK, **RETRIED)
def argo_event(body: dict[str, Any]) -> str | None:
    return followup().on_argo_event(body)
