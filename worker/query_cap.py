"""A cap on our concurrent PromQL queries per Prometheus, shared by every worker through Redis.

A burst of analyses must never flood the Prometheus the whole company depends on. The cap is a
counting semaphore: a sorted set of holders scored by the expiry of their lease (Redis' own clock,
so worker clocks may drift). Acquiring first drops expired holders, so a worker that died holding
a slot frees it when its lease runs out; a live holder releases on exit. Waiting is bounded by the
analysis deadline: a caller that cannot get a slot in time gets a SourceError, never a verdict.
A slot is given back as soon as the query has answered, by the thread that ran it (a thread of
its own for this saved one round trip on the path to Argo's answer but cost more CPU in thread
wake-ups than it saved: docs/performance.md, fourth pass). The slot START took is given back
without waiting for Redis' reply: the ZREM goes out when the query answers, the analysis judges
meanwhile, and the reply is read at the analysis' end (fifth pass).
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from analysis.observation import Observation
from analysis.request import AnalysisSpec
from analysis.sources import MetricsSource, SourceError
from worker.direct_redis import sender_of
from worker.lua import Script

# A Lua function taking a slot: 1, or 0 when `limit` holders hold one. `key` holds the holders
# (zset member -> lease expiry in ms, Redis' clock). ACQUIRE calls it; so does the store's START
# where a slot rides along with it (worker/store.py: one round trip less per analysis).
TAKE_SLOT = """
local function take_slot(key, limit, holder, lease_ms)
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now_ms)
  -- A holder has one slot: taking it again (a retried call, START taking the slot its claim
  -- took) keeps it, for a lease from now.
  if not redis.call('ZSCORE', key, holder) and redis.call('ZCARD', key) >= limit then
    return 0
  end
  redis.call('ZADD', key, now_ms + lease_ms, holder)
  -- The key outlives its longest lease, never more: nothing is left behind when all go idle.
  if redis.call('PTTL', key) < lease_ms then redis.call('PEXPIRE', key, lease_ms) end
  return 1
end
"""

# KEYS[1] holders; ARGV: limit, holder, lease ms.
ACQUIRE = TAKE_SLOT + "return take_slot(KEYS[1], tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]))"


@dataclass(frozen=True)
class SlotRequest:
    """A slot to take in another script (START): the cap's key, limit, a new holder, lease."""

    key: str
    limit: int
    holder: str
    lease_ms: int

    def args(self) -> list[str | int]:
        return [self.limit, self.holder, self.lease_ms]


# Don't start waiting for a slot when less than this is left: the query itself needs time too.
MIN_QUERY_SECONDS = 0.05
POLL_START_SECONDS = 0.002
POLL_MAX_SECONDS = 0.05


class QueryCapReached(SourceError):
    """No slot came free before the caller's deadline."""


def cap_key(prefix: str, prometheus_url: str) -> str:
    """One semaphore per Prometheus (by URL), whatever the number of workers."""
    digest = hashlib.sha256(prometheus_url.rstrip("/").encode()).hexdigest()[:16]
    return f"{prefix}promcap:{digest}"


class QueryCap:
    """At most `limit` holders of `key` at once, across every process sharing the Redis."""

    def __init__(
        self, client: redis.Redis, key: str, limit: int, lease_seconds: float = 30.0
    ) -> None:
        if limit < 1:
            raise ValueError("the cap must allow at least one query")
        self.redis = client
        self.key = key
        self.limit = limit
        self.lease_ms = max(1, int(lease_seconds * 1000))
        self._acquire = Script(client, ACQUIRE)
        self._sender = sender_of(client)

    def try_acquire(self, holder: str) -> bool:
        return bool(self._acquire(keys=[self.key], args=[self.limit, holder, self.lease_ms]))

    def _try(self, holder: str) -> bool:
        try:
            return self.try_acquire(holder)
        except redis.RedisError as exc:
            # No cap means no guarantee to Prometheus: fail the analysis, never skip the cap.
            raise SourceError(f"the Prometheus query cap is unavailable (Redis): {exc}") from exc

    def release(self, holder: str) -> None:
        self.redis.zrem(self.key, holder)

    def release_sent(self, holder: str) -> Callable[[], None]:
        """Give a slot back now and read Redis' reply later, with the call returned (on this
        thread): the slot is free once Redis has the ZREM, and the caller need not wait a
        round trip for it (worker/direct_redis.py: our socket, else a pooled connection held until
        the reply is read). A cluster client has no single pool: there it is made at once."""
        if self._sender is None:
            self.release(holder)
            return lambda: None
        reply = self._sender.send("ZREM", self.key, holder)

        def read() -> None:
            reply()

        return read

    def holders(self) -> int:
        """Holders whose lease has not expired (what the cap counts)."""
        now_s, now_us = self.redis.time()
        now_ms = now_s * 1000 + now_us // 1000
        return int(self.redis.zcount(self.key, f"({now_ms}", "+inf"))

    def request(self, holder: str | None = None) -> SlotRequest:
        """A slot for another script to take (START), under `holder` (default: a new one)."""
        return SlotRequest(self.key, self.limit, holder or uuid.uuid4().hex, self.lease_ms)

    @contextmanager
    def slot(
        self,
        deadline: float | None,
        max_wait: float = 10.0,
        held: str | None = None,
        settle_later: list[Callable[[], None]] | None = None,
    ) -> Iterator[None]:
        """Hold one slot for the body; wait (polling, with backoff) until `deadline` (monotonic)
        or at most `max_wait` s, then raise QueryCapReached. `held`: the holder of a slot taken
        already (by START), given back here like one taken here. `settle_later`: give the slot
        back without waiting for Redis' reply; what reads it is appended there."""
        holder = held or uuid.uuid4().hex
        give_up = time.monotonic() + max_wait
        if deadline is not None:
            give_up = min(give_up, deadline - MIN_QUERY_SECONDS)
        pause = POLL_START_SECONDS
        while held is None and not self._try(holder):
            left = give_up - time.monotonic()
            if left <= 0:
                raise QueryCapReached(
                    f"Prometheus is busy: {self.limit} of our queries already in flight "
                    "(prometheus_max_concurrent_queries); retry later"
                )
            # Jitter keeps waiters from all retrying in the same instant.
            time.sleep(min(left, pause * random.uniform(0.5, 1.5)))
            pause = min(POLL_MAX_SECONDS, pause * 2)
        try:
            yield
        finally:
            with contextlib.suppress(redis.RedisError):  # the lease expires on its own
                if settle_later is None:
                    self.release(holder)
                else:
                    settle_later.append(self.release_sent(holder))


class CappedSource:
    """A MetricsSource whose every query holds a slot of `cap` while it runs."""

    def __init__(self, inner: MetricsSource, cap: QueryCap, held: str | None = None) -> None:
        self.inner = inner
        self.cap = cap
        self.name = inner.name
        self._held = held  # a slot START took for this analysis' first query
        self._unsettled: list[Callable[[], None]] = []  # its release's reply, read at the end

    @contextmanager
    def holding(self, held: str | None) -> Iterator[CappedSource]:
        """This source for one analysis whose first query uses the slot `held` (taken by
        START); the slot goes back at the end if no query used it, and the reply to a release
        sent without waiting is read there."""
        if held is None:
            yield self
            return
        view = CappedSource(self.inner, self.cap, held)
        try:
            yield view
        finally:
            releases = [*view._unsettled]
            if view._held is not None:
                releases.append(lambda: self.cap.release(view._held or ""))
            for release in releases:
                with contextlib.suppress(redis.RedisError):  # the lease expires on its own
                    release()

    def observe(
        self,
        spec: AnalysisSpec,
        end: float,
        deadline: float | None = None,
        seconds: float | None = None,
    ) -> Observation:
        held, self._held = self._held, None
        # START's slot goes back without a round trip on the way to the verdict.
        later = self._unsettled if held is not None else None
        with self.cap.slot(deadline, held=held, settle_later=later):
            return self.inner.observe(spec, end, deadline, seconds)

    def send_ahead(
        self, spec: AnalysisSpec, end: float, seconds: float | None = None, *, most: int = 1
    ) -> bool:
        """The query sent ahead of its task (worker/ahead.py), under the slot its claim took."""
        send = getattr(self.inner, "send_ahead", None)
        return bool(send is not None and send(spec, end, seconds, most=most))

    def observe_range(
        self,
        spec: AnalysisSpec,
        start: float,
        end: float,
        step: float,
        seconds: float | None = None,
    ) -> list[Observation]:
        with self.cap.slot(None):
            return self.inner.observe_range(spec, start, end, step, seconds)

    def latest_time(self, spec: AnalysisSpec, now: float) -> float:
        return self.inner.latest_time(spec, now)

    def samples(
        self, expr: str, at: float, deadline: float | None = None
    ) -> list[tuple[dict[str, str], float]]:
        """An instant query (the webhook's one-number values) under the same cap."""
        with self.cap.slot(deadline):
            result: list[tuple[dict[str, str], float]] = self.inner.samples(expr, at, deadline)  # type: ignore[attr-defined]
            return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def slot_request(source: MetricsSource, holder: str | None = None) -> SlotRequest | None:
    """What START should take along for this source's first query (None: not capped), under
    `holder` if given (the slot a claim took for it: kept, not taken twice)."""
    return source.cap.request(holder) if isinstance(source, CappedSource) else None


@contextmanager
def holding(source: MetricsSource, held: str | None) -> Iterator[MetricsSource]:
    """`source` for one analysis, its first query in the slot `held` that START took."""
    if held is None or not isinstance(source, CappedSource):
        yield source
        return
    with source.holding(held) as view:
        yield view
