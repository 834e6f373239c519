"""What the report pages look back on: each rollout's polls, events and chat/traffic steps.

Written by the worker as verdicts and events happen, read by the webhook's /ui pages
(webhooks/ui/data.py). Keys (prefix `ra:` by default), all living `HISTORY_TTL_SECONDS`:
  history:rollouts            → sorted set of rollout keys by last poll time (/ui/)
  history:polls:<key>         → sorted set of poll summaries (JSON) by window end
  history:revisions:<ns>/<r>  → sorted set of a rollout's revision keys by last poll time
  history:events:<key>        → sorted set of event ids by time (verdict changes, Argo events)
  history:event-of:<id>       → the verdict event an analysis started
  history:steps:<event id>    → set of the steps done for an event (traffic, notify:<target>)
A poll's member is its whole summary, compact (see `stored_summary`), so a redelivered task
writes the same member again.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import redis

from analysis.durations import parse_time
from worker.keyspace import Keys

HISTORY_TTL_SECONDS = 7 * 86400
MAX_POLLS = 120  # per rollout revision: an hour of polls every 30 s (events and steps keep 7 days)
SIGNIFICANT_DIGITS = 6  # more than any page shows (4 digits, or a percentage with 2 decimals)
MAX_ROLLOUTS = 500
SEEN_EVERY_SECONDS = 30.0
MAX_SEEN_REMEMBERED = 10_000


def rollout_key(result: dict[str, Any]) -> str:
    """The identity polls and events are kept per: a rollout revision, else service + canary."""
    namespace = result.get("namespace") or "-"
    if result.get("rollout"):
        return f"{namespace}/{result['rollout']}@{result.get('revision') or '-'}"
    return f"{namespace}/{result['service']}#{result['canary']}"


def poll_summary(result: dict[str, Any], live: bool) -> dict[str, Any]:
    """The few numbers a timeline row shows, so it needs no analysis record (those expire)."""
    metrics = result.get("metrics") or {}
    latency = metrics.get("latency_seconds") or {}
    top = list(latency)[-1] if latency else None
    budget = metrics.get("error_budget") or {}
    return {
        "analysis_id": result["analysis_id"],
        "time": result["window"]["end"],
        "verdict": result["verdict"],
        "score": result.get("score"),
        "live": live,
        "requests": result.get("requests") or {},
        "success_rate": metrics.get("success_rate") or {},
        "burn": {"canary": budget.get("burn_canary"), "baseline": budget.get("burn_baseline")},
        "quantile": top,
        "latency": latency.get(top) if top else {},
    }


def stored_summary(summary: dict[str, Any]) -> str:
    """A poll summary as kept, per rollout revision, for 7 days: floats to 6 significant
    digits, no null or empty field (`read_summary` puts them back)."""
    return json.dumps(_compact(summary), sort_keys=True, separators=(",", ":"))


def read_summary(raw: bytes | str) -> dict[str, Any]:
    """A kept poll summary in the shape `poll_summary` makes (also one kept in full, by an
    earlier version): the pages' templates read every field."""
    kept: dict[str, Any] = json.loads(raw)
    burn = kept.get("burn") or {}
    return {
        "analysis_id": kept.get("analysis_id") or "",
        "time": kept.get("time") or "",
        "verdict": kept.get("verdict") or "unknown",
        "score": kept.get("score"),
        "live": bool(kept.get("live")),
        "requests": kept.get("requests") or {},
        "success_rate": kept.get("success_rate") or {},
        "burn": {"canary": burn.get("canary"), "baseline": burn.get("baseline")},
        "quantile": kept.get("quantile"),
        "latency": kept.get("latency") or {},
    }


def _compact(value: Any) -> Any:
    if isinstance(value, dict):
        kept = {k: _compact(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and v != {} and v != [] and v != ""}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    if isinstance(value, float) and math.isfinite(value):
        rounded = float(f"{value:.{SIGNIFICANT_DIGITS}g}")
        return int(rounded) if rounded.is_integer() and abs(rounded) < 1e15 else rounded
    return value


@dataclass(frozen=True)
class PollEntry:
    """One poll on a rollout's timeline: its sorted set, its summary, its window's end."""

    key: str
    member: str
    score: float

    def args(self) -> list[str | float | int]:
        """For a script: member, score, how many polls are kept, how long (seconds)."""
        return [self.member, self.score, MAX_POLLS, HISTORY_TTL_SECONDS]


class History:
    """Worker side (synchronous redis)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.keys = Keys(prefix)
        self.prefix = f"{prefix}history:"
        self._last_seen: OrderedDict[str, float] = OrderedDict()

    def entry(self, result: dict[str, Any]) -> PollEntry:
        """The poll's line on its rollout's timeline (FINISH can write it: worker/store.py)."""
        live = result.get("live")
        if live is None:  # answers gain `live` later; until then: no explicit `end` = live
            spec = self.redis.hget(self.keys.record(result["analysis_id"]), "spec")
            live = spec is None or json.loads(spec).get("end") is None
        summary = poll_summary(result, bool(live))
        polls = f"{self.prefix}polls:{rollout_key(result)}"
        return PollEntry(polls, stored_summary(summary), parse_time(summary["time"]))

    def poll(self, result: dict[str, Any], recorded: bool = False) -> None:
        """Put the poll on its rollout's timeline, unless FINISH `recorded` it already."""
        key, at = rollout_key(result), time.time()
        seen = self._seen_due(key, at)
        if recorded and not seen:
            return  # most polls: FINISH wrote all there was to write
        pipe = self.redis.pipeline(transaction=False)
        if not recorded:
            entry = self.entry(result)
            pipe.zadd(entry.key, {entry.member: entry.score})
            pipe.zremrangebyrank(entry.key, 0, -MAX_POLLS - 1)
            pipe.expire(entry.key, HISTORY_TTL_SECONDS)
        if seen:
            self._seen(pipe, key, result, at)
        pipe.execute()

    def _seen_due(self, key: str, at: float) -> bool:
        """When a rollout (revision) was last analysed: the index pages sort by it. Written at
        most every SEEN_EVERY_SECONDS per rollout by this process (to the index, a poll 30 s
        later is news; five commands per poll were 5 % of a worker's CPU)."""
        last = self._last_seen.get(key)
        return last is None or at - last >= SEEN_EVERY_SECONDS

    def _seen(self, pipe: Any, key: str, result: dict[str, Any], at: float) -> None:
        self._last_seen[key] = at
        self._last_seen.move_to_end(key)
        while len(self._last_seen) > MAX_SEEN_REMEMBERED:
            self._last_seen.popitem(last=False)
        rollouts = f"{self.prefix}rollouts"
        pipe.zadd(rollouts, {key: at}, gt=True)  # GT still adds a new member
        pipe.zremrangebyrank(rollouts, 0, -MAX_ROLLOUTS - 1)
        pipe.expire(rollouts, HISTORY_TTL_SECONDS)
        if result.get("rollout"):
            name = f"{result.get('namespace') or '-'}/{result['rollout']}"
            revisions = f"{self.prefix}revisions:{name}"
            pipe.zadd(revisions, {key: at}, gt=True)
            pipe.expire(revisions, HISTORY_TTL_SECONDS)

    def event(self, key: str, event_id: str, at: float, analysis_id: str | None = None) -> None:
        pipe = self.redis.pipeline(transaction=False)
        events = f"{self.prefix}events:{key}"
        pipe.zadd(events, {event_id: at}, nx=True)
        pipe.expire(events, HISTORY_TTL_SECONDS)
        if analysis_id:
            pipe.set(f"{self.prefix}event-of:{analysis_id}", event_id, ex=HISTORY_TTL_SECONDS)
        pipe.execute()

    def step(self, event_id: str, step: str) -> None:
        steps = f"{self.prefix}steps:{event_id}"
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(steps, step)
        pipe.expire(steps, HISTORY_TTL_SECONDS)
        pipe.execute()
