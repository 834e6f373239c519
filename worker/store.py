"""Analysis state in Redis: dedup claims, records, worker leases, completion messages.

Keys (prefix `ra:` by default; `{t}` is a Redis Cluster hash tag, see worker/keyspace.py):
  {t}claim:<identity> → analysis id; lives `pending_seconds` while the analysis is queued or
                      running, then `reuse_seconds` after it is done (the reuse window).
  {t}analysis:<id>  → hash: status (queued | running | done | error | superseded), spec,
                      result (packed: worker/codec.py) or error, timestamps; lives
                      `result_ttl_seconds`.
  {t}latest:<identity> → the latest finished analysis of the identity (see Retention).
  {t}lease:<id>     → the worker computing it; renewed while it runs. A running analysis
                      without a lease has lost its worker: the next call supersedes it.
  done:<id>         → pub/sub channel announcing completion (with the outcome) to waiting
                      webhook processes.
  workers           → sorted set of worker heartbeats (score = unix time).
  followup-workers  → the same, of workers consuming only follow-ups (they answer no analysis).
Each transition is one Lua script, so two webhooks or two workers can never both win.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.cluster import RedisCluster

from worker import codec
from worker.history import PollEntry
from worker.keyspace import Keys, new_analysis_id
from worker.lua import Arg, AsyncScript, Script
from worker.query_cap import TAKE_SLOT, SlotRequest

# What a Lua script's ARGV takes.

__all__ = [
    "AsyncStore",
    "Claim",
    "Keys",
    "Retention",
    "Store",
    "decode_record",
    "new_analysis_id",
]

# KEYS: the claim, the new analysis's record. ARGV[1] is the prefix with the claim's slot tag:
# every analysis of a claim shares its tag, so the current one's keys are in this slot too.
CLAIM = (
    TAKE_SLOT
    + """
local prefix, new_id = ARGV[1], ARGV[2]
local current = redis.call('GET', KEYS[1])
-- This very call, run again (its reply was lost, the client retried): the claim is still ours.
if current == new_id and redis.call('HGET', KEYS[2], 'status') == 'queued' then
  return {new_id, 'new'}
end
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
local record = KEYS[2]
-- With the broker on this Redis, the task's message goes in with the claim: one round trip,
-- and never a claim without its task (KEYS[3] the queue, ARGV[7] the message).
if ARGV[7] then
  local message = ARGV[7]
  -- Where queries are capped (KEYS[4] the cap's holders, ARGV[10..12] holder, limit, lease
  -- ms), a slot for the analysis' query, so its worker need not wait for START to send it
  -- (worker/hints.py); only with no task waiting, or the slot would idle behind a backlog.
  -- The message names the slot (ARGV[8]); with none taken it says so (ARGV[9]).
  if ARGV[8] ~= nil and ARGV[8] ~= '' then
    local taken = redis.call('LLEN', KEYS[3]) == 0
      and take_slot(KEYS[4], tonumber(ARGV[11]), ARGV[10], tonumber(ARGV[12])) == 1
    if not taken then
      local at = string.find(message, ARGV[8], 1, true)
      message = string.sub(message, 1, at - 1) .. ARGV[9] .. string.sub(message, at + #ARGV[8])
    end
  end
  -- A live poll (KEYS[#KEYS] its canary's sequence): the hint's `since` (ARGV[13]) says when
  -- the previous poll ended, or that there is none yet (ARGV[14]), for its worker to send the
  -- query on delivery (worker/ahead.py). One Redis only: the sequence has a slot of its own.
  if ARGV[13] ~= nil and ARGV[13] ~= '' then
    local since = nil
    if redis.call('EXISTS', KEYS[#KEYS]) == 0 then
      since = ARGV[14]
    else
      local last = tonumber(redis.call('HGET', KEYS[#KEYS], 'last_end') or '')
      if last then since = string.format('"since":%.3f', last) end
    end
    local at = since and string.find(message, ARGV[13], 1, true)
    if at then
      message = string.sub(message, 1, at - 1) .. since .. string.sub(message, at + #ARGV[13])
    end
  end
  redis.call('LPUSH', KEYS[3], message)
end
redis.call('HSET', record, 'id', new_id, 'claim', KEYS[1], 'status', 'queued',
           'spec', ARGV[5], 'queued_at', ARGV[6])
redis.call('EXPIRE', record, ARGV[4])
redis.call('SET', KEYS[1], new_id, 'PX', ARGV[3])
return {new_id, 'new'}
"""
)

# Every transition below is one script and checks who holds the analysis: its lease key names
# the worker running it. Only START acquires (a queued analysis, or a running one whose lease
# lapsed); RENEW and FINISH succeed only for the holder, so a worker that lost its lease can
# neither keep it alive nor record a result over a superseded or taken-over analysis.
# done, superseded and error are final: no script moves an analysis out of them.

START = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'missing'} end
-- A done analysis comes back with its record (a redelivery offers its follow-up again).
if status == 'done' then return {status, redis.call('HGETALL', KEYS[1])} end
if status == 'superseded' or status == 'error' then return {status} end
local holder = redis.call('GET', KEYS[2])
if status == 'running' and holder and holder ~= ARGV[1] then return {'taken'} end
redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[3], 'worker', ARGV[1])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
-- The worker needs the spec next: it comes with the answer, no second round trip.
return {'started', redis.call('HGETALL', KEYS[1])}
"""

# START, and where a query slot rides along (KEYS[3] the cap's holders, ARGV[4..6] limit, holder,
# lease ms) that slot too, for a started analysis: its query needs it next.
START_WITH_SLOT = TAKE_SLOT + START.replace(
    "return {'started', redis.call('HGETALL', KEYS[1])}",
    "local slot = take_slot(KEYS[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6]))\n"
    "return {'started', redis.call('HGETALL', KEYS[1]), slot}",
)
assert START_WITH_SLOT.count("take_slot(KEYS[3]") == 1

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
-- This very call, run again (its reply was lost, the client retried): it is done.
if status == ARGV[2] and redis.call('HGET', KEYS[1], 'worker') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'finished_at') == ARGV[4] then
  return 'ok'
end
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
-- Retention: the latest finished analysis of a claim's identity is kept result_ttl; the one it
-- replaces only ARGV[10] s, unless an event (a verdict change, an action) marked it kept.
local tagged = ARGV[9]
if claim and string.sub(claim, 1, #tagged + 6) == tagged .. 'claim:' then
  local latest = tagged .. 'latest:' .. string.sub(claim, #tagged + 7)
  local previous = redis.call('GET', latest)
  if previous and previous ~= ARGV[6] then
    local old = tagged .. 'analysis:' .. previous
    if redis.call('HGET', old, 'kept') ~= '1' then redis.call('EXPIRE', old, ARGV[10]) end
  end
  redis.call('SET', latest, ARGV[6], 'EX', ARGV[11])
  redis.call('EXPIRE', KEYS[1], ARGV[11])
end
if claim and redis.call('GET', claim) == ARGV[6] then
  if ARGV[2] == 'done' and tonumber(ARGV[5]) > 0 then
    redis.call('PEXPIRE', claim, ARGV[5])
  else
    redis.call('DEL', claim)
  end
end
-- The message carries the outcome itself (plain JSON: it is not kept, the result field is
-- packed): a waiting webhook needs no second read.
redis.call('PUBLISH', ARGV[7], ARGV[8])
return 'ok'
"""

# FINISH, and where the poll's line on its rollout's timeline rides along (KEYS[3] the rollout's
# polls, ARGV[12..15] member, score, polls kept, TTL: worker/history.py) that line too, for a done
# analysis: one round trip less after each analysis.
FINISH_WITH_POLL = FINISH.replace(
    "-- The message carries the outcome itself",
    "if ARGV[2] == 'done' then\n"
    "  redis.call('ZADD', KEYS[3], ARGV[13], ARGV[12])\n"
    "  redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -tonumber(ARGV[14]) - 1)\n"
    "  redis.call('EXPIRE', KEYS[3], ARGV[15])\n"
    "end\n"
    "-- The message carries the outcome itself",
)
assert FINISH_WITH_POLL.count("ZREMRANGEBYRANK") == 1

# The webhook's undo of its own claim when the task could not be enqueued. A wait_for timeout
# may hide an enqueue that did happen: once a worker started the analysis, it is the worker's.
ABANDON = """
if redis.call('HGET', KEYS[2], 'status') ~= 'queued' then return 'started' end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('HSET', KEYS[2], 'status', 'error', 'error', ARGV[2])
return 'ok'
"""


def decode_record(raw: Mapping[Any, Any]) -> dict[str, Any] | None:
    """A record's fields (`result` is packed, see worker/codec.py); a field that cannot be read
    is null and named, with why, in `unreadable`: the rest of the record still answers."""
    if not raw:
        return None
    record: dict[str, Any] = {}
    unreadable: dict[str, str] = {}
    for key, value in raw.items():
        name = _text(key)
        try:
            record[name] = codec.unpack(value)
        except codec.Unreadable as exc:
            record[name], unreadable[name] = None, str(exc)
    for field in ("result", "spec", "error"):
        text = record.get(field)
        if isinstance(text, str) and text.startswith("{"):
            try:
                record[field] = codec.loads(text)
            except ValueError as exc:
                record[field], unreadable[field] = None, f"stored value is corrupt (JSON: {exc})"
    if unreadable:
        record["unreadable"] = unreadable
    return record


@dataclass(frozen=True)
class Retention:
    """How long finished analyses stay: the latest of each claim identity (what someone
    reads) for `result_ttl_seconds`, one replaced by a newer analysis only
    `replaced_ttl_seconds` (unless an event kept it), so memory follows canaries, not polls."""

    result_ttl_seconds: int = 86400
    replaced_ttl_seconds: int = 60


def completion_message(status: str, body: bytes | str) -> bytes:
    """What FINISH publishes: the record's final fields, as JSON (body is JSON already)."""
    raw = body.encode() if isinstance(body, str) else body
    field = b"result" if status == "done" else b"error"
    value = raw if raw.startswith(b"{") else json.dumps(raw.decode()).encode()
    return b'{"status":' + json.dumps(status).encode() + b',"' + field + b'":' + value + b"}"


# How a done analysis' completion message begins (completion_message).
_DONE = b'{"status":"done","result":'
# The record field holding a done result's JSON text as the worker wrote it: the webhook answers
# with it as it is (worker/store.py writes compact JSON), not parsed and dumped again.
RESULT_TEXT = "result_text"


def decode_completion(message: bytes | str) -> dict[str, Any] | None:
    """The final record from a completion message; None from a worker that sent the bare
    status (before the message carried the outcome): the waiter reads the record then."""
    raw = message.encode() if isinstance(message, str) else message
    if not raw.startswith(b"{"):
        return None
    record: dict[str, Any] = codec.loads(raw)
    if raw.startswith(_DONE) and isinstance(record.get("result"), dict):
        record[RESULT_TEXT] = raw[len(_DONE) : -1]  # bytes: answered as they are
    return record


class Store:
    """Worker side (synchronous)."""

    def __init__(
        self, client: redis.Redis, prefix: str = "ra:", retention: Retention | None = None
    ) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.retention = retention or Retention()
        self._start = Script(client, START)
        self._start_with_slot = Script(client, START_WITH_SLOT)
        self._renew = Script(client, RENEW)
        self._finish = Script(client, FINISH)
        self._finish_with_poll = Script(client, FINISH_WITH_POLL)

    def record(self, analysis_id: str) -> dict[str, Any] | None:
        return decode_record(self.redis.hgetall(self.keys.record(analysis_id)))

    @property
    def on_one_node(self) -> bool:
        """Whether a script may touch keys of any hash slot (START a query slot, FINISH a
        poll's line): not in a cluster, where the cap's and the timeline's keys cannot share
        every analysis's slot."""
        return not isinstance(self.redis, RedisCluster)

    def start(self, analysis_id: str, worker: str, lease_seconds: float) -> str:
        return self.begin(analysis_id, worker, lease_seconds)[0]

    def begin(
        self,
        analysis_id: str,
        worker: str,
        lease_seconds: float,
        slot: SlotRequest | None = None,
    ) -> tuple[str, dict[str, Any] | None, str | None]:
        """START: (started | done | taken | superseded | error | missing, the record when
        started or done, the holder of `slot` when taken with it) in one round trip."""
        script, keys, args, slot = self._start_call(analysis_id, worker, lease_seconds, slot)
        return _begun(script(keys=keys, args=args), slot)

    def begin_sent(
        self,
        analysis_id: str,
        worker: str,
        lease_seconds: float,
        slot: SlotRequest | None = None,
    ) -> Callable[[], tuple[str, dict[str, Any] | None, str | None]]:
        """START sent now, its answer (as `begin`'s) read with the call returned: the worker
        queries meanwhile (worker/hints.py). `slot`: the claim's query slot, leased again for
        the query's time (the claim leased it briefly)."""
        script, keys, args, slot = self._start_call(analysis_id, worker, lease_seconds, slot)
        reply = script.send(keys=keys, args=args)
        return lambda: _begun(reply(), slot)

    def _start_call(
        self, analysis_id: str, worker: str, lease_seconds: float, slot: SlotRequest | None
    ) -> tuple[Script, list[str], list[Arg], SlotRequest | None]:
        """START's script and arguments, with the query slot where one node holds it all."""
        keys = [self.keys.record(analysis_id), self.keys.lease(analysis_id)]
        args: list[Arg] = [worker, int(lease_seconds * 1000), time.time()]
        if slot is None or not self.on_one_node:
            return self._start, keys, args, None
        return self._start_with_slot, [*keys, slot.key], [*args, *slot.args()], slot

    def give_back_slot(self, key: str, holder: str) -> None:
        """Release a query slot a claim took for a worker that will not use it (its cap is
        another, or none). Only a cap's key under our prefix: the name comes from a message."""
        if key.startswith(f"{self.keys.prefix}promcap:"):
            with contextlib.suppress(redis.RedisError):  # its short lease ends it anyway
                self.redis.zrem(key, holder)

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
        poll: PollEntry | None = None,
    ) -> str:
        """ok, or why nothing was recorded: already (done), not_holder (the lease was lost,
        the analysis superseded or taken over), missing. `poll`: the analysis' line on its
        rollout's timeline, written with a done result (only on one node: see on_one_node)."""
        body = payload.encode() if isinstance(payload, str) else codec.dump_bytes(payload)
        keys = [self.keys.record(analysis_id), self.keys.lease(analysis_id)]
        args: list[Arg] = [
            worker,
            status,
            codec.pack(body) if status == "done" else body,  # an error is a short text
            time.time(),
            int(reuse_seconds * 1000),
            analysis_id,
            self.keys.done_channel(analysis_id),
            completion_message(status, body),
            self.keys.tagged_prefix(analysis_id),
            self.retention.replaced_ttl_seconds,
            self.retention.result_ttl_seconds,
        ]
        if poll is not None and self.on_one_node:
            keys.append(poll.key)
            args.extend(poll.args())
            return _text(self._finish_with_poll(keys=keys, args=args))
        return _text(self._finish(keys=keys, args=args))

    def heartbeat(self, worker: str, followups_only: bool = False) -> None:
        key = self.keys.followup_workers if followups_only else self.keys.workers
        now = time.time()
        pipe = self.redis.pipeline()
        pipe.zadd(key, {worker: now})
        pipe.zremrangebyscore(key, 0, now - 3600)
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
        self._claim = AsyncScript(client, CLAIM)
        self._abandon = AsyncScript(client, ABANDON)

    async def claim(
        self,
        identity: str,
        spec: dict[str, Any],
        *,
        pending_seconds: float,
        result_ttl_seconds: int,
        now: float,
        new_id: str | None = None,
        task: tuple[str, bytes] | None = None,
        task_slot: tuple[SlotRequest, str, str] | None = None,
        task_since: tuple[str, str, str] | None = None,
    ) -> Claim:
        """The identity's analysis: the one found (queued, running or done) or a new one,
        `new_id` if given. `task` (queue, message): pushed onto the queue with a new claim, in
        the same script (only where the broker is this Redis, never a cluster). `task_slot`
        (the query slot, its text in the message, the text saying none was taken): a slot the
        claim takes for the task's query if one is free and no task waits (worker/hints.py).
        `task_since` (a live poll's sequence key, the hint's text to replace, the text for no
        sequence yet): when the previous poll ended, written into the message."""
        new_id = new_id or new_analysis_id(identity)
        claim_key = self.keys.claim(identity)
        keys = [claim_key, self.keys.record(new_id)]
        args: list[Arg] = [
            claim_key[: claim_key.index("}") + 1],  # the prefix with the claim's slot tag
            new_id,
            int(pending_seconds * 1000),
            result_ttl_seconds,
            json.dumps(spec),
            now,
        ]
        if task is not None:
            keys.append(task[0])
            args.append(task[1])
            if task_slot is not None:
                request, marker, none_taken = task_slot
                keys.append(request.key)
                args.extend([marker, none_taken, request.holder, request.limit, request.lease_ms])
            if task_since is not None:
                sequence, unknown, new = task_since
                keys.append(sequence)
                args.extend([""] * (12 - len(args)))  # no slot: its arguments left empty
                args.extend([unknown, new])
        found = await self._claim(keys=keys, args=args)
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

    async def live_workers(self, within_seconds: float) -> tuple[int, int]:
        """Workers that beat within the last `within_seconds`: (analysis, follow-up only)."""
        since = time.time() - within_seconds
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcount(self.keys.workers, since, "+inf")
        pipe.zcount(self.keys.followup_workers, since, "+inf")
        analyses, followups = await pipe.execute()
        return int(analyses), int(followups)


def _begun(reply: Any, slot: SlotRequest | None) -> tuple[str, dict[str, Any] | None, str | None]:
    """START's answer: its state, the record when started or done, the slot's holder if taken."""
    state = _text(reply[0])
    if len(reply) < 2:
        return state, None, None
    flat = reply[1]
    held = slot.holder if slot is not None and len(reply) > 2 and reply[2] == 1 else None
    return state, decode_record(dict(zip(flat[::2], flat[1::2], strict=True))), held


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
