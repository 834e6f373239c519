"""What the webhook runs on: Redis + Celery workers, or (demo) fakeredis + a thread pool."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from webhooks.producer import RedisTaskProducer, publishes_directly
from worker.chat import RetryLater
from worker.queues import priority_for, queue_for
from worker.redis_clients import async_cluster_client
from worker.settings import Settings
from worker.store import AsyncStore, Store
from worker.task_names import ACT_TASK, ANALYZE_TASK, ARGO_EVENT_TASK, NOTIFY_TASK, REDELIVER_TASK

IN_PROCESS_WORKER = "in-process"
REDIS_CONNECTIONS = 256  # per webhook process; Redis takes 10,000 by default


class Dispatcher(Protocol):
    async def enqueue(self, task: str, args: list[Any]) -> None: ...

    def message(
        self, task: str, args: list[Any], headers: dict[str, Any] | None = None
    ) -> tuple[str, bytes] | None:
        """(queue key, message) for the claim script to push, when the broker is the state
        store's Redis; None: enqueue after the claim. `headers`: more Celery headers."""
        ...

    def close(self) -> None: ...


class CeleryDispatcher:
    def __init__(
        self, settings: Settings, broker: aioredis.Redis | None, with_claim: bool = False
    ) -> None:
        from worker.celery_app import app

        self._app = app
        self._settings = settings
        self._with_claim = with_claim and broker is not None
        # A Redis broker gets the task straight from the event loop (webhooks/producer.py),
        # one producer per queue (analyses, follow-ups: worker/queues.py) on one connection pool.
        self._producers = (
            {q: RedisTaskProducer(app, broker, q) for q in (settings.queue, settings.followups)}
            if broker
            else {}
        )

    async def enqueue(self, task: str, args: list[Any]) -> None:
        queue, priority = queue_for(self._settings, task), priority_for(task)
        if self._producers:
            await self._producers[queue].publish(task, args, priority or 0)
            return
        # kombu publishes synchronously; keep the event loop free while it does.
        await asyncio.to_thread(
            self._app.send_task, task, args=args, queue=queue, priority=priority
        )

    def message(
        self, task: str, args: list[Any], headers: dict[str, Any] | None = None
    ) -> tuple[str, bytes] | None:
        if not self._with_claim:
            return None
        producer = self._producers[queue_for(self._settings, task)]
        return producer.queue, producer.envelope(task, args, headers)

    def close(self) -> None:
        pass


# Where the attempt number sits in the arguments of the tasks that retry.
_ATTEMPT_AT = {NOTIFY_TASK: 2, REDELIVER_TASK: 1}


class InProcessDispatcher:
    """The same job code as a Celery worker, on threads of this process (demo mode)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        from worker.followup import build_followup
        from worker.jobs import execute
        from worker.sequences import SequenceStore

        self._store = store
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="analysis")
        self._stop = threading.Event()
        followup = build_followup(settings, store.redis, self.submit)
        source, policies = settings.source(), settings.policies()
        sequences = SequenceStore(store.redis, settings.key_prefix, settings.sequence_ttl_seconds)

        def analyze(analysis_id: str) -> str:
            return execute(
                store,
                analysis_id,
                worker=IN_PROCESS_WORKER,
                source=source,
                policies=policies,
                lease_seconds=settings.lease_seconds,
                reuse_seconds=settings.reuse_seconds,
                budget_seconds=settings.task_soft_time_limit - 1,
                after=followup.on_verdict,
                sequences=sequences,
                history=followup.history,
            )

        self._tasks: dict[str, Callable[..., Any]] = {
            ANALYZE_TASK: analyze,
            ACT_TASK: followup.act,
            NOTIFY_TASK: followup.notify,
            ARGO_EVENT_TASK: followup.on_argo_event,
            REDELIVER_TASK: followup.chat.retry_dead_letter if followup.chat else (lambda *_: None),
        }
        threading.Thread(target=self._beat, daemon=True, name="heartbeat").start()

    def _beat(self) -> None:
        while not self._stop.is_set():
            self._store.heartbeat(IN_PROCESS_WORKER)
            self._stop.wait(5)

    def submit(self, task: str, args: list[Any]) -> None:
        # The caller's context (its trace span) goes along, as Celery headers carry it.
        self._pool.submit(contextvars.copy_context().run, self._run, task, args)

    def _run(self, task: str, args: list[Any]) -> Any:
        try:
            return self._tasks[task](*args)
        except RetryLater as later:
            # Celery's countdown, done with a timer: the last argument is the attempt number.
            retried = [*args[: _ATTEMPT_AT[task]], later.attempt]
            timer = threading.Timer(later.countdown, self.submit, (task, retried))
            timer.daemon = True
            timer.start()
            return None

    async def enqueue(self, task: str, args: list[Any]) -> None:
        self.submit(task, args)

    def message(
        self, task: str, args: list[Any], headers: dict[str, Any] | None = None
    ) -> tuple[str, bytes] | None:
        return None  # no queue: a thread of this process takes it

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class Runtime:
    client: aioredis.Redis
    store: AsyncStore
    dispatcher: Dispatcher
    mode: str
    broker: aioredis.Redis | None = None  # a broker Redis apart from the state store's

    async def aclose(self) -> None:
        self.dispatcher.close()
        await self.client.aclose()
        if self.broker is not None:
            await self.broker.aclose()


def build_runtime(settings: Settings) -> Runtime:
    if settings.in_process:
        import fakeredis

        server = fakeredis.FakeServer()
        fake = fakeredis.FakeAsyncRedis(server=server)
        sync_store = Store(
            fakeredis.FakeRedis(server=server), settings.key_prefix, settings.retention()
        )
        store = AsyncStore(fake, settings.key_prefix)
        return Runtime(fake, store, InProcessDispatcher(settings, sync_store), "in-process")
    client = _state_client(settings)
    store = AsyncStore(client, settings.key_prefix)
    broker = None
    if publishes_directly(settings.broker):
        broker = client if settings.broker == settings.redis_url else None
        broker = broker or _client(settings.broker, settings)
    own_broker = broker if broker is not client else None
    # The broker on the store's own Redis (not a cluster): a task goes in with its claim.
    dispatcher = CeleryDispatcher(settings, broker, with_claim=broker is client)
    return Runtime(client, store, dispatcher, "celery", own_broker)


def _state_client(settings: Settings) -> aioredis.Redis:
    if not settings.redis_cluster:
        return _client(settings.redis_url, settings)
    return async_cluster_client(
        settings.redis_url,
        max_connections=REDIS_CONNECTIONS,
        socket_connect_timeout=0.5,
        socket_timeout=2,
    )


def _client(url: str, settings: Settings) -> aioredis.Redis:
    # redis-py's default pool fails at once ("Too many connections") past 100 concurrent
    # requests; a burst of polls must queue for a connection (commands take ~0.1 ms) instead.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_CONNECTIONS,
        # Under a burst the event loop itself is the queue: wait up to half the answer budget.
        timeout=settings.wait_seconds / 2,
        socket_connect_timeout=0.5,
        socket_timeout=2,
        health_check_interval=10,
        # redis-py retries a refused connection for seconds by default; a down Redis must turn
        # into a quick 503 (Argo retries in 10 s anyway).
        retry=Retry(NoBackoff(), 1),
    )
    return aioredis.Redis.from_pool(pool)  # closes the pool with the client
