"""Shift Istio VirtualService weights between a canary and its stable destination.

The change is one RFC 6902 JSON Patch that first `test`s `metadata.resourceVersion` and the
weights we read, then `replace`s only those weights: a concurrent writer makes the API server
refuse it (422) instead of us overwriting their change, and we re-read and try again. Nothing
else in the object is sent, so routes and fields we do not own stay byte-for-byte identical.

Weights inside one route: the canary gets the requested weight, the stable destination the rest;
any other destination in the route (e.g. a legacy version) keeps its weight, so the canary and
stable share `100 - others` and the canary weight is capped at that share.

Failures never raise: they come back as an `ActionRecord` with `status="failed"` and a reason.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)
from urllib3.exceptions import HTTPError as TransportError

log = logging.getLogger(__name__)

ISTIO_GROUP = "networking.istio.io"
ISTIO_VERSIONS = ("v1", "v1beta1", "v1alpha3")
PLURAL = "virtualservices"
JSON_PATCH = "application/json-patch+json"
# Answers worth another read-compute-patch cycle: a concurrent write (409, or 422 from a failed
# `test`, told apart below), throttling and transient server errors.
RETRYABLE_STATUS = {409, 422, 429, 500, 502, 503, 504}

ActionType = Literal["traffic.rollback", "traffic.step"]
ActionStatus = Literal["applied", "unchanged", "dry_run", "failed"]
RouteWeights = dict[str, dict[str, int]]  # route name -> {"canary": w, "stable": w}


class Destination(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(min_length=1)
    subset: str | None = None

    def matches(self, destination: Any) -> bool:
        """Exact host and subset match: "reviews" and its FQDN are different destinations."""
        return (
            isinstance(destination, dict)
            and destination.get("host") == self.host
            and destination.get("subset") == self.subset
        )

    def __str__(self) -> str:
        return f"{self.host}/{self.subset}" if self.subset else self.host


class TrafficTarget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    virtual_service: str = Field(min_length=1)
    namespace: str = Field(min_length=1)
    # Names of `spec.http[]` routes; None = every http route that sends traffic to the canary
    # or the stable destination (routes to other services are left alone).
    routes: list[str] | None = None
    canary: Destination
    stable: Destination
    api_version: str = f"{ISTIO_GROUP}/v1"

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError("routes must be a non-empty list of distinct route names (or omitted)")
        return value

    @field_validator("api_version")
    @classmethod
    def _api_version(cls, value: str) -> str:
        group, _, version = value.partition("/")
        if group != ISTIO_GROUP or version not in ISTIO_VERSIONS:
            allowed = ", ".join(f"{ISTIO_GROUP}/{v}" for v in ISTIO_VERSIONS)
            raise ValueError(f"api_version must be one of {allowed}")
        return value

    @model_validator(mode="after")
    def _distinct(self) -> TrafficTarget:
        if self.canary == self.stable:
            raise ValueError("canary and stable must be different destinations")
        return self

    @property
    def version(self) -> str:
        return self.api_version.partition("/")[2]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.virtual_service}"


class ActionRecord(BaseModel):
    type: ActionType
    target: str  # "namespace/name"
    routes: list[str]
    from_weights: RouteWeights = Field(default_factory=dict)
    to_weights: RouteWeights = Field(default_factory=dict)
    status: ActionStatus
    reason: str | None = None
    time: str  # RFC 3339, UTC
    patch: list[dict[str, Any]] = Field(default_factory=list)
    attempts: int = 0


@dataclass(frozen=True)
class _RoutePlan:
    key: str  # route name, or "http[i]" for an unnamed route
    index: int
    canary_index: int
    stable_index: int
    old: tuple[int, int]  # (canary, stable)
    new: tuple[int, int]


class _Failed(Exception):
    """Stop with status "failed"; the message is the user-facing reason."""


class _TryAgain(Exception):
    """This attempt lost a race (or hit a transient error); re-read and retry."""


def api_client_from_settings(
    kubeconfig: str | None, in_cluster: bool, context: str | None
) -> client.ApiClient:
    """In-cluster service account, or a kubeconfig file (None: $KUBECONFIG or ~/.kube/config)."""
    if in_cluster:
        configuration = client.Configuration()
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return client.ApiClient(configuration)
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, context=context
    )
    return api


def rollback(
    api: client.ApiClient,
    target: TrafficTarget,
    dry_run: bool = False,
    request_timeout: float = 10.0,
) -> ActionRecord:
    """Send all traffic of the target routes back to stable (canary weight 0)."""
    return _shift(
        api,
        target,
        lambda _current: 0,
        "traffic.rollback",
        dry_run=dry_run,
        request_timeout=request_timeout,
    )


# Keeps the first absolute goals of an action and returns the goals kept (ours, or those an
# earlier run of the same action stored): a relative step redone after a crash must not step
# again from the weights its first run already wrote.
PinGoals = Callable[[dict[str, int]], dict[str, int]]


def step_up(
    api: client.ApiClient,
    target: TrafficTarget,
    step: int,
    max_weight: int,
    dry_run: bool = False,
    request_timeout: float = 10.0,
    pin: PinGoals | None = None,
) -> ActionRecord:
    """Raise each route's canary weight by `step`, capped at `max_weight`; never lowers it.

    With `pin`, the absolute weights computed from the first read are stored through it and
    every later run of the same action aims at those (see PinGoals)."""
    if step < 1 or not 0 <= max_weight <= 100:
        raise ValueError("step must be >= 1 and max_weight within 0..100")
    return _shift(
        api,
        target,
        lambda current: max(current, min(current + step, max_weight)),
        "traffic.step",
        dry_run=dry_run,
        request_timeout=request_timeout,
        pin=pin,
    )


def shift_traffic(
    api: client.ApiClient,
    target: TrafficTarget,
    canary_weight: int,
    *,
    action_type: str,
    dry_run: bool = False,
    max_attempts: int = 5,
    request_timeout: float = 10.0,
) -> ActionRecord:
    """Set the canary weight of the target routes to `canary_weight` (stable gets the rest)."""
    if not 0 <= canary_weight <= 100:
        raise ValueError(f"canary_weight must be within 0..100, not {canary_weight}")
    if action_type not in ("traffic.rollback", "traffic.step"):
        raise ValueError(f"unknown action type {action_type!r}")
    return _shift(
        api,
        target,
        lambda _current: canary_weight,
        cast(ActionType, action_type),  # checked above
        dry_run=dry_run,
        max_attempts=max_attempts,
        request_timeout=request_timeout,
    )


class _Shift:
    """One action: state shared by its attempts (for the record and the retry decisions)."""

    def __init__(
        self,
        api: client.ApiClient,
        target: TrafficTarget,
        weight_for: Callable[[int], int],
        request_timeout: float,
        pin: PinGoals | None = None,
    ) -> None:
        self.objects = client.CustomObjectsApi(api)
        self.target = target
        self.weight_for = weight_for
        self.pin = pin
        self.pinned: dict[str, int] | None = None  # absolute goals per route, once pinned
        self.timeout = request_timeout
        self.plans: list[_RoutePlan] = []
        self.skipped: list[str] = []  # routes found without `routes` that could not be shifted
        self.patch: list[dict[str, Any]] = []
        self.attempts = 0
        self.last_error = ""
        self.rejected_revision: str | None = None  # resourceVersion a 422 was answered against
        self.rejected_message = ""
        self.patch_outcome_unknown = False  # a PATCH may have landed without us seeing the answer
        # Canary weights of the last PATCH sent: after an unknown outcome, retries aim at these
        # instead of recomputing, so a relative step that did land is not applied twice.
        self.sent_goal: dict[str, int] = {}

    def goal(self, key: str, current: int) -> int:
        if self.pinned is not None and key in self.pinned:
            return self.pinned[key]
        if self.patch_outcome_unknown and key in self.sent_goal:
            return self.sent_goal[key]
        return self.weight_for(current)

    def read(self) -> dict[str, Any]:
        target = self.target
        try:
            found = self.objects.get_namespaced_custom_object(
                ISTIO_GROUP,
                target.version,
                target.namespace,
                PLURAL,
                target.virtual_service,
                _request_timeout=self.timeout,
            )
        except ApiException as error:
            raise self._api_error("get", error) from None
        except (TransportError, OSError) as error:
            self.last_error = f"cannot reach the Kubernetes API: {error}"
            raise _TryAgain from None
        if not isinstance(found, dict):
            raise _Failed(f"the API answered a non-object for VirtualService {target.ref}")
        return found

    def send(self, patch: list[dict[str, Any]], revision: str) -> None:
        target = self.target
        try:
            self.objects.patch_namespaced_custom_object(
                ISTIO_GROUP,
                target.version,
                target.namespace,
                PLURAL,
                target.virtual_service,
                patch,
                _content_type=JSON_PATCH,  # the client would otherwise send a merge patch
                _request_timeout=self.timeout,
            )
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
            return _Failed(
                f"forbidden: the service account may not {verb} virtualservices in "
                f"{target.namespace} (RBAC): {_message(error)}"
            )
        if status == 404:
            return _Failed(
                f"not found: VirtualService {target.ref} does not exist "
                f"(or {target.api_version} is not served)"
            )
        if status == 401:
            return _Failed("unauthorized: the Kubernetes API rejected our credentials (401)")
        self.last_error = f"HTTP {status} on {verb}: {_message(error)}"
        if status in RETRYABLE_STATUS:
            return _TryAgain()
        return _Failed(f"Kubernetes API error: {self.last_error}")

    def attempt(self, dry_run: bool) -> ActionStatus:
        self.attempts += 1
        virtual_service = self.read()
        revision = str(virtual_service.get("metadata", {}).get("resourceVersion", ""))
        if revision and revision == self.rejected_revision:
            # Nobody wrote since our patch was refused: the refusal was about the patch itself.
            raise _Failed(f"invalid: the API server refused the patch: {self.rejected_message}")
        self.plans, self.skipped = _plan_routes(virtual_service, self.target, self.goal)
        if self.pin is not None and self.pinned is None:
            try:
                self.pinned = self.pin({plan.key: plan.new[0] for plan in self.plans})
            except Exception as error:  # no patch whose redo could land elsewhere
                raise _Failed(f"cannot store the target weights: {error}") from None
            self.plans, self.skipped = _plan_routes(virtual_service, self.target, self.goal)
        if all(plan.old == plan.new for plan in self.plans):
            self.patch = []
            return "applied" if self.patch_outcome_unknown else "unchanged"
        self.patch = _json_patch(virtual_service, self.plans, revision)
        if dry_run:
            return "dry_run"
        self.sent_goal = {plan.key: plan.new[0] for plan in self.plans}
        self.send(self.patch, revision)
        return "applied"


def _shift(
    api: client.ApiClient,
    target: TrafficTarget,
    weight_for: Callable[[int], int],
    action_type: ActionType,
    *,
    dry_run: bool,
    max_attempts: int = 5,
    request_timeout: float = 10.0,
    pin: PinGoals | None = None,
) -> ActionRecord:
    shift = _Shift(api, target, weight_for, request_timeout, pin)
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
    except _Failed as failure:
        status, reason = "failed", str(failure)
    except _TryAgain:
        status = "failed"
        reason = (
            f"gave up after {shift.attempts} attempts: VirtualService {target.ref} kept "
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
    log.log(level, "%s %s: %s %s", action_type, target.ref, status, reason or record.to_weights)
    return record


def _weights(pair: tuple[int, int]) -> dict[str, int]:
    return {"canary": pair[0], "stable": pair[1]}


def _message(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "")["message"])
    except (ValueError, KeyError, TypeError):
        return str(error.reason or error.status)


def _select_routes(http: list[Any], target: TrafficTarget) -> list[tuple[str, int]]:
    """(key, index) of the http routes to shift."""
    names = [route.get("name") if isinstance(route, dict) else None for route in http]
    if target.routes is None:
        ours = [target.canary, target.stable]
        selected = [
            (names[i] or f"http[{i}]", i)
            for i, route in enumerate(http)
            if isinstance(route, dict)
            and any(d.matches(entry.get("destination")) for entry in _entries(route) for d in ours)
        ]
        if not selected:
            raise _Failed(
                f"no http route of VirtualService {target.ref} sends traffic to "
                f"{target.canary} or {target.stable}"
            )
        return selected
    known = ", ".join(name for name in names if name) or "none named"
    selected = []
    for name in target.routes:
        indexes = [i for i, candidate in enumerate(names) if candidate == name]
        if not indexes:
            raise _Failed(
                f"route {name!r} not found in VirtualService {target.ref} (http routes: {known})"
            )
        if len(indexes) > 1:
            raise _Failed(f"route name {name!r} is used by several http routes of {target.ref}")
        selected.append((name, indexes[0]))
    return selected


def _entries(route: dict[str, Any]) -> list[dict[str, Any]]:
    entries = route.get("route") or []
    return [entry for entry in entries if isinstance(entry, dict)]


def _weight(entry: dict[str, Any], key: str) -> int:
    value = entry.get("weight", 0)  # Istio treats a missing weight as 0 in a split route
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Failed(f"route {key!r} has a non-integer weight {value!r}")
    return value


def _plan_routes(
    virtual_service: dict[str, Any], target: TrafficTarget, goal: Callable[[str, int], int]
) -> tuple[list[_RoutePlan], list[str]]:
    """The routes to shift, and why others found without `routes` were left alone."""
    http = (virtual_service.get("spec") or {}).get("http") or []
    if not isinstance(http, list):
        raise _Failed(f"VirtualService {target.ref} has a malformed spec.http")
    plans, skipped = [], []
    for key, index in _select_routes(http, target):
        entries = http[index].get("route") or []
        found: dict[str, int] = {}
        for role, destination in (("canary", target.canary), ("stable", target.stable)):
            matches = [
                j
                for j, entry in enumerate(entries)
                if isinstance(entry, dict) and destination.matches(entry.get("destination"))
            ]
            problem = f"route {key!r} has %s {role} destination {destination}"
            if len(matches) > 1:
                raise _Failed(f"{problem % 'more than one'} in VirtualService {target.ref}")
            if not matches and target.routes is not None:
                raise _Failed(f"{problem % 'no'} in VirtualService {target.ref}")
            if not matches:
                # Found without `routes`, the route holds only one side (e.g. Argo's
                # setHeaderRoute, canary only): it has no weights to move, so leave it alone.
                skipped.append(problem % "no")
                break
            found[role] = matches[0]
        if len(found) < 2:
            continue
        old = (_weight(entries[found["canary"]], key), _weight(entries[found["stable"]], key))
        others = sum(
            _weight(entry, key)
            for j, entry in enumerate(entries)
            if j not in found.values() and isinstance(entry, dict)
        )
        room = 100 - others  # what canary + stable may share
        if room < 0:
            raise _Failed(f"route {key!r}: other destinations already weigh {others} > 100")
        canary = min(goal(key, old[0]), room)
        plans.append(
            _RoutePlan(key, index, found["canary"], found["stable"], old, (canary, room - canary))
        )
    if not plans:
        raise _Failed(
            f"no http route of VirtualService {target.ref} to shift: {'; '.join(skipped)}"
        )
    return plans, skipped


def _json_patch(
    virtual_service: dict[str, Any], plans: list[_RoutePlan], revision: str
) -> list[dict[str, Any]]:
    """Tests first (resourceVersion, each destination and its old weight), then the writes."""
    http = virtual_service["spec"]["http"]
    tests: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": revision}
    ]
    writes: list[dict[str, Any]] = []
    for plan in plans:
        pairs = (
            (plan.canary_index, plan.old[0], plan.new[0]),
            (plan.stable_index, plan.old[1], plan.new[1]),
        )
        for entry_index, old, new in pairs:
            if old == new:
                continue
            entry = http[plan.index]["route"][entry_index]
            base = f"/spec/http/{plan.index}/route/{entry_index}"
            tests.append(
                {"op": "test", "path": f"{base}/destination", "value": entry["destination"]}
            )
            if "weight" in entry:
                tests.append({"op": "test", "path": f"{base}/weight", "value": old})
                writes.append({"op": "replace", "path": f"{base}/weight", "value": new})
            else:
                writes.append({"op": "add", "path": f"{base}/weight", "value": new})
    return tests + writes
