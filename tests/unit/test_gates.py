"""Policies own their gates: a request may tighten a threshold, never loosen it past the policy's
bound; which way is stricter is declared per threshold."""

from __future__ import annotations

import pytest

from analysis.gates import STRICTER
from analysis.policy import Policy, PolicySet, Thresholds
from analysis.request import RequestError, parse_request, resolve
from tests.unit.test_judge import side, verdict

NOW = 1_800_000_000.0
GOOD = {"service": "checkout", "canary": "6d4f8b7c9a", "baseline": "5c8d7e6f4b"}
POLICIES = PolicySet.from_yaml(
    """
policies:
  tunable:
    thresholds: {slo: 0.999, min_requests: 200, max_latency_p99: 0.5}
    overrides:
      bounds:
        slo: {min: 0.99, max: 0.9999}
        min_requests: {min: 10}
        max_latency_p99: {max: 2}
  slo-only:
    overrides: {allow: [slo]}
  locked:
    overrides: {allow: []}
"""
)

# (threshold, a stricter value, a looser value) against the default policy's thresholds.
DEFAULT_MOVES = [
    ("slo", 0.9995, 0.99),
    ("slo_period_days", 7, 90),
    ("min_requests", 500, 99),
    ("alpha", 0.1, 0.01),
    ("sequential_alpha", 0.05, 0.001),
    ("error_ratio_tolerance_pp", 0.05, 1),
    ("error_rate_ratio_tolerance", 1.2, 2),
    ("latency_ratio_tolerance", 1.1, 2),
    ("fast_burn", 10, 20),
    ("max_budget_spend", 0.01, 0.05),
    ("pass_score", 95, 80),
    ("marginal_score", 80, 50),
]


def spec(overrides: dict[str, float], policy: str = "default"):
    request = parse_request(GOOD | {"policy": policy, "overrides": overrides})
    return resolve(request, POLICIES, now=NOW)


def refused(overrides: dict[str, float], policy: str = "default") -> RequestError:
    with pytest.raises(RequestError) as caught:
        spec(overrides, policy)
    return caught.value


def test_every_threshold_says_which_way_is_stricter():
    assert set(STRICTER) == set(Thresholds.model_fields)
    latency_limits = {f"max_latency_{q}" for q in ("p50", "p90", "p95", "p99")}
    moved = {name for name, *_ in DEFAULT_MOVES} | latency_limits
    assert moved == set(STRICTER)


@pytest.mark.parametrize(("name", "stricter", "looser"), DEFAULT_MOVES)
def test_by_default_only_towards_stricter(name, stricter, looser):
    assert getattr(spec({name: stricter}).policy.thresholds, name) == stricter
    error = refused({name: looser})
    assert error.field == f"overrides.{name}"
    policy_value = getattr(Thresholds(), name)
    words = "at least" if STRICTER[name] == "higher" else "at most"
    assert f"would loosen policy 'default': {name} must be {words} {policy_value:g}" in str(error)
    # The policy's own value is not a loosening.
    assert getattr(spec({name: policy_value}).policy.thresholds, name) == policy_value


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"min_requests": 1}, "overrides.min_requests"), ({"pass_score": 0}, "overrides.pass_score"),
     ({"slo": 0.5}, "overrides.slo")],
)  # fmt: skip
def test_the_loosenings_of_the_issue_are_refused(overrides, field):
    assert refused(overrides).field == field


def test_an_unset_latency_limit_may_be_set_and_a_set_one_only_lowered():
    assert spec({"max_latency_p99": 30}).policy.thresholds.max_latency_p99 == 30
    assert spec({"max_latency_p99": 0.25}, "tunable").policy.thresholds.max_latency_p99 == 0.25
    assert spec({"max_latency_p99": 1.5}, "tunable").policy.thresholds.max_latency_p99 == 1.5
    assert "must be at most 2" in str(refused({"max_latency_p99": 3}, "tunable"))


def test_a_policy_may_allow_loosening_within_its_bounds():
    assert spec({"slo": 0.995}, "tunable").policy.thresholds.slo == 0.995
    assert "would loosen policy 'tunable': slo must be at least 0.99" in str(
        refused({"slo": 0.98}, "tunable")
    )
    assert "is outside the bounds of policy 'tunable': slo must be at most 0.9999" in str(
        refused({"slo": 0.99999}, "tunable")
    )


def test_min_requests_never_goes_below_the_policys_whatever_the_bounds():
    error = refused({"min_requests": 50}, "tunable")
    assert error.field == "overrides.min_requests"
    assert "must be at least 200" in error.message
    assert spec({"min_requests": 300}, "tunable").policy.thresholds.min_requests == 300


def test_a_policy_may_lock_thresholds():
    assert spec({"slo": 0.9999}, "slo-only").policy.thresholds.slo == 0.9999
    error = refused({"min_requests": 500}, "slo-only")
    assert error.field == "overrides.min_requests"
    assert "does not let a request override min_requests (it allows: slo)" in error.message
    assert "it allows: none" in refused({"slo": 0.9999}, "locked").message
    assert spec({}, "locked").policy.name == "locked"


@pytest.mark.parametrize(
    "body",
    [{"allow": ["speed"]}, {"bounds": {"speed": {"min": 1}}},
     {"bounds": {"slo": {"min": 0.999, "max": 0.99}}}, {"bounds": {"slo": {"lowest": 1}}}],
)  # fmt: skip
def test_a_policy_file_with_bad_override_rules_does_not_load(body):
    with pytest.raises(ValueError, match="policy 'p'"):
        PolicySet.from_yaml(f"policies:\n  p:\n    overrides: {body}\n")


def test_the_stricter_direction_is_the_one_that_makes_a_pass_harder():
    """Checked against the judge for the two rows that are easy to get backwards."""
    canary, baseline = side(1000, 4), side(20000, 20)  # 0.4% vs 0.1% errors, little data
    assert verdict(canary, baseline).verdict == "pass"
    # A higher alpha fails on less evidence.
    stricter_alpha = Policy().with_overrides({"alpha": 0.2})
    assert verdict(canary, baseline, stricter_alpha).verdict == "fail"
    # With that check not critical, the score (83.3) is between marginal and pass: a higher
    # marginal_score turns an inconclusive into a fail.
    lenient = Policy.model_validate(
        {"checks": {"success_rate.slo": {"critical": False, "weight": 3}}}
    )
    lenient = lenient.with_overrides({"alpha": 0.2})
    assert verdict(canary, baseline, lenient).verdict == "inconclusive"
    assert (
        verdict(canary, baseline, lenient.with_overrides({"marginal_score": 85})).verdict == "fail"
    )
