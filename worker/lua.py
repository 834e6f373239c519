"""Lua scripts, run by their SHA1 and sent whole where the node does not have them.

redis-py's own Script answers NOSCRIPT with SCRIPT LOAD and a second EVALSHA. On a Redis Cluster
in a fail-over the two can reach different nodes (the load the masters the client knew, the call
the replica just promoted), and the call fails again: a lost step. EVAL of the whole script runs
on whichever node the keys lead to, and leaves it cached there for the next EVALSHA.

On one plain Redis a script goes by the thread's own socket (worker/direct_redis.py: a fraction
of redis-py's CPU per call); where that socket fails, by redis-py's client, with its retries.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from worker.direct_redis import AsyncDirectRedis, DirectRedis, PooledSender

Arg = str | bytes | int | float
_NO_REPLY = object()
_COMMAND = {True: "EVALSHA", False: "EVAL"}


class _Lua:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class Script(_Lua):
    def __init__(self, client: redis.Redis, source: str) -> None:
        super().__init__(source)
        self.client = client
        self._direct = DirectRedis.of(client)
        self._sender = self._direct or PooledSender.of(client)

    def __call__(self, keys: Sequence[str] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return self._run(True, keys, args)
        except NoScriptError:
            return self._run(False, keys, args)

    def _run(self, by_sha: bool, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """EVALSHA or EVAL, on the thread's socket; where that fails, the same command again
        through redis-py (with its retries): Redis may have run it already, and every script
        of ours answers a second run as the first."""
        script = self.sha if by_sha else self.source
        if self._direct is not None:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                return self._direct.call(_COMMAND[by_sha], script, len(keys), *keys, *args)
        run = self.client.evalsha if by_sha else self.client.eval
        return run(script, len(keys), *keys, *args)

    def send(self, keys: Sequence[str] = (), args: Sequence[Arg] = ()) -> Callable[[], Any]:
        """Run the script now, read its reply later (once, however often the call returned is
        called, on the thread that sent it): the caller works meanwhile. Sent whole (EVAL;
        Redis finds it cached by its SHA1 all the same): a NOSCRIPT read only later would run
        the script only later, after the work it was sent ahead of (a Redis restarted or failed
        over has no scripts). A reply that does not come (a dropped connection) is had by
        calling the script again, so the script must answer a second run as the first (every
        script of ours does). On the thread's socket, else on a connection of redis-py's pool
        (TLS, a unix socket); a cluster client has no single pool: there it runs at once."""
        settled: list[Any] = []
        if self._sender is None:
            settled.append(self(keys, args))
            return lambda: settled[0]
        reply: Callable[[], Any] | None = None
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            reply = self._sender.send("EVAL", self.source, len(keys), *keys, *args)

        def settle() -> Any:
            if settled:
                return settled[0]
            answer: Any = _NO_REPLY
            if reply is not None:
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    answer = reply()
            settled.append(self(keys, args) if answer is _NO_REPLY else answer)
            return settled[0]

        return settle


class AsyncScript(_Lua):
    def __init__(self, client: aioredis.Redis, source: str) -> None:
        super().__init__(source)
        self.client = client
        self._direct = AsyncDirectRedis.of(client)

    async def __call__(self, keys: Sequence[str] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self._run(True, keys, args)
        except NoScriptError:
            return await self._run(False, keys, args)

    async def _run(self, by_sha: bool, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        """As Script's: the webhook's pipelined connection, else redis-py's client."""
        script = self.sha if by_sha else self.source
        if self._direct is not None:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                return await self._direct.call(_COMMAND[by_sha], script, len(keys), *keys, *args)
        run = self.client.evalsha if by_sha else self.client.eval
        return await run(script, len(keys), *keys, *args)
