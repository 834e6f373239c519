"""Keeping an analysis someone will read: one behind a verdict change (an event) or an action.

FINISH keeps the latest analysis of each request for `result_ttl_seconds` and lets the one it
replaces go after `replaced_ttl_seconds`, unless this mark says otherwise.
"""

from __future__ import annotations

import redis

from worker.keyspace import Keys
from worker.lua import Script

KEEP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'kept', '1')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


class Keeper:
    def __init__(self, client: redis.Redis, keys: Keys, ttl_seconds: int) -> None:
        self._keep = Script(client, KEEP)
        self._keys = keys
        self._ttl = ttl_seconds

    def keep(self, analysis_id: str) -> bool:
        """Mark the record kept for the full result TTL; False when it is gone already."""
        return bool(self._keep(keys=[self._keys.record(analysis_id)], args=[self._ttl]))
