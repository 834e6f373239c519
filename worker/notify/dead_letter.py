"""Failed notifications kept in Redis for inspection and a later retry, and a rate limiter.

Entries hold the target *name*, the redacted `DeliveryResult` and the notification itself:
no URL and no secret, so listing dead letters is safe for an operator.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import redis

from worker.lua import Script
from worker.notify.delivery import DeliveryResult
from worker.notify.message import Notification

DEFAULT_KEY = "rollout-analyzer:dead-letters"
RATE_LIMIT_PREFIX = "rollout-analyzer:notify-rate"

# Aliases: inside DeadLetters the name `list` is the method, not the builtin.
RawEntries = list[str]
Entries = list[dict[str, Any]]


# Entries are compact JSON that starts with their id: `{"id":"<32 hex>",...`. A Lua function
# taking one out of the list: the entry, or false when it is not there.
_REMOVE = """
local function remove(key, id)
  local prefix = '{"id":"' .. id .. '"'
  for _, raw in ipairs(redis.call('LRANGE', key, 0, -1)) do
    if string.sub(raw, 1, #prefix) == prefix then
      redis.call('LREM', key, 1, raw)
      return raw
    end
  end
  return false
end
"""

_TAKE = (
    _REMOVE
    + """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held then return held end
local raw = remove(KEYS[1], ARGV[1])
if raw then redis.call('HSET', KEYS[2], ARGV[1], raw) end
return raw
"""
)

# One entry dropped by id: 1, or 0 when it is in the list no longer. KEYS[1] the list, KEYS[2]
# the entry's drop mark; ARGV: the id, the caller's token, the mark's lifetime (ms). The mark
# answers this very call run again (its reply lost, the client retried) as its first run did;
# another caller's drop of the same entry finds it gone.
DROP = (
    _REMOVE
    + """
if redis.call('GET', KEYS[2]) == ARGV[2] then return 1 end
if not remove(KEYS[1], ARGV[1]) then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
"""
)
DROP_MARK_MS = 60_000


def beside(key: str, name: str) -> str:
    """A key in `key`'s Redis Cluster slot (scripts touch both): a name without braces is
    hashed whole, so `{name}:...` lands beside it."""
    return f"{{{key}}}:{name}" if "{" not in key else f"{key}:{name}"


def drop_call(key: str, entry_id: str) -> tuple[list[str], list[str | int]]:
    """DROP's keys and arguments for one entry of the list `key`, with a new caller's token."""
    return [key, beside(key, f"dropped:{entry_id}")], [entry_id, uuid.uuid4().hex, DROP_MARK_MS]


class DeadLetters:
    """A capped Redis list of failed deliveries, newest first."""

    def __init__(
        self, redis_client: redis.Redis, key: str = DEFAULT_KEY, max_len: int = 1000
    ) -> None:
        self._redis = redis_client
        self._key = key
        # In the list's Redis Cluster slot (TAKE and restore touch both).
        self._retrying = beside(key, "retrying")
        self._max_len = max_len
        self._take = Script(redis_client, _TAKE)
        self._drop = Script(redis_client, DROP)

    def push(self, result: DeliveryResult, notification: Notification) -> str:
        """Store one failed delivery; returns its id. The oldest entries beyond max_len go."""
        entry = {
            "id": uuid.uuid4().hex,
            "failed_at": time.time(),
            "target": result.target,
            "retries": 0,
            "result": result.to_dict(),
            "notification": notification.model_dump(mode="json"),
        }
        self._store(entry)
        return cast(str, entry["id"])

    def _raw(self, limit: int | None) -> RawEntries:
        end = -1 if limit is None else max(0, limit) - 1
        if limit == 0:
            return []
        # Decode here so the same code works with and without decode_responses=True.
        raw: list[bytes | str] = self._redis.lrange(self._key, 0, end)
        return [r.decode() if isinstance(r, bytes) else r for r in raw]

    def list(self, limit: int | None = 100) -> Entries:
        """The newest `limit` entries (all with None), decoded."""
        return [json.loads(raw) for raw in self._raw(limit)]

    def count(self) -> int:
        return int(self._redis.llen(self._key))

    def drop(self, entry_id: str) -> bool:
        """Remove one entry by id; False when it is not (or no longer) there."""
        keys, args = drop_call(self._key, entry_id)
        return int(self._drop(keys=keys, args=args)) == 1

    def take(self, entry_id: str) -> dict[str, Any] | None:
        """Move one entry from the list to the retrying set and return it; None when it is in
        neither (retried or dropped already).

        Atomic, and repeatable: a retry task redelivered after its worker died finds the entry
        where the first run left it, so a letter is never lost between list and delivery.
        """
        raw = self._take(keys=[self._key, self._retrying], args=[entry_id])
        return json.loads(raw) if raw else None

    def release(self, entry_id: str) -> None:
        """The retried entry was delivered: forget it."""
        self._redis.hdel(self._retrying, entry_id)

    def restore(self, entry: dict[str, Any], result: DeliveryResult) -> None:
        """Put back an entry whose retry failed (or could not be started), one retry counted."""
        entry = {**entry, "retries": int(entry.get("retries", 0)) + 1, "result": result.to_dict()}
        self._store(entry, taken=True)

    def _store(self, entry: dict[str, Any], *, taken: bool = False) -> None:
        raw = json.dumps(entry, separators=(",", ":"))
        pipe = self._redis.pipeline(transaction=True)
        if taken:
            pipe.hdel(self._retrying, entry["id"])
        # The same entry removed first: a retried write (its reply lost) leaves one copy.
        pipe.lrem(self._key, 0, raw)
        pipe.lpush(self._key, raw)
        pipe.ltrim(self._key, 0, self._max_len - 1)
        pipe.execute()


# Each message let through is a field of the window's hash: asking again (a retried call, its
# reply lost) answers the same and counts nothing. A denied one is not kept: once a window is
# full every other message is denied, asked once or again, so a window holds at most
# `per_minute` names whatever the rate. The expiry is set in the same step: a crash between
# the two would leave a window that never expires.
_ALLOW_SCRIPT = """
local seen = redis.call('HGET', KEYS[1], ARGV[3])
if seen then return tonumber(seen) end
local count = redis.call('HLEN', KEYS[1])
if count >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[3], 1)
if count == 0 then redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2])) end
return 1
"""


class RateLimiter:
    """Fixed one-minute windows per key, shared by every worker through Redis."""

    def __init__(
        self,
        redis_client: redis.Redis,
        prefix: str = RATE_LIMIT_PREFIX,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis_client
        self._prefix = prefix
        self._clock = clock
        self._allow = Script(redis_client, _ALLOW_SCRIPT)

    def allow(self, key: str, per_minute: int, message: str | None = None) -> bool:
        """Count one message for `key`; True while at most `per_minute` fell in this minute.
        `message` names it: counted once however often it is asked about (None: a new one)."""
        window = int(self._clock() // 60)
        counter = f"{self._prefix}:{key}:{window}"
        # Expire after two windows so a slow clock on one worker cannot resurrect a count.
        name = message or uuid.uuid4().hex
        return int(self._allow(keys=[counter], args=[per_minute, 120, name])) == 1
