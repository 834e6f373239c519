"""An analysis' PromQL query sent the moment its task's message is read, not when its task runs.

From the broker's reply to the task's first line Celery takes ~0.7 ms to hand a message over (its
request, the pool, the pool thread taking the GIL from the event loop, the tracer), and the task
~0.3 ms more to START and its query; Prometheus then takes ~2 ms. The message's hint
(worker/hints.py) holds everything the query needs, so the event loop's thread sends it on
delivery and the task, once running, reads the answer (PrometheusSource.send_ahead and observe
match them by expression and time).

Only where the hint may be used ahead of START (a first, fresh delivery whose claim holds the
query's slot, or no cap): a query is a read, and a message whose analysis turns out to be
another's costs that one query, as the hint's own rule says. Never a wait on the event loop: no
idle connection, a full buffer, a proxy or a request hook (tracing) and the task asks as before;
nor more queries out than the pool has threads; and only where the task runs in this process
(threads, solo: not prefork, the CLI's default). A live poll's query covers the time since its
canary's previous poll: the claim reads that from the sequence into the hint (`since`); where the
sequence moves on meanwhile, the expressions differ and the task asks its own.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.strategy import default

from analysis.policy import PolicySet
from analysis.request import AnalysisSpec
from analysis.sources import MetricsSource
from worker import hints
from worker.celery_app import worker_store
from worker.jobs import live_seconds, usable

log = logging.getLogger("rollout_analyzer.worker")


def strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Any:
    """Celery's default strategy for the analysis task, its query sent first (`Task.Strategy`)."""
    handle = default(task, app, consumer, **options)
    if not runs_here(consumer.pool):
        return handle

    def on_message(message: Any, *args: Any, **kwargs: Any) -> Any:
        send_query_ahead(message, getattr(consumer.pool, "limit", None) or 1)
        return handle(message, *args, **kwargs)

    return on_message


def runs_here(pool: Any) -> bool:
    """Whether the pool runs tasks in this process (threads, solo), where the answer to a query
    sent here can be read. A prefork pool's task runs in a child process: it would ask again."""
    return type(pool).__module__ in ("celery.concurrency.thread", "celery.concurrency.solo")


def send_query_ahead(message: Any, most: int) -> bool:
    """Whether the message's query went out, with at most `most` answers waiting for their
    tasks; never raises (the task asks for itself)."""
    try:
        headers = getattr(message, "headers", None)
        if not isinstance(headers, dict) or hints.HEADER not in headers:
            return False
        # The Celery request's view of it, as hints.read reads a task's own request.
        hint = hints.read({**headers, "delivery_info": getattr(message, "delivery_info", None)})
        if hint is None or not hint.ahead:
            return False
        from worker import tasks  # the tasks' source and policies: one of each per process

        source = tasks.analysis_source()
        if not usable(hint, worker_store(), source):
            return False
        return query_ahead(hint, source, tasks.analysis_policies(), most)
    except Exception as exc:  # the task asks for itself
        log.debug("query not sent ahead", extra={"error": str(exc)[:200]})
        return False


def query_ahead(hint: hints.Hint, source: MetricsSource, policies: PolicySet, most: int) -> bool:
    """The query the hint's analysis will make first, sent now where the source can."""
    send = getattr(source, "send_ahead", None)
    if send is None:
        return False
    spec = AnalysisSpec.from_json(hint.spec, policies)
    end = spec.end if spec.end is not None else source.latest_time(spec, hint.queued_at)
    seconds: float | None = None
    if spec.live:
        if hint.since is None:
            return False  # the sequence's state is unknown: the task reads it first
        end = float(int(end))  # as run_live
        seconds = live_seconds(spec, end, None if hint.since == hints.NEW else float(hint.since))
        if seconds is None:
            return False  # nothing new since the previous poll: no query at all
    return bool(send(spec, end, seconds, most=most))
