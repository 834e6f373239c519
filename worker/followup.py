"""What follows a verdict: one event per verdict transition, then traffic, then chat.

Exactly once per event:
- an *event* is a change of verdict of one rollout revision (or the first verdict), decided
  atomically in Redis; identical polls, redelivered tasks and racing workers find no new event;
- each step of an event (the traffic action, the message to each target) holds a short lease
  while it runs and a `done` mark after; a redelivered task skips what is done and redoes
  what a dead worker left half-way.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.cluster
import yaml
from pydantic import BaseModel, ConfigDict

from analysis.durations import format_time
from analysis.policy import PolicySet
from worker import codec, tracing
from worker.chat import ChatSender
from worker.history import History, rollout_key
from worker.keyspace import Keys
from worker.lua import Script
from worker.notify.message import Notification
from worker.notify.providers import ChatTarget
from worker.report_links import report_url, timeline_path
from worker.retention import Keeper
from worker.task_names import ACT_TASK, NOTIFY_TASK
from worker.traffic.kube import api_client_from_settings
from worker.traffic.policy import OBJECT_FIELD, TrafficPolicy
from worker.traffic.shift import rollback, step_up

log = logging.getLogger("rollout_analyzer.followup")

EVENT_TTL_SECONDS = 7 * 86400
# Chat outcomes that leave a stored result for the step (not duplicate, suppressed, unknown).
SETTLED = frozenset({"delivered", "failed", "rate_limited"})
STEP_LEASE_SECONDS = 120

# A step's done-mark is written only by the worker whose lease token is on it: one whose lease
# lapsed (and whose step another worker took over) records nothing over the other's outcome.
# One key, so it runs on Redis Cluster too; the step's records follow only when it succeeded.
STEP_DONE = """
local current = redis.call('GET', KEYS[1])
-- This very call, run again (its reply was lost, the client retried): it is done.
if current == ARGV[2] then return 1 end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""

# SET NX that a retried call cannot mistake for someone else's: 1 when the key now holds ARGV[1]
# because of this call (its first run, or this one), 0 when another value was there.
SET_ONCE = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then return 1 end
if current then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""

# KEYS[1] becomes the list ARGV[2..] (replaced whole, not appended to), kept ARGV[1] seconds.
WRITE_LIST = """
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS[1]: the rollout's state; the events it makes (ARGV[7] .. event id) share its slot tag.
# ARGV[8]: the state's name before slot tags (standalone Redis; '' on a cluster), taken over once.
TRANSITION = """
local state, analysis_id, verdict, window_end = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
if ARGV[8] ~= '' and redis.call('EXISTS', state) == 0 then
  local old = redis.call('HGETALL', ARGV[8])
  if #old > 0 then redis.call('HSET', state, unpack(old)) end
end
if redis.call('HGET', state, 'analysis_id') == analysis_id then
  return {redis.call('HGET', state, 'event_id') or '', 'replay'}
end
local last_end = tonumber(redis.call('HGET', state, 'window_end') or '0')
if window_end < last_end then return {'', 'stale'} end
local last = redis.call('HGET', state, 'verdict')
redis.call('HSET', state, 'analysis_id', analysis_id, 'window_end', ARGV[3])
redis.call('EXPIRE', state, ARGV[5])
if last == verdict then
  redis.call('HSET', state, 'event_id', '')
  return {'', 'same'}
end
local seq = redis.call('HINCRBY', state, 'seq', 1)
local event_id = ARGV[4] .. '#' .. seq
redis.call('HSET', state, 'verdict', verdict, 'event_id', event_id)
local event = ARGV[6]:gsub('__EVENT_ID__', event_id):gsub('__PREVIOUS__', last or '')
redis.call('SET', ARGV[7] .. event_id, event, 'EX', ARGV[5])
return {event_id, 'new'}
"""


class NotifyPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    targets: list[str] | None = None  # None: every configured target
    dashboard_url: str | None = None  # may hold {service}, {namespace}, {rollout}


class ActionsPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    traffic: TrafficPolicy | None = None
    notify: NotifyPolicy = NotifyPolicy()


def load_targets(path: str | None) -> dict[str, ChatTarget]:
    if not path:
        return {}
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    targets = [ChatTarget.model_validate(t) for t in data.get("targets") or []]
    return {t.name: t for t in targets}


@dataclass
class Followup:
    """Everything the follow-up steps need; built once per worker process."""

    redis: redis.Redis
    prefix: str
    policies: PolicySet
    targets: dict[str, ChatTarget]
    enqueue: Callable[[str, list[Any]], None]
    kube: Callable[[], Any] | None = None
    prometheus_graph_url: str | None = None
    chat: ChatSender | None = None
    kube_timeout_seconds: float = 10.0
    public_url: str | None = None  # where people open the report pages
    result_ttl_seconds: int = 86400

    def __post_init__(self) -> None:
        self.history = History(self.redis, self.prefix)
        self.keys = Keys(self.prefix)
        self.keeper = Keeper(self.redis, self.keys, self.result_ttl_seconds)
        # Keys from before the slot tags can only exist on a standalone Redis.
        self._legacy = not isinstance(self.redis, redis.cluster.RedisCluster)
        self._transition = Script(self.redis, TRANSITION)
        self._step_done = Script(self.redis, STEP_DONE)
        self._set_once = Script(self.redis, SET_ONCE)
        self._write_list = Script(self.redis, WRITE_LIST)
        self.chat = self.chat or ChatSender(self.redis, self.prefix, self.targets)

    # --- keys -------------------------------------------------------------------------------
    def _event_key(self, event_id: str) -> str:
        return self.keys.event(event_id)

    def _step_key(self, event_id: str, step: str) -> str:
        return f"{self.prefix}step:{event_id}:{step}"

    def actions_key(self, analysis_id: str) -> str:
        return f"{self.prefix}actions:{analysis_id}"

    # --- events -----------------------------------------------------------------------------
    def on_verdict(self, result: dict[str, Any]) -> str | None:
        """Called after an analysis is stored (and again on redelivery): emit its event.

        Only a live analysis has one: a replay of a past window never acts on the present."""
        key = rollout_key(result)
        if result.get("live") is not True:
            # Per poll, and "analysis finished" said it already: debug only.
            log.debug("replay: no event", extra={"rollout_key": key, "state": "replay"})
            return None
        event = {
            "event_id": "__EVENT_ID__",
            "kind": "verdict",
            "rollout_key": key,
            "analysis_id": result["analysis_id"],
            "verdict": result["verdict"],
            "previous": "__PREVIOUS__",
            "time": time.time(),
        }
        # Events follow the windows' order, not the finishing order: a slow analysis of an
        # older window that finishes after a newer verdict is stale.
        timing = result.get("timing") or {}
        window_end = timing.get("window_end") or timing.get("queued_at", 0)
        event_id, state = self._transition(
            keys=[self.keys.rollout_state(key)],
            args=[
                result["analysis_id"],
                result["verdict"],
                window_end,
                key,
                EVENT_TTL_SECONDS,
                json.dumps(event),
                self.keys.event_prefix(key),
                self.keys.legacy_rollout_state(key) if self._legacy else "",
            ],
        )
        event_id = event_id.decode() if isinstance(event_id, bytes) else event_id
        if event_id:
            self.history.event(key, event_id, time.time(), result["analysis_id"])
            # Behind a verdict change: readable for the full result TTL, not replaced away.
            self.keeper.keep(result["analysis_id"])
            self.enqueue(ACT_TASK, [event_id])
            return str(event_id)
        log.debug("no new event", extra={"rollout_key": key, "state": _text(state)})
        return None

    def on_argo_event(self, body: dict[str, Any]) -> str | None:
        """An Argo Rollouts notification: one event per (rollout revision, event name)."""
        key = f"{body['namespace']}/{body['rollout']}@{body.get('revision') or '-'}"
        event_id = f"{key}!{body['event']}"
        event = {
            "event_id": event_id,
            "kind": "argo",
            "rollout_key": key,
            "verdict": body["event"],
            "argo": body,
            "time": time.time(),
        }
        created = self._set_once(
            keys=[self._event_key(event_id)], args=[json.dumps(event), EVENT_TTL_SECONDS]
        )
        if not created:
            return None
        self.history.event(key, event_id, event["time"])
        for name in self._target_names(None):
            self.enqueue(NOTIFY_TASK, [event_id, name])
        return event_id

    def event(self, event_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self._event_key(event_id))
        if raw is None and self._legacy:  # an event queued before the upgrade to slot tags
            raw = self.redis.get(self.keys.legacy_event(event_id))
        return json.loads(raw) if raw else None

    def analysis(self, analysis_id: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.keys.record(analysis_id), "result")
        try:
            return json.loads(codec.unpack(raw)) if raw else None
        except ValueError as exc:  # codec.Unreadable too: the event still goes out, less detailed
            log.warning(
                "unreadable analysis", extra={"analysis_id": analysis_id, "error": str(exc)}
            )
            return None

    # --- once -------------------------------------------------------------------------------
    def _begin(self, event_id: str, step: str) -> str | None:
        """A lease token when this worker should perform the step (nobody did it, nobody is on
        it), else None."""
        token = f"running:{uuid.uuid4().hex}"
        key = self._step_key(event_id, step)
        return token if self._set_once(keys=[key], args=[token, STEP_LEASE_SECONDS]) else None

    def _done(
        self,
        event_id: str,
        step: str,
        token: str,
        outcome: dict[str, Any],
        records: tuple[str, list[dict[str, Any]]] | None = None,
    ) -> bool:
        """Mark the step done, then write `records` as the list they name (kept as long as
        the analysis they belong to), if this worker still holds the step."""
        step_key = self._step_key(event_id, step)
        args: list[str | int] = [token, json.dumps(outcome), EVENT_TTL_SECONDS]
        if not self._step_done(keys=[step_key], args=args):
            return False
        if records and records[1]:
            # An analysis has one event, so one traffic step writes its list: written whole
            # (not appended), a retried write leaves it as one write would.
            list_key, items = records
            self._write_list(
                keys=[list_key], args=[self.result_ttl_seconds, *map(json.dumps, items)]
            )
        self.history.step(event_id, step)
        return True

    def _pin(self, event_id: str) -> Callable[[dict[str, int]], dict[str, int]]:
        """Store a traffic action's first absolute goals for the event; return the stored ones."""
        key = self._step_key(event_id, "traffic:goals")

        def pin(goals: dict[str, int]) -> dict[str, int]:
            self.redis.set(key, json.dumps(goals), nx=True, ex=EVENT_TTL_SECONDS)
            stored = self.redis.get(key)
            return {str(k): int(v) for k, v in json.loads(stored or "{}").items()}

        return pin

    # --- act --------------------------------------------------------------------------------
    def act(self, event_id: str) -> list[dict[str, Any]]:
        event = self.event(event_id)
        if event is None:
            return []
        result = self.analysis(event["analysis_id"]) or {}
        if result.get("live") is not True:
            return []  # events come from live analyses only; this one cannot act
        actions: list[dict[str, Any]] = []
        token = self._begin(event_id, "traffic")
        if token:
            actions = self._traffic(result, self._pin(event_id))
            records = (self.actions_key(event["analysis_id"]), actions)
            if not self._done(event_id, "traffic", token, {"actions": actions}, records):
                log.warning("traffic step lease lost", extra={"event_id": event_id})
                return actions  # another worker holds the step now: it records and notifies
        notify_to = self._target_names(result)
        for name in notify_to:
            self.enqueue(NOTIFY_TASK, [event_id, name])
        return actions

    def _actions_policy(self, result: dict[str, Any]) -> ActionsPolicy:
        policy = self.policies.get(result.get("policy") or "default")
        return ActionsPolicy.model_validate(policy.actions if policy else {})

    def _traffic(
        self, result: dict[str, Any], pin: Callable[[dict[str, int]], dict[str, int]]
    ) -> list[dict[str, Any]]:
        traffic = self._actions_policy(result).traffic
        if traffic is not None and traffic.allow_request_override and result.get("traffic"):
            traffic = traffic.model_copy(update=result["traffic"])
        verdict = result.get("verdict")
        if traffic is None or self.kube is None:
            return []
        if verdict == "fail" and traffic.on_fail == "rollback":
            move = "rollback"
        elif verdict == "pass" and traffic.on_pass is not None:
            move = "step"
        else:
            return []
        try:
            target = traffic.target(result)
            api = self.kube()
        except Exception as exc:  # bad template or no cluster credentials: say so, do not raise
            failed = {
                "type": f"traffic.{move}",
                "target": traffic.object_name,
                "status": "failed",
                "reason": f"cannot reach Kubernetes: {str(exc)[:300]}",
                "time": format_time(time.time()),
            }
            return [failed]
        where = {
            "k8s.namespace.name": target.namespace,
            f"traffic.{OBJECT_FIELD[traffic.kind]}": target.name,
            "traffic.dry_run": traffic.dry_run,
        }
        with tracing.span(f"traffic.{move}", **where):
            if move == "rollback":
                record = rollback(
                    api, target, dry_run=traffic.dry_run, request_timeout=self.kube_timeout_seconds
                )
            else:
                assert traffic.on_pass is not None
                step = traffic.on_pass
                record = step_up(
                    api,
                    target,
                    step.step,
                    step.max_weight,
                    dry_run=traffic.dry_run,
                    request_timeout=self.kube_timeout_seconds,
                    pin=pin,
                )
            tracing.set_attributes(
                {"traffic.status": record.status, "traffic.attempts": record.attempts}
            )
        log.info(
            "traffic action",
            extra={"target": record.target, "status": record.status, "type": record.type},
        )
        return [record.model_dump(mode="json")]

    # --- notify -----------------------------------------------------------------------------
    def _target_names(self, result: dict[str, Any] | None) -> list[str]:
        chosen = self._actions_policy(result).notify.targets if result else None
        return [n for n in self.targets if chosen is None or n in chosen]

    def notify(self, event_id: str, target_name: str, attempt: int = 1) -> str:
        """One delivery attempt of an event's message (worker/chat.py: RetryLater for more)."""
        event = self.event(event_id)
        if event is None or target_name not in self.targets:
            return "unknown"
        assert self.chat is not None
        step = f"notify:{target_name}"
        outcome = self.chat.send(
            self._step_key(event_id, step),
            target_name,
            self.notification(event),
            attempt,
            rate_key=f"{event['rollout_key']}|{target_name}",
        )
        if outcome in SETTLED:
            self.history.step(event_id, step)  # the report pages list the step with its outcome
        return outcome

    def notification(self, event: dict[str, Any]) -> Notification:
        if event["kind"] == "argo":
            argo = event["argo"]
            return Notification(
                analysis_id="",
                service=argo["rollout"],
                namespace=argo["namespace"],
                rollout=argo["rollout"],
                revision=str(argo.get("revision") or ""),
                verdict=argo["event"],
                event=argo["event"],
                reasons=[r for r in (argo.get("message"), f"phase: {argo.get('phase')}") if r],
                links=self._timeline_link(argo),
            )
        result = self.analysis(event["analysis_id"]) or {}
        actions = [
            json.loads(a) for a in self.redis.lrange(self.actions_key(event["analysis_id"]), 0, -1)
        ]
        budget = (result.get("metrics") or {}).get("error_budget") or {}
        links = self._links(result)
        return Notification(
            analysis_id=event["analysis_id"],
            service=result.get("service") or "",
            namespace=result.get("namespace") or "",
            rollout=result.get("rollout") or result.get("service") or "",
            revision=result.get("revision") or "",
            verdict=event["verdict"],
            previous_verdict=event.get("previous") or None,
            score=result.get("score"),
            reasons=result.get("reasons") or [],
            error_budget={k: budget.get(k) for k in budget},
            requests={k: round(v or 0) for k, v in (result.get("requests") or {}).items()},
            actions=[
                {
                    **a,
                    "reason": a.get("reason") or "",
                    "to_weights": _flatten_weights(a.get("to_weights")),
                }
                for a in actions
            ],
            links=links,
        )

    def _timeline_link(self, argo: dict[str, Any]) -> dict[str, str]:
        """An Argo event has no analysis of its own: its message links to the revision's page."""
        if not self.public_url:
            return {}
        path = timeline_path(argo["namespace"], argo["rollout"], argo.get("revision") or None)
        return {"View timeline": self.public_url.rstrip("/") + path}

    def _links(self, result: dict[str, Any]) -> dict[str, str]:
        links: dict[str, str] = {}
        if self.public_url and result.get("analysis_id"):
            links["View analysis"] = report_url(self.public_url, result["analysis_id"])
        queries = (result.get("source") or {}).get("queries") or []
        if self.prometheus_graph_url and queries:
            from urllib.parse import urlencode

            params = urlencode({"g0.expr": queries[0], "g0.tab": "0", "g0.range_input": "1h"})
            links["Prometheus graph"] = f"{self.prometheus_graph_url.rstrip('/')}/graph?{params}"
        dashboard = self._actions_policy(result).notify.dashboard_url
        if dashboard:
            links["Dashboard"] = dashboard.format(
                service=result.get("service") or "",
                namespace=result.get("namespace") or "",
                rollout=result.get("rollout") or "",
            )
        return links


def _flatten_weights(weights: Any) -> dict[str, int] | None:
    """{route: {canary, stable}} → {"route canary": w, ...} for the chat summary."""
    if not isinstance(weights, dict):
        return None
    flat: dict[str, int] = {}
    for route, pair in weights.items():
        if isinstance(pair, dict):
            for side, weight in pair.items():
                flat[f"{route} {side}"] = int(weight)
    return flat


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def build_followup(
    settings: Any, client: redis.Redis, enqueue: Callable[[str, list[Any]], None]
) -> Followup:
    kube = None
    if settings.kube_in_cluster or settings.kubeconfig:
        cache: dict[str, Any] = {}

        def kube() -> Any:
            if "api" not in cache:
                cache["api"] = api_client_from_settings(
                    settings.kubeconfig, settings.kube_in_cluster, settings.kube_context
                )
            return cache["api"]

    targets = load_targets(settings.chat_targets_file)
    return Followup(
        redis=client,
        prefix=settings.key_prefix,
        policies=settings.policies(),
        targets=targets,
        enqueue=enqueue,
        kube=kube,
        prometheus_graph_url=settings.prometheus_graph_url,
        chat=ChatSender(
            client,
            settings.key_prefix,
            targets,
            httpx.Client(timeout=settings.notify_timeout_seconds),
            max_attempts=settings.notify_max_attempts,
            max_wait_seconds=settings.notify_max_wait_seconds,
        ),
        kube_timeout_seconds=settings.kube_timeout_seconds,
        public_url=settings.public_url,
        result_ttl_seconds=settings.result_ttl_seconds,
    )
