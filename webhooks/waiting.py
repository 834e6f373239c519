"""Waiting for an analysis to finish: one pub/sub subscription per process, many waiters.

A waiter registers before it checks the record, so a completion between the check and the
wait is never missed; one registered before its analysis is enqueued needs no check at all.
The completion message carries the outcome, so no second read follows; a waiter also re-reads
the record every second, in case a message was lost while Redis reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from worker.store import AsyncStore, decode_completion

log = logging.getLogger("rollout_analyzer.webhook")
FINAL = ("done", "error")


class CompletionWaiter:
    def __init__(self, client: aioredis.Redis, store: AsyncStore) -> None:
        self.client = client
        self.store = store
        # A future's result: the final record from the completion message (None: read it).
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any] | None]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._node: aioredis.Redis | None = None  # a cluster node's connection, subscribed

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
        while True:
            attempt += 1
            try:
                pubsub = (await self._node_client(attempt)).pubsub()
                await pubsub.psubscribe(self.store.keys.done_pattern)
                async for message in pubsub.listen():
                    if message.get("type") != "pmessage":
                        continue
                    channel = message["channel"]
                    channel = channel.decode() if isinstance(channel, bytes) else channel
                    self._wake(channel.removeprefix(prefix), message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis went away: waiters fall back to polling
                log.warning("completion listener reconnecting", extra={"error": str(exc)[:200]})
                await asyncio.sleep(0.5)

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

    def expect(self, analysis_id: str) -> asyncio.Future[dict[str, Any] | None]:
        """Listen for an analysis about to be enqueued: it cannot finish before this, so its
        first wait needs no read of the record (pass the future to `wait`)."""
        future: asyncio.Future[dict[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(analysis_id, []).append(future)
        return future

    def forget(self, analysis_id: str, future: asyncio.Future[dict[str, Any] | None]) -> None:
        waiting = self._waiters.get(analysis_id)
        if waiting and future in waiting:
            waiting.remove(future)
            if not waiting:
                del self._waiters[analysis_id]

    async def wait(
        self,
        analysis_id: str,
        timeout: float,
        expected: asyncio.Future[dict[str, Any] | None] | None = None,
    ) -> dict[str, Any] | None:
        """The record once final, or the last record seen when time runs out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        record: dict[str, Any] | None = None
        while True:
            if expected is not None:  # registered before the enqueue: nothing to read yet
                future, expected = expected, None
                fresh = True
            else:
                future = loop.create_future()
                self._waiters.setdefault(analysis_id, []).append(future)
                fresh = False
            try:
                if not fresh:
                    record = await self.store.record(analysis_id)
                    if record is None or record.get("status") in FINAL:
                        return record
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return record if not fresh else await self.store.record(analysis_id)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(1.0, remaining)):
                        announced = await asyncio.shield(future)
                    if announced is not None and announced.get("status") in FINAL:
                        return {**(record or {}), **announced}
            finally:
                self.forget(analysis_id, future)
