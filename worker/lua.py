"""Lua scripts, run by their SHA1 and sent whole where the node does not have them.

redis-py's own Script answers NOSCRIPT with SCRIPT LOAD and a second EVALSHA. On a Redis Cluster
in a fail-over the two can reach different nodes (the load the masters the client knew, the call
the replica just promoted), and the call fails again: a lost step. EVAL of the whole script runs
on whichever node the keys lead to, and leaves it cached there for the next EVALSHA.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

Arg = str | bytes | int | float


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


class AsyncScript(_Lua):
    def __init__(self, client: aioredis.Redis, source: str) -> None:
        super().__init__(source)
        self.client = client

    async def __call__(self, keys: Sequence[str] = (), args: Sequence[Arg] = ()) -> Any:
        try:
            return await self.client.evalsha(self.sha, len(keys), *keys, *args)  # type: ignore[misc]
        except NoScriptError:
            return await self.client.eval(self.source, len(keys), *keys, *args)  # type: ignore[misc]
