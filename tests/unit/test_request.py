"""Request validation: every bad field is named, nothing hostile gets through."""

from __future__ import annotations

import pytest

from analysis.durations import format_time
from analysis.policy import PolicySet
from analysis.queries import build_query, promql_string
from analysis.request import (
    LIVE_SKEW_SECONDS,
    AnalysisSpec,
    RequestError,
    parse_request,
    request_from_query,
    resolve,
)

NOW = 1_800_000_000.0
POLICIES = PolicySet.from_yaml(
    """
policies:
  istio-fast:
    preset: istio
    window: 2m
    thresholds: {slo: 0.99}
  steerable:
    actions:
      traffic:
        virtual_service: "{service}"
        canary: {host: checkout, subset: canary}
        stable: {host: checkout, subset: stable}
        allow_request_override: true
"""
)
GOOD = {
    "service": "checkout",
    "namespace": "shop",
    "canary": "6d4f8b7c9a",
    "baseline": "5c8d7e6f4b",
}


def resolved(**changes):
    return resolve(parse_request(GOOD | changes), POLICIES, now=NOW)


def field_of(data) -> str:
    with pytest.raises(RequestError) as caught:
        resolve(parse_request(data), POLICIES, now=NOW)
    return caught.value.field


def test_defaults_come_from_the_policy():
    spec = resolved()
    assert spec.policy.name == "default"
    assert spec.window_seconds == 300
    assert spec.end is None
    assert resolved(policy="istio-fast").window_seconds == 120


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"service": None}, "service"),
        ({"policy": "nope"}, "policy"),
        ({"window": "5 minutes"}, "window"),
        ({"window": "48h"}, "window"),
        ({"window": "0s"}, "window"),
        ({"end": "2099-01-01T00:00:00Z"}, "end"),
        ({"end": "yesterday"}, "end"),
        ({"end": "2026-01-01T00:00:00"}, "end"),
        ({"overrides": {"bogus": 1}}, "overrides.bogus"),
        ({"overrides": {"slo": 1.5}}, "overrides.slo"),
        ({"overrides": {"alpha": "x"}}, "overrides.alpha"),
        ({"extra": 1}, "extra"),
        ({"baseline": "6d4f8b7c9a"}, "baseline"),
    ],
)
def test_bad_fields_are_named(changes, field):
    data = {k: v for k, v in (GOOD | changes).items() if v is not None}
    assert field_of(data) == field


@pytest.mark.parametrize(
    "hostile",
    [
        '"} or vector(1)',
        'a"b',
        "a{b}",
        "line\nbreak",
        "x" * 10_000,
        "checkout\\",
        " checkout",
        "chéckout",  # non-ASCII look-alikes never reach a query
        "\u0441heckout",  # Cyrillic es
        "",
    ],
)
@pytest.mark.parametrize("field", ["service", "namespace", "canary", "baseline", "rollout"])
def test_hostile_label_values_are_rejected(field, hostile):
    assert field_of(GOOD | {field: hostile}) == field


def test_end_accepts_rfc3339_and_relative_forms():
    assert resolved(end="2026-11-22T10:00:00Z").end == pytest.approx(1795341600.0)
    assert resolved(end="-2h").end == NOW - 7200


@pytest.mark.parametrize(
    ("end", "live"),
    [
        (None, True),  # "the latest window": Argo's poll
        ("-30s", True),  # a caller's clock a little behind ours
        (format_time(NOW + 30), True),  # or a little ahead
        (format_time(NOW - LIVE_SKEW_SECONDS), True),
        (format_time(NOW - LIVE_SKEW_SECONDS - 1), False),
        ("-2h", False),  # a replay of the past
    ],
)
def test_live_is_decided_from_the_arrival_time(end, live):
    assert resolved(**({} if end is None else {"end": end})).live is live


def test_live_travels_with_the_spec_and_tells_a_replay_from_the_live_window():
    live, replay = resolved(end=format_time(NOW)), resolved(end=format_time(NOW - 3600))
    for spec in (live, replay):
        assert AnalysisSpec.from_json(spec.to_json(), POLICIES) == spec
    # The same window asked again once it is past is a new analysis, one that cannot act.
    late = resolve(parse_request(GOOD | {"end": format_time(NOW)}), POLICIES, now=NOW + 3600)
    assert (late.end, late.live) == (live.end, False)
    assert late.identity() != live.identity()
    # A spec stored without the decision is a replay: it never acts.
    stored = live.to_json()
    del stored["live"]
    assert AnalysisSpec.from_json(stored, POLICIES).live is False


def test_get_query_parameters_map_to_the_body_fields():
    data = request_from_query(list((GOOD | {"overrides.slo": "0.9995"}).items()))
    assert data["overrides"] == {"slo": 0.9995}
    assert resolve(parse_request(data), POLICIES, now=NOW).policy.thresholds.slo == 0.9995
    with pytest.raises(RequestError) as caught:
        request_from_query([("overrides.slo", "high")])
    assert caught.value.field == "overrides.slo"
    with pytest.raises(RequestError) as caught:
        request_from_query([("service", "a"), ("service", "b")])
    assert caught.value.field == "service"


def test_identity_ignores_nothing_that_shapes_the_answer():
    base = resolved().identity()
    assert resolved().identity() == base
    assert resolved(window="10m").identity() != base
    assert resolved(overrides={"slo": 0.9995}).identity() != base
    assert resolved(revision="3").identity() != base


def test_one_expression_with_only_escaped_literals():
    spec = resolved()
    expr = build_query(spec).expr
    # Each side in each half: now, `offset` the window, and increase() for new or reset series.
    assert expr.count('rollouts_pod_template_hash="6d4f8b7c9a"') == 6
    assert expr.count('rollouts_pod_template_hash="5c8d7e6f4b"') == 6
    assert expr.count(" offset 5m") == 4 and expr.count("[5m])") == 4
    assert "=~" not in expr
    assert "sum by (rollouts_pod_template_hash, code)" in expr
    assert "sum by (rollouts_pod_template_hash, le)" in expr


def test_a_live_interval_is_counted_over_its_own_length():
    expr = build_query(resolved(), 60).expr
    assert expr.count(" offset 1m") == 4 and "[5m]" not in expr and "[1m]" in expr


def test_istio_preset_names_and_fixed_matchers():
    expr = build_query(resolved(policy="istio-fast")).expr
    assert 'reporter="destination"' in expr
    assert 'destination_workload="checkout"' in expr
    assert "istio_request_duration_milliseconds_bucket" in expr
    assert "[2m]" in expr


def test_promql_string_escapes_everything_that_could_end_the_literal():
    assert promql_string('a"} or vector(1) #') == '"a\\"} or vector(1) #"'
    assert promql_string("back\\slash\nnl") == '"back\\\\slash\\nnl"'
    with pytest.raises(ValueError):
        promql_string("bell\x07")


def test_per_request_traffic_only_where_the_policy_allows_it():
    traffic = {"virtual_service": "checkout-vs", "routes": ["primary"], "dry_run": True}
    assert field_of(GOOD | {"traffic": traffic}) == "traffic"
    spec = resolved(policy="steerable", traffic=traffic)
    assert spec.traffic == traffic
    assert spec.identity() != resolved(policy="steerable").identity()
    assert field_of(GOOD | {"policy": "steerable", "traffic": {"routes": ['a"b']}}) == (
        "traffic.routes.0"
    )
    assert field_of(GOOD | {"policy": "steerable", "traffic": {"hosts": ["x"]}}) == (
        "traffic.hosts"
    )
