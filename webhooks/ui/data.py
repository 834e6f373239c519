"""What the report pages show, read from Redis: the analysis record, its actions and chat
deliveries, and the rollout's polls and events (kept by worker/history.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from worker.history import read_summary, rollout_key
from worker.keyspace import Keys
from worker.store import decode_record

RECENT_ROLLOUTS = 100
RECENT_REVISIONS = 20


@dataclass
class EventView:
    event_id: str
    kind: str  # verdict | argo
    time: float
    verdict: str
    previous: str | None
    analysis_id: str | None
    message: str | None
    actions: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AnalysisView:
    record: dict[str, Any]
    actions: list[dict[str, Any]]
    event: EventView | None
    polls: list[dict[str, Any]]  # the canary's polls up to this one, oldest first


@dataclass
class TimelineView:
    key: str
    polls: list[dict[str, Any]]
    events: list[EventView]
    revisions: list[tuple[str, float, dict[str, Any] | None]]  # key, last seen, last poll


def _json(raw: Any) -> Any:
    """A stored JSON value; a step still held by a worker holds the plain text `running`."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return {"status": _text(raw)}


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


# redis-py types every reply as any reply; a sorted set's are these.
def _members(reply: Any) -> list[bytes]:
    return list(reply)


def _scored(reply: Any) -> list[tuple[bytes, float]]:
    return list(reply)


class UiData:
    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = prefix
        self.keys = Keys(prefix)  # the store's and follow-up's names (Redis Cluster hash tags)
        self.history = f"{prefix}history:"

    async def analysis(self, analysis_id: str) -> AnalysisView | None:
        record = decode_record(await self.redis.hgetall(self.keys.record(analysis_id)))
        if record is None:
            return None
        record.pop("claim", None)
        raw_actions = await self.redis.lrange(f"{self.prefix}actions:{analysis_id}", 0, -1)
        event_id = await self.redis.get(f"{self.history}event-of:{analysis_id}")
        event = await self._event(_text(event_id)) if event_id else None
        result = record.get("result")
        polls: list[dict[str, Any]] = []
        if isinstance(result, dict) and "window" in result:
            polls = await self.polls(rollout_key(result))
            mine = [i for i, p in enumerate(polls) if p["analysis_id"] == analysis_id]
            if mine:
                polls = polls[: mine[0] + 1]
        return AnalysisView(record, [json.loads(a) for a in raw_actions], event, polls)

    async def polls(self, key: str) -> list[dict[str, Any]]:
        raw = _members(await self.redis.zrange(f"{self.history}polls:{key}", 0, -1))
        return [read_summary(member) for member in raw]

    async def timeline(self, key: str, revisions_of: str | None) -> TimelineView:
        polls = await self.polls(key)
        ids = await self.redis.zrange(f"{self.history}events:{key}", 0, -1)
        events = [e for e in [await self._event(_text(i)) for i in ids] if e is not None]
        revisions: list[tuple[str, float, dict[str, Any] | None]] = []
        if revisions_of:
            found = _scored(
                await self.redis.zrevrange(
                    f"{self.history}revisions:{revisions_of}",
                    0,
                    RECENT_REVISIONS - 1,
                    withscores=True,
                )
            )
            revisions = [(_text(k), float(s), await self.last_poll(_text(k))) for k, s in found]
        return TimelineView(key, polls, events, revisions)

    async def newest_revision(self, rollout: str) -> str | None:
        found = await self.redis.zrevrange(f"{self.history}revisions:{rollout}", 0, 0)
        return _text(found[0]) if found else None

    async def last_poll(self, key: str) -> dict[str, Any] | None:
        raw = _members(await self.redis.zrange(f"{self.history}polls:{key}", -1, -1))
        return read_summary(raw[0]) if raw else None

    async def rollouts(self) -> list[tuple[str, float, dict[str, Any] | None]]:
        found = _scored(
            await self.redis.zrevrange(
                f"{self.history}rollouts", 0, RECENT_ROLLOUTS - 1, withscores=True
            )
        )
        return [(_text(k), float(s), await self.last_poll(_text(k))) for k, s in found]

    async def _event(self, event_id: str) -> EventView | None:
        event = _json(await self.redis.get(self.keys.event(event_id)))
        if not isinstance(event, dict):
            return None
        members = await self.redis.smembers(f"{self.history}steps:{event_id}")
        steps = sorted(_text(s) for s in members)
        # GETs in a pipeline rather than one MGET: the keys may live in different cluster slots.
        pipe = self.redis.pipeline(transaction=False)
        for step in steps:
            pipe.get(f"{self.prefix}step:{event_id}:{step}")
        outcomes = await pipe.execute() if steps else []
        view = EventView(
            event_id=event_id,
            kind=str(event.get("kind")),
            time=float(event.get("time") or 0),
            verdict=str(event.get("verdict")),
            previous=event.get("previous") or None,
            analysis_id=event.get("analysis_id"),
            message=(event.get("argo") or {}).get("message"),
        )
        for step, raw in zip(steps, outcomes, strict=True):
            outcome = _json(raw) or {"status": "expired"}
            if step == "traffic":
                view.actions = list((outcome or {}).get("actions") or [])
            elif step.startswith("notify:"):
                view.deliveries.append({"target": step.removeprefix("notify:"), **(outcome or {})})
        return view
