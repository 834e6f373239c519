"""Celery tasks. The task carries only the analysis id; the spec waits in Redis."""

from __future__ import annotations

from functools import lru_cache

from celery import shared_task

from analysis.policy import PolicySet
from analysis.sources import MetricsSource
from worker.celery_app import ANALYZE_TASK, worker_name, worker_store
from worker.jobs import execute
from worker.settings import get_settings


@lru_cache(maxsize=1)
def _source() -> MetricsSource:
    return get_settings().source()


@lru_cache(maxsize=1)
def _policies() -> PolicySet:
    return get_settings().policies()


@shared_task(name=ANALYZE_TASK, acks_late=True, reject_on_worker_lost=True)
def analyze(analysis_id: str) -> str:
    settings = get_settings()
    return execute(
        worker_store(),
        analysis_id,
        worker=worker_name(),
        source=_source(),
        policies=_policies(),
        lease_seconds=settings.lease_seconds,
        reuse_seconds=settings.reuse_seconds,
        budget_seconds=settings.task_soft_time_limit - 1,
    )
