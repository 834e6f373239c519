"""Shift a canary's traffic through any router: read, compute, patch, retry on conflict.

The change is one RFC 6902 JSON Patch that first `test`s `metadata.resourceVersion` and the
weights we read, then `replace`s only those weights: a concurrent writer makes the API server
refuse it (422) instead of us overwriting their change, and we re-read and try again. Nothing
else in the object is sent, so routes and fields we do not own stay byte-for-byte identical.

Failures never raise: they come back as an `ActionRecord` with `status="failed"` and a reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from typing import Any, Literal, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, Field
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from urllib3.exceptions import HTTPError as TransportError

from worker.traffic.router import Failed, Goal, Router, RouteWeights

log = logging.getLogger("worker.traffic")

JSON_PATCH = "application/json-patch+json"
# Answers worth another read-compute-patch cycle: a concurrent write (409, or 422 from a failed
# `test`, told apart below), throttling and transient server errors.
RETRYABLE_STATUS = {409, 422, 429, 500, 502, 503, 504}

ActionType = Literal["traffic.rollback", "traffic.step"]
ActionStatus = Literal["applied", "unchanged", "dry_run", "failed"]
WeightsByRoute = dict[str, dict[str, int]]  # route name -> {"canary": w, "stable": w}


class ActionRecord(BaseModel):
    type: ActionType
    target: str  # "namespace/name"
    routes: list[str]
    from_weights: WeightsByRoute = Field(default_factory=dict)
    to_weights: WeightsByRoute = Field(default_factory=dict)
    status: ActionStatus
    reason: str | None = None
    time: str  # RFC 3339, UTC
    patch: list[dict[str, Any]] = Field(default_factory=list)
    attempts: int = 0


# Keeps the first absolute goals of an action and returns the goals kept (ours, or those an
# earlier run of the same action stored): a relative step redone after a crash must not step
# again from the weights its first run already wrote. Goals are canary percents per route.
PinGoals = Callable[[dict[str, int]], dict[str, int]]


class _TryAgain(Exception):
    """This attempt lost a race (or hit a transient error); re-read and retry."""


def rollback(
    api: client.ApiClient, target: Router, dry_run: bool = False, request_timeout: float = 10.0
) -> ActionRecord:
    """Send all traffic of the target routes back to stable (canary weight 0)."""
    return _shift(api, target, lambda _key, _now: 0, "traffic.rollback", dry_run, request_timeout)


def step_up(
    api: client.ApiClient,
    target: Router,
    step: int,
    max_weight: int,
    dry_run: bool = False,
    request_timeout: float = 10.0,
    pin: PinGoals | None = None,
) -> ActionRecord:
    """Raise each route's canary share by `step` percent, capped at `max_weight` (never lowers).

    With `pin`, the absolute shares computed from the first read are stored through it and
    every later run of the same action aims at those (see PinGoals)."""
    if step < 1 or not 0 <= max_weight <= 100:
        raise ValueError("step must be >= 1 and max_weight within 0..100")

    def goal(_key: str, now: Fraction) -> Fraction:
        return max(now, min(now + step, Fraction(max_weight)))

    return _shift(api, target, goal, "traffic.step", dry_run, request_timeout, pin=pin)


def shift_traffic(
    api: client.ApiClient,
    target: Router,
    canary_weight: int,
    *,
    action_type: str,
    dry_run: bool = False,
    max_attempts: int = 5,
    request_timeout: float = 10.0,
) -> ActionRecord:
    """Set the canary share of the target routes to `canary_weight` percent (stable: the rest)."""
    if not 0 <= canary_weight <= 100:
        raise ValueError(f"canary_weight must be within 0..100, not {canary_weight}")
    if action_type not in ("traffic.rollback", "traffic.step"):
        raise ValueError(f"unknown action type {action_type!r}")
    return _shift(
        api,
        target,
        lambda _key, _now: canary_weight,
        cast(ActionType, action_type),  # checked above
        dry_run,
        request_timeout,
        max_attempts,
    )


@dataclass
class _Attempts:
    """One action: state shared by its attempts (for the record and the retry decisions)."""

    objects: client.CustomObjectsApi
    target: Router
    goal_for: Goal
    timeout: float
    plans: list[RouteWeights]
    skipped: list[str]  # routes found without `routes` that could not be shifted
    patch: list[dict[str, Any]]
    attempts: int = 0
    last_error: str = ""
    rejected_revision: str | None = None  # resourceVersion a 422 was answered against
    rejected_message: str = ""
    patch_outcome_unknown: bool = False  # a PATCH may have landed without us seeing the answer
    # Canary weights of the last PATCH sent: after an unknown outcome, retries aim at these
    # instead of recomputing, so a relative step that did land is not applied twice.
    sent_goal: dict[str, Fraction] | None = None
    pin: PinGoals | None = None
    pinned: dict[str, int] | None = None  # absolute goals (percent) per route, once pinned

    def goal(self, key: str, current: Fraction) -> Fraction | int:
        if self.pinned is not None and key in self.pinned:
            return self.pinned[key]
        if self.patch_outcome_unknown and self.sent_goal and key in self.sent_goal:
            return self.sent_goal[key]
        return self.goal_for(key, current)

    def _call(self, verb: str, *args: Any, **kwargs: Any) -> Any:
        t = self.target
        method = getattr(self.objects, f"{verb}_namespaced_custom_object")
        return method(
            t.group, t.version, t.namespace, t.plural, t.name, *args,
            _request_timeout=self.timeout, **kwargs,
        )  # fmt: skip

    def read(self) -> dict[str, Any]:
        try:
            found = self._call("get")
        except ApiException as error:
            raise self._api_error("get", error) from None
        except (TransportError, OSError) as error:
            self.last_error = f"cannot reach the Kubernetes API: {error}"
            raise _TryAgain from None
        if not isinstance(found, dict):
            raise Failed(f"the API answered a non-object for {self.target.kind} {self.target.ref}")
        return found

    def send(self, patch: list[dict[str, Any]], revision: str) -> None:
        try:
            # The content type matters: the client would otherwise send a merge patch.
            self._call("patch", patch, _content_type=JSON_PATCH)
        except ApiException as error:
            if error.status == 422:
                self.rejected_revision, self.rejected_message = revision, _message(error)
            if error.status is not None and error.status >= 500:
                self.patch_outcome_unknown = True
            raise self._api_error("patch", error) from None
        except (TransportError, OSError) as error:
            self.patch_outcome_unknown = True
            self.last_error = f"no answer from the Kubernetes API to our PATCH: {error}"
            raise _TryAgain from None

    def _api_error(self, verb: str, error: ApiException) -> Exception:
        target, status = self.target, error.status
        if status == 403:
            return Failed(
                f"forbidden: the service account may not {verb} {target.plural} in "
                f"{target.namespace} (RBAC): {_message(error)}"
            )
        if status == 404:
            return Failed(
                f"not found: {target.kind} {target.ref} does not exist "
                f"(or {target.api_version} is not served)"
            )
        if status == 401:
            return Failed("unauthorized: the Kubernetes API rejected our credentials (401)")
        self.last_error = f"HTTP {status} on {verb}: {_message(error)}"
        if status in RETRYABLE_STATUS:
            return _TryAgain()
        return Failed(f"Kubernetes API error: {self.last_error}")

    def attempt(self, dry_run: bool) -> ActionStatus:
        self.attempts += 1
        obj = self.read()
        revision = str(obj.get("metadata", {}).get("resourceVersion", ""))
        if revision and revision == self.rejected_revision:
            # Nobody wrote since our patch was refused: the refusal was about the patch itself.
            raise Failed(f"invalid: the API server refused the patch: {self.rejected_message}")
        self.plans, self.skipped = self.target.read_weights(obj, self.goal)
        if self.pin is not None and self.pinned is None:
            try:
                self.pinned = self.pin({plan.key: round(_share(plan)) for plan in self.plans})
            except Exception as error:  # no patch whose redo could land elsewhere
                raise Failed(f"cannot store the target weights: {error}") from None
            self.plans, self.skipped = self.target.read_weights(obj, self.goal)
        if all(plan.old == plan.new for plan in self.plans):
            self.patch = []
            return "applied" if self.patch_outcome_unknown else "unchanged"
        self.patch = self.target.weight_patch(self.plans, revision)
        if dry_run:
            return "dry_run"
        self.sent_goal = {plan.key: _share(plan) for plan in self.plans}
        self.send(self.patch, revision)
        return "applied"


def _share(plan: RouteWeights) -> Fraction:
    """The canary percent a plan sets (what a retry after an unknown outcome aims at again)."""
    return Fraction(plan.new[0] * 100, plan.total) if plan.total else Fraction(0)


def _shift(
    api: client.ApiClient,
    target: Router,
    goal: Goal,
    action_type: ActionType,
    dry_run: bool,
    request_timeout: float,
    max_attempts: int = 5,
    pin: PinGoals | None = None,
) -> ActionRecord:
    shift = _Attempts(client.CustomObjectsApi(api), target, goal, request_timeout, [], [], [])
    shift.pin = pin
    retrying = Retrying(
        stop=stop_after_attempt(max(1, max_attempts)),
        # Small and jittered: a rollback should land before Argo's own abort reconciles.
        wait=wait_exponential(multiplier=0.05, max=1.0) + wait_random(0, 0.05),
        retry=retry_if_exception_type(_TryAgain),
        reraise=True,
    )
    reason: str | None = None
    try:
        status: ActionStatus = retrying(shift.attempt, dry_run)
    except Failed as failure:
        status, reason = "failed", str(failure)
    except _TryAgain:
        status = "failed"
        reason = (
            f"gave up after {shift.attempts} attempts: {target.kind} {target.ref} kept "
            f"changing under us or the API kept failing (last: {shift.last_error or 'conflict'})"
        )
    if status != "failed":
        notes = [f"left alone: {note}" for note in shift.skipped]
        if status == "applied" and not shift.patch:
            notes.append("an earlier PATCH got no answer; a re-read shows the target weights")
        reason = "; ".join(notes) or None
    record = ActionRecord(
        type=action_type,
        target=target.ref,
        routes=[plan.key for plan in shift.plans] or list(target.routes or []),
        from_weights={plan.key: _weights(plan.old) for plan in shift.plans},
        to_weights={plan.key: _weights(plan.new) for plan in shift.plans},
        status=status,
        reason=reason,
        time=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        patch=shift.patch,
        attempts=shift.attempts,
    )
    level = logging.WARNING if status == "failed" else logging.INFO
    what = reason if status == "failed" or not shift.plans else target.describe(shift.plans)
    log.log(level, "%s %s: %s", action_type, status, what)
    return record


def _weights(pair: tuple[int, int]) -> dict[str, int]:
    return {"canary": pair[0], "stable": pair[1]}


def _message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(error.reason or error.status)
