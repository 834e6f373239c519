"""Analysis state in Redis: dedup claims, records, worker leases, completion messages.

Keys (prefix `ra:` by default):
  claim:<identity>  → analysis id; lives `pending_seconds` while the analysis is queued or
                      running, then `reuse_seconds` after it is done (the reuse window).
  analysis:<id>     → hash: status (queued | running | done | error | superseded), spec,
                      result or error, timestamps; lives `result_ttl_seconds`.
  lease:<id>        → the worker computing it; renewed while it runs. A running analysis
                      without a lease has lost its worker: the next call supersedes it.
  done:<id>         → pub/sub channel announcing completion to waiting webhook processes.
  workers           → sorted set of worker heartbeats (score = unix time).
Each transition is one Lua script, so two webhooks or two workers can never both win.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

CLAIM = """
local prefix, new_id = ARGV[1], ARGV[2]
local current = redis.call('GET', KEYS[1])
if current then
  local record = prefix .. 'analysis:' .. current
  local status = redis.call('HGET', record, 'status')
  -- A finished analysis comes back with its record: a repeated poll needs no second trip.
  if status == 'done' then return {current, status, redis.call('HGETALL', record)} end
  if status == 'queued' then return {current, status} end
  if status == 'running' then
    if redis.call('EXISTS', prefix .. 'lease:' .. current) == 1 then
      return {current, 'running'}
    end
    redis.call('HSET', record, 'status', 'superseded', 'superseded_by', new_id)
  end
end
local record = prefix .. 'analysis:' .. new_id
redis.call('HSET', record, 'id', new_id, 'claim', KEYS[1], 'status', 'queued',
           'spec', ARGV[5], 'queued_at', ARGV[6])
redis.call('EXPIRE', record, ARGV[4])
redis.call('SET', KEYS[1], new_id, 'PX', ARGV[3])
return {new_id, 'new'}
"""

# Every transition below is one script and checks who holds the analysis: its lease key names
# the worker running it. Only START acquires (a queued analysis, or a running one whose lease
# lapsed); RENEW and FINISH succeed only for the holder, so a worker that lost its lease can
# neither keep it alive nor record a result over a superseded or taken-over analysis.
# done, superseded and error are final: no script moves an analysis out of them.

START = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'done' or status == 'superseded' or status == 'error' then return status end
local holder = redis.call('GET', KEYS[2])
if status == 'running' and holder and holder ~= ARGV[1] then return 'taken' end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[3], 'worker', ARGV[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 'started'
"""

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1]
   and redis.call('HGET', KEYS[2], 'status') == 'running' then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

FINISH = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
if status == 'done' then return 'already' end
if status ~= 'running' or redis.call('HGET', KEYS[1], 'worker') ~= ARGV[1]
   or redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 'not_holder'
end
local field = 'error'
if ARGV[2] == 'done' then field = 'result' end
redis.call('HSET', KEYS[1], 'status', ARGV[2], field, ARGV[3], 'finished_at', ARGV[4])
redis.call('DEL', KEYS[2])
local claim = redis.call('HGET', KEYS[1], 'claim')
if claim and redis.call('GET', claim) == ARGV[6] then
  if ARGV[2] == 'done' and tonumber(ARGV[5]) > 0 then
    redis.call('PEXPIRE', claim, ARGV[5])
  else
    redis.call('DEL', claim)
  end
end
redis.call('PUBLISH', ARGV[7], ARGV[2])
return 'ok'
"""

# The webhook's undo of its own claim when the task could not be enqueued. A wait_for timeout
# may hide an enqueue that did happen: once a worker started the analysis, it is the worker's.
ABANDON = """
if redis.call('HGET', KEYS[2], 'status') ~= 'queued' then return 'started' end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[2], 'status', 'error', 'error', ARGV[2])
return 'ok'
"""


def new_analysis_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Keys:
    prefix: str

    def claim(self, identity: str) -> str:
        return f"{self.prefix}claim:{identity}"

    def record(self, analysis_id: str) -> str:
        return f"{self.prefix}analysis:{analysis_id}"

    def lease(self, analysis_id: str) -> str:
        return f"{self.prefix}lease:{analysis_id}"

    def done_channel(self, analysis_id: str) -> str:
        return f"{self.prefix}done:{analysis_id}"

    @property
    def done_pattern(self) -> str:
        return f"{self.prefix}done:*"

    @property
    def workers(self) -> str:
        return f"{self.prefix}workers"


def decode_record(raw: dict[bytes, bytes] | dict[str, str]) -> dict[str, Any] | None:
    if not raw:
        return None
    record = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    for field in ("result", "spec", "error"):
        if field in record and record[field].startswith("{"):
            record[field] = json.loads(record[field])
    return record


class Store:
    """Worker side (synchronous)."""

    def __init__(self, client: redis.Redis, prefix: str = "ra:") -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self._start = client.register_script(START)
        self._renew = client.register_script(RENEW)
        self._finish = client.register_script(FINISH)

    def record(self, analysis_id: str) -> dict[str, Any] | None:
        return decode_record(self.redis.hgetall(self.keys.record(analysis_id)))

    def start(self, analysis_id: str, worker: str, lease_seconds: float) -> str:
        keys = [self.keys.record(analysis_id), self.keys.lease(analysis_id)]
        args = [worker, int(lease_seconds * 1000), time.time()]
        return _text(self._start(keys=keys, args=args))

    def renew(self, analysis_id: str, worker: str, lease_seconds: float) -> bool:
        """True while `worker` holds the analysis; False once it lost it (stop, record nothing)."""
        keys = [self.keys.lease(analysis_id), self.keys.record(analysis_id)]
        return bool(self._renew(keys=keys, args=[worker, int(lease_seconds * 1000)]))

    def finish(
        self,
        analysis_id: str,
        worker: str,
        *,
        status: str,
        payload: dict[str, Any] | str,
        reuse_seconds: float,
    ) -> str:
        """ok, or why nothing was recorded: already (done), not_holder (the lease was lost,
        the analysis superseded or taken over), missing."""
        body = payload if isinstance(payload, str) else json.dumps(payload)
        keys = [self.keys.record(analysis_id), self.keys.lease(analysis_id)]
        args = [
            worker,
            status,
            body,
            time.time(),
            int(reuse_seconds * 1000),
            analysis_id,
            self.keys.done_channel(analysis_id),
        ]
        return _text(self._finish(keys=keys, args=args))

    def heartbeat(self, worker: str) -> None:
        now = time.time()
        pipe = self.redis.pipeline()
        pipe.zadd(self.keys.workers, {worker: now})
        pipe.zremrangebyscore(self.keys.workers, 0, now - 3600)
        pipe.execute()


@dataclass(frozen=True)
class Claim:
    analysis_id: str
    state: str  # new | queued | running | done
    # The record of a done analysis, read in the same script as the claim.
    record: dict[str, Any] | None = None

    @property
    def is_new(self) -> bool:
        return self.state == "new"


class AsyncStore:
    """Webhook side (asyncio)."""

    def __init__(self, client: aioredis.Redis, prefix: str = "ra:") -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self._claim = client.register_script(CLAIM)
        self._abandon = client.register_script(ABANDON)

    async def claim(
        self,
        identity: str,
        spec: dict[str, Any],
        *,
        pending_seconds: float,
        result_ttl_seconds: int,
        now: float,
    ) -> Claim:
        new_id = new_analysis_id()
        args = [
            self.keys.prefix,
            new_id,
            int(pending_seconds * 1000),
            result_ttl_seconds,
            json.dumps(spec),
            now,
        ]
        found = await self._claim(keys=[self.keys.claim(identity)], args=args)
        record = None
        if len(found) > 2:
            flat = found[2]
            record = decode_record(dict(zip(flat[::2], flat[1::2], strict=True)))
        return Claim(_text(found[0]), _text(found[1]), record)

    async def abandon(self, identity: str, analysis_id: str, reason: str) -> str:
        """Undo a claim whose task could not be enqueued, so the next call starts afresh:
        ok, or started when a worker has it after all (then the claim stays)."""
        keys = [self.keys.claim(identity), self.keys.record(analysis_id)]
        return _text(await self._abandon(keys=keys, args=[analysis_id, reason]))

    async def record(self, analysis_id: str) -> dict[str, Any] | None:
        return decode_record(await self.redis.hgetall(self.keys.record(analysis_id)))

    async def live_workers(self, within_seconds: float) -> int:
        now = time.time()
        return int(await self.redis.zcount(self.keys.workers, now - within_seconds, "+inf"))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
