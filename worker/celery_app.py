"""The Celery application: Redis broker, late acks, redelivery when a worker dies."""

from __future__ import annotations

import logging
import os
import socket
import threading
from functools import lru_cache
from typing import Any

import redis
from celery import Celery, signals

from worker import message_json
from worker.broker import MEMORY_ACK_QUEUES, TRANSPORT
from worker.queues import FOLLOWUP_TASKS
from worker.redis_clients import sync_client
from worker.settings import Settings, get_settings
from worker.store import Store

log = logging.getLogger("rollout_analyzer.worker")


def make_celery(settings: Settings) -> Celery:
    message_json.install()  # task bodies read by orjson, to kombu's values
    app = Celery("rollout_analyzer", broker=settings.broker, backend=settings.backend)
    if settings.broker.startswith("redis://"):
        # kombu's Redis transport, sharing one client per channel (worker/broker.py).
        app.conf.broker_transport = TRANSPORT
    app.conf.update(
        task_default_queue=settings.queue,
        # Follow-ups on their own queue, whoever sends them (worker/queues.py).
        task_routes={task: {"queue": settings.followups} for task in FOLLOWUP_TASKS},
        task_acks_late=True,
        # A task whose worker process dies is put back, not lost.
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_time_limit,
        task_ignore_result=True,  # results live in our own store, under the analysis id
        result_expires=settings.result_ttl_seconds,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        broker_connection_retry_on_startup=True,
        # Publishing must fail fast when Redis is down: the webhook answers 503 within budget.
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
        broker_transport_options={
            # Redelivery of an unacknowledged task after a worker died. Our lease recovers
            # faster (see README); this is the fallback, kept above the hard time limit.
            "visibility_timeout": max(300, int(settings.task_time_limit * 4)),
            # BRPOP's server-side timeout: an idle worker re-issues it this often (1 s by default:
            # a third of an idle worker's CPU). Messages never wait for it.
            "polling_interval": 5,
            "socket_connect_timeout": 1,
            "socket_timeout": 3,
            # A worker reading both queues takes analyses first (worker/queues.py lists them
            # first): a backlog of chat and traffic follow-ups never delays a verdict.
            "queue_order_strategy": "priority",
            # Analyses are recovered by our claims and leases, not the transport's unacked
            # index: their messages skip it (two round trips per task, worker/broker.py).
            MEMORY_ACK_QUEUES: [settings.queue],
        },
        broker_pool_limit=10,
        worker_consumer="worker.consumer:Consumer",
    )
    app.autodiscover_tasks(["worker"], related_name="tasks", force=True)
    return app


@lru_cache(maxsize=1)
def worker_store() -> Store:
    settings = get_settings()
    client = sync_client(
        settings.redis_url,
        cluster=settings.redis_cluster,
        socket_connect_timeout=2,
        socket_timeout=5,
    )
    return Store(client, settings.key_prefix, settings.retention())


def worker_name() -> str:
    return _worker_name(os.getpid())


@lru_cache(maxsize=4)
def _worker_name(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}"


def _beat(stop: threading.Event, name: str, followups_only: bool) -> None:
    while not stop.is_set():
        try:
            worker_store().heartbeat(name, followups_only)
        except redis.RedisError:
            log.warning("heartbeat failed: Redis unreachable")
        stop.wait(get_settings().heartbeat_seconds)


_beat_stop = threading.Event()


@signals.worker_ready.connect
def _start_heartbeat(sender: Any = None, **_: Any) -> None:
    # /readyz counts workers that can answer analyses; a follow-up-only worker cannot, and is
    # counted apart (a follow-up deployment with none alive is seen there, not in a backlog).
    followups_only = not app.conf.get("analysis_worker", True)
    name = f"{getattr(sender, 'hostname', socket.gethostname())}"
    args = (_beat_stop, name, followups_only)
    threading.Thread(target=_beat, args=args, daemon=True, name="heartbeat").start()


@signals.worker_shutting_down.connect
def _stop_heartbeat(**_: Any) -> None:
    _beat_stop.set()


app = make_celery(get_settings())
