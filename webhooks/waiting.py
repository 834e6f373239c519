"""Waiting for an analysis to finish: one pub/sub subscription per process, many waiters.

A waiter registers before it checks the record, so a completion between the check and the
wait is never missed; one registered before its analysis is enqueued needs no check at all.
The completion message carries the outcome, so no second read follows.

A message can be lost only while the subscription is down, or, on a cluster, between nodes.
So a waiter reads the record again only when it may have missed one: no subscription now, a
new one since it last looked (one came down in between), or a cluster under it (one read a
second); and once when its time runs out, whatever happened. No read outlives the wait by
more than READ_GRACE_SECONDS: a Redis that stalls then must not hold the answer past Argo's
timeout (the record seen before goes back instead, and the next poll gets the outcome).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, NoReturn

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from worker.direct_redis import AsyncDirectRedis
from worker.store import AsyncStore, decode_completion

log = logging.getLogger("rollout_analyzer.webhook")
FINAL = ("done", "error")
TICK_SECONDS = 1.0  # how often a waiter asks itself whether it may have missed a message
# How long past its deadline a read may finish: WAIT_SECONDS (8) + this stays inside Argo's 10 s.
READ_GRACE_SECONDS = 0.5
HEALTH_CHECK_SECONDS = 10.0  # a PING on the subscription (as redis-py's health_check_interval)

# A future's result: the final record from the completion message (None: read it).
Announced = asyncio.Future[dict[str, Any] | None]


@dataclass(frozen=True)
class Expected:
    """A wait begun before the enqueue: its future, and the subscription then (None: none)."""

    future: Announced
    since: int | None


class CompletionWaiter:
    def __init__(self, client: aioredis.Redis, store: AsyncStore) -> None:
        self.client = client
        self.store = store
        self._waiters: dict[str, list[Announced]] = {}
        self._task: asyncio.Task[None] | None = None
        self._node: aioredis.Redis | None = None  # a cluster node's connection, subscribed
        # The live subscription's number (each new one gets the next), None while there is none.
        self._live: int | None = None
        self._subscriptions = 0
        # A cluster relays a PUBLISH between nodes, where a message can be lost unseen by us.
        self._relayed = isinstance(client, AsyncRedisCluster)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen(), name="completion-listener")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._node is not None:
            await self._node.aclose()

    async def _listen(self) -> None:
        prefix = self.store.keys.done_channel("")
        attempt = 0
        direct = AsyncDirectRedis.of(self.client)
        while True:
            attempt += 1
            try:
                if direct is not None:
                    await self._listen_directly(direct, prefix)  # until it fails
                pubsub = (await self._node_client(attempt)).pubsub()
                await pubsub.psubscribe(self.store.keys.done_pattern)
                async for message in pubsub.listen():
                    if message.get("type") == "psubscribe":  # confirmed: messages flow from here
                        self._subscriptions += 1
                        self._live = self._subscriptions
                    if message.get("type") != "pmessage":
                        continue
                    channel = message["channel"]
                    channel = channel.decode() if isinstance(channel, bytes) else channel
                    self._wake(channel.removeprefix(prefix), message["data"])
            except asyncio.CancelledError:
                self._live = None
                raise
            except Exception as exc:  # Redis went away: waiters fall back to polling
                self._live = None
                log.warning("completion listener reconnecting", extra={"error": str(exc)[:200]})
                await asyncio.sleep(0.5)

    async def _listen_directly(self, direct: AsyncDirectRedis, prefix: str) -> NoReturn:
        """One Redis over TCP: a subscription whose messages wake their waiters as they are
        read (worker/direct_redis.py), not through redis-py's reader task and its generator:
        ~0.3 ms less between a worker's FINISH and its answer going out. Its end is raised as
        a lost connection, for `_listen` to subscribe again."""

        def heard(channel: bytes | str, data: bytes | str) -> None:
            channel = channel.decode() if isinstance(channel, bytes) else channel
            self._wake(channel.removeprefix(prefix), data)

        subscription = await direct.psubscribe(self.store.keys.done_pattern, heard)
        self._subscriptions += 1
        self._live = self._subscriptions
        try:
            await subscription.held(HEALTH_CHECK_SECONDS)
        finally:
            subscription.close()
        raise redis.ConnectionError("the completion subscription was lost")

    async def _node_client(self, attempt: int) -> aioredis.Redis:
        """Where to subscribe. A cluster delivers a PUBLISH to every node's subscribers, so
        any one node will do: the next one on each reconnect, in case this one is gone."""
        if not isinstance(self.client, AsyncRedisCluster):
            return self.client
        if self._node is not None:
            await self._node.aclose()
        await self.client.initialize()
        nodes = sorted(self.client.get_nodes(), key=lambda n: n.name)
        node = nodes[attempt % len(nodes)]
        self._node = aioredis.Redis(host=node.host, port=node.port, socket_connect_timeout=1)
        return self._node

    def _wake(self, analysis_id: str, data: bytes | str) -> None:
        futures = self._waiters.pop(analysis_id, [])
        if not futures:  # every webhook replica hears every completion: decode only ours
            return
        try:
            record = decode_completion(data)
        except ValueError:
            record = None
        for future in futures:
            if not future.done():
                future.set_result(record)

    def _register(self, analysis_id: str) -> Announced:
        future: Announced = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(analysis_id, []).append(future)
        return future

    def _may_have_missed(self, since: int | None) -> bool:
        """Whether a message may have been lost since the subscription was `since`."""
        return self._relayed or self._live is None or self._live != since

    def expect(self, analysis_id: str) -> Expected:
        """Listen for an analysis about to be enqueued: it cannot finish before this, so its
        first wait needs no read of the record (pass this to `wait`)."""
        return Expected(self._register(analysis_id), self._live)

    def forget(self, analysis_id: str, future: Announced) -> None:
        waiting = self._waiters.get(analysis_id)
        if waiting and future in waiting:
            waiting.remove(future)
            if not waiting:
                del self._waiters[analysis_id]

    async def wait(
        self, analysis_id: str, timeout: float, expected: Expected | None = None
    ) -> dict[str, Any] | None:
        """The record once final, or the record read when time runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        record: dict[str, Any] | None = None
        if expected is not None:  # registered before the enqueue: nothing to read yet
            future, since, read = expected.future, expected.since, False
        else:
            future, since, read = self._register(analysis_id), None, True
        try:
            while True:
                if read or deadline <= loop.time():
                    since = self._live  # before the read: a message after it is not lost
                    bound = asyncio.timeout_at(deadline + READ_GRACE_SECONDS)
                    try:
                        async with bound:
                            record = await self.store.record(analysis_id)
                    except TimeoutError:
                        if bound.expired():  # Redis stalled: answer with what was seen
                            return record
                        raise
                    if record is None or record.get("status") in FINAL:
                        return record
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return record
                try:
                    # The future itself, not a shield of it: its completion resumes this wait
                    # one loop turn sooner. A tick cancels it; a new one is registered before
                    # the next await, so no completion falls between the two.
                    async with asyncio.timeout(min(TICK_SECONDS, remaining)):
                        announced = await future
                except TimeoutError:
                    if future.done() and not future.cancelled():
                        announced = future.result()  # it came as the tick ended
                    else:
                        # A completion that came after the tick cancelled the future took it
                        # from the waiters all the same: then the record is read.
                        heard = future not in self._waiters.get(analysis_id, ())
                        self.forget(analysis_id, future)
                        future = self._register(analysis_id)
                        read = heard or self._may_have_missed(since)  # (or time ran out)
                        continue
                if announced is not None and announced.get("status") in FINAL:
                    return {**(record or {}), **announced}
                future, read = self._register(analysis_id), True  # unreadable: look instead
        finally:
            self.forget(analysis_id, future)
