"""Lua scripts, run by their SHA1 and sent whole where the node does not have them.

redis-py's own Script answers NOSCRIPT with SCRIPT LOAD and a second EVALSHA. On a Redis Cluster
in a fail-over the two can reach different nodes (the load the masters the client knew, the call
the replica just promoted), and the call fails again: a lost step. EVAL of the whole script runs
on whichever node the keys lead to, and leaves it cached there for the next EVALSHA.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

Arg = str | bytes | int | float
_NO_REPLY = object()


class _Lua:
    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()


class Script(_Lua):
    def __init__(self, client: redis.Redis, source: str) -> None:
        super().__init__(source)
        self.client = client

    def __call__(self, keys: Sequence[str] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return self.client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return self.client.eval(self.source, len(keys), *keys, *args)

    def send(self, keys: Sequence[str] = (), args: Sequence[Arg] = ()) -> Callable[[], Any]:
        """Run the script now, read its reply later (once, however often the call returned is
        called): the caller works meanwhile. Sent whole (EVAL; Redis finds it cached by its
        SHA1 all the same): a NOSCRIPT read only later would run the script only later, after
        the work it was sent ahead of (a Redis restarted or failed over has no scripts). A reply
        that does not come (a dropped connection) is had by calling the script again, so the
        script must answer a second run as the first (every script of ours does). A cluster
        client has no single pool: there it runs at once."""
        pool = getattr(self.client, "connection_pool", None)
        settled: list[Any] = []
        if not isinstance(pool, redis.ConnectionPool):
            settled.append(self(keys, args))
            return lambda: settled[0]
        connection: Any = pool.get_connection()
        try:
            connection.send_command("EVAL", self.source, len(keys), *keys, *args)
        except (redis.ConnectionError, redis.TimeoutError):
            pool.release(connection)  # the failed send closed it
            connection = None
        except BaseException:
            pool.release(connection)
            raise

        def settle() -> Any:
            nonlocal connection
            if settled:
                return settled[0]
            answer: Any = _NO_REPLY
            if connection is not None:
                try:
                    answer = connection.read_response()
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                finally:
                    pool.release(connection)
                    connection = None
            settled.append(self(keys, args) if answer is _NO_REPLY else answer)
            return settled[0]

        return settle


class AsyncScript(_Lua):
    def __init__(self, client: aioredis.Redis, source: str) -> None:
        super().__init__(source)
        self.client = client

    async def __call__(self, keys: Sequence[str] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.eval(self.source, len(keys), *keys, *args)
