"""What a caller may ask for, validated before anything is enqueued or queried.

Label values from a request end up inside PromQL string literals. They are held to a narrow
character set first (Kubernetes names and pod-template hashes fit easily), then escaped anyway.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from analysis.durations import parse_duration, parse_time
from analysis.policy import OverrideError, Policy, PolicySet

LABEL_VALUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,252}$"
LabelValue = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=253)]
Identity = Annotated[str, StringConstraints(pattern=LABEL_VALUE_PATTERN, max_length=253)]
PolicyName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")]
DurationText = Annotated[str, StringConstraints(pattern=r"^[0-9a-z]{1,20}$")]
TimeText = Annotated[str, StringConstraints(max_length=40, pattern=r"^[0-9A-Za-z:.+-]{1,40}$")]
OverrideName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,40}$")]

# Allowed clock skew for `end`: a replay of "now" from a slightly fast clock is not an error.
FUTURE_SKEW_SECONDS = 60.0
# An `end` at most this far before the request's arrival still means "now": the analysis is live
# (it may act on traffic and notify). Older ends are replays of the past, which never act.
LIVE_SKEW_SECONDS = 60.0


class TrafficOverride(BaseModel):
    """Per-request traffic settings, honoured only where the policy allows them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The descriptions are part of the published OpenAPI document: left as they were.
    virtual_service: Identity | None = Field(None, description="VirtualService name")
    namespace: Identity | None = Field(None, description="VirtualService namespace")
    routes: list[Identity] | None = Field(None, max_length=20, description="http route names")
    dry_run: bool | None = Field(None, description="record the patch without sending it")
    # Gateway API policies (actions.traffic.kind: gateway-api): namespace and routes (rule
    # names) as above.
    http_route: Identity | None = Field(None, description="HTTPRoute name (gateway-api policies)")

    def settings(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class AnalyzeRequest(BaseModel):
    """The body of POST/PUT /v1/analyze, or the query of GET /v1/analyze."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    service: LabelValue = Field(description="service label value, e.g. checkout")
    namespace: LabelValue | None = Field(None, description="namespace label value")
    canary: LabelValue = Field(description="selector value of the canary (pod-template hash)")
    baseline: LabelValue = Field(description="selector value of the baseline (stable)")
    policy: PolicyName = Field("default", description="policy name")
    window: DurationText | None = Field(None, description="Prometheus duration; policy default")
    end: TimeText | None = Field(None, description="RFC 3339 end of the window; default now")
    rollout: Identity | None = Field(None, description="Rollout name, for dedup and actions")
    revision: Identity | None = Field(None, description="Rollout revision, for dedup and actions")
    overrides: dict[OverrideName, float] = Field(
        default_factory=dict, max_length=32, description="numeric thresholds of the policy"
    )
    traffic: TrafficOverride | None = Field(
        None, description="traffic action settings, where the policy allows them"
    )


class RequestError(ValueError):
    """A request that cannot be analysed; `field` names the culprit for the caller."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class AnalysisSpec:
    """A fully resolved analysis: everything the computation needs, nothing it must look up."""

    service: str
    namespace: str | None
    canary: str
    baseline: str
    policy: Policy
    window_seconds: float
    end: float | None  # None: "the latest window", fixed by whoever runs it
    rollout: str | None
    revision: str | None
    overrides: dict[str, float]
    traffic: dict[str, Any] | None = None
    # Decided once, when the request arrived (see `is_live`): only a live analysis acts.
    # False by default: a spec built without that decision must never touch the present.
    live: bool = False

    def identity(self) -> str:
        """Two requests are identical when every field that shapes the computation or its
        follow-up actions is equal (explicit `end` included; an unspecified `end` means
        "latest", so repeated polls of the latest window are identical)."""
        canonical = json.dumps(
            {
                "service": self.service,
                "namespace": self.namespace,
                "canary": self.canary,
                "baseline": self.baseline,
                "policy": self.policy.name,
                "window": self.window_seconds,
                "end": self.end,
                "rollout": self.rollout,
                "revision": self.revision,
                "overrides": sorted(self.overrides.items()),
                "traffic": self.traffic,
                # The same window asked again later is a replay: a new analysis that never acts.
                "live": self.live,
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "namespace": self.namespace,
            "canary": self.canary,
            "baseline": self.baseline,
            "policy": self.policy.name,
            "window_seconds": self.window_seconds,
            "end": self.end,
            "rollout": self.rollout,
            "revision": self.revision,
            "overrides": self.overrides,
            "traffic": self.traffic,
            "live": self.live,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], policies: PolicySet) -> AnalysisSpec:
        base = policies.get(str(data["policy"]))
        if base is None:
            raise RequestError("policy", f"unknown policy {data['policy']!r}")
        return cls(
            service=data["service"],
            namespace=data.get("namespace"),
            canary=data["canary"],
            baseline=data["baseline"],
            policy=base.with_overrides(dict(data.get("overrides") or {})),
            window_seconds=float(data["window_seconds"]),
            end=None if data.get("end") is None else float(data["end"]),
            rollout=data.get("rollout"),
            revision=data.get("revision"),
            overrides=dict(data.get("overrides") or {}),
            traffic=data.get("traffic"),
            live=data.get("live") is True,
        )


def parse_request(data: Any) -> AnalyzeRequest:
    """Validate raw JSON; raises RequestError naming the first bad field."""
    if not isinstance(data, dict):
        raise RequestError("body", "must be a JSON object")
    try:
        return AnalyzeRequest.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc) from None


def _first_error(exc: ValidationError) -> RequestError:
    first = exc.errors()[0]
    # pydantic marks a bad dict key with a "[key]" step; the caller knows it by its name.
    field = ".".join(str(part) for part in first["loc"] if part != "[key]") or "body"
    kind = first["type"]
    if kind == "string_pattern_mismatch":
        message = "contains characters that are not allowed (letters, digits and ._:/@+=- only)"
    elif kind == "extra_forbidden":
        message = "is not a known field"
    elif kind == "missing":
        message = "is required"
    else:
        message = str(first["msg"])
    return RequestError(field, message)


def resolve(
    request: AnalyzeRequest, policies: PolicySet, *, now: float | None = None
) -> AnalysisSpec:
    """Turn a validated request into an AnalysisSpec: policy found, window and end checked."""
    current = time.time() if now is None else now
    base = policies.get(request.policy)
    if base is None:
        raise RequestError(
            "policy", f"unknown policy {request.policy!r}; known: {policies.names()}"
        )
    if request.canary == request.baseline:
        raise RequestError("baseline", "must differ from canary")
    try:
        policy = base.with_overrides(dict(request.overrides))
    except OverrideError as exc:
        raise RequestError(f"overrides.{exc.name}", exc.message) from None
    for name, value in request.overrides.items():
        if not math.isfinite(value):
            raise RequestError(f"overrides.{name}", "must be a finite number")
    traffic = request.traffic.settings() if request.traffic else None
    if traffic and not _allows_traffic_override(policy):
        raise RequestError("traffic", f"policy {policy.name!r} does not allow per-request traffic")
    if traffic:
        _check_router_object(traffic, policy)
    window_text = request.window or policy.window
    try:
        window = parse_duration(window_text)
    except ValueError as exc:
        raise RequestError("window", str(exc)) from None
    if window > parse_duration(policy.max_window):
        raise RequestError(
            "window", f"{window_text} is longer than the policy's {policy.max_window}"
        )
    if window < 60 or window != int(window):
        raise RequestError("window", "must be whole seconds and at least 1m")
    end = None
    if request.end is not None:
        try:
            end = parse_time(request.end, now=current)
        except ValueError as exc:
            raise RequestError("end", str(exc)) from None
        if end > current + FUTURE_SKEW_SECONDS:
            raise RequestError("end", "is in the future")
        if end < 0:
            raise RequestError("end", "is before 1970")
    return AnalysisSpec(
        service=request.service,
        namespace=request.namespace,
        canary=request.canary,
        baseline=request.baseline,
        policy=policy,
        window_seconds=window,
        end=end,
        rollout=request.rollout,
        revision=request.revision,
        overrides=dict(request.overrides),
        traffic=traffic,
        live=is_live(end, current),
    )


def is_live(end: float | None, arrived: float) -> bool:
    """A window ending "now": no `end`, or one within LIVE_SKEW_SECONDS of the arrival time."""
    return end is None or end >= arrived - LIVE_SKEW_SECONDS


def _allows_traffic_override(policy: Policy) -> bool:
    traffic = policy.actions.get("traffic")
    return isinstance(traffic, dict) and traffic.get("allow_request_override") is True


# The object a request may name, per router kind of the policy's `actions.traffic.kind`.
_ROUTER_OBJECT = {"istio": "virtual_service", "gateway-api": "http_route"}


def _check_router_object(traffic: dict[str, Any], policy: Policy) -> None:
    kind = str(policy.actions["traffic"].get("kind", "istio"))
    for other_kind, field in _ROUTER_OBJECT.items():
        if field in traffic and other_kind != kind:
            wanted = _ROUTER_OBJECT.get(kind, "the routing object")
            raise RequestError(
                f"traffic.{field}",
                f"policy {policy.name!r} routes with {kind}: name its {wanted} instead",
            )


_OVERRIDE_PREFIX = re.compile(r"^overrides\.(.+)$")


def request_from_query(params: list[tuple[str, str]]) -> dict[str, Any]:
    """GET /v1/analyze?service=…&overrides.slo=0.99 → the same dict a POST body would carry."""
    data: dict[str, Any] = {}
    overrides: dict[str, Any] = {}
    for key, value in params:
        match = _OVERRIDE_PREFIX.match(key)
        target, name = (overrides, match.group(1)) if match else (data, key)
        if name in target:
            raise RequestError(key, "is given more than once")
        if match:
            try:
                target[name] = float(value)
            except ValueError:
                raise RequestError(key, "must be a number") from None
        else:
            target[name] = value
    if overrides:
        data["overrides"] = overrides
    return data
