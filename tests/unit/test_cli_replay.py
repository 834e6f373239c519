"""Where Argo would end an analysis, given measurement phases and the metric's limits."""

from __future__ import annotations

import random

import pytest
import yaml

from cli.output import CliError
from cli.replay import ArgoLimits, assess, read_template, replay_times
from cli.template import TemplateSettings, build_template
from tests.support import argo

S, F, N, E = "Successful", "Failed", "Inconclusive", "Error"  # N: iNconclusive


def test_the_first_failure_fails_with_argos_default_limits():
    outcome = assess([S, S, F, S], ArgoLimits())
    assert (outcome.phase, outcome.ended_at, outcome.measured) == ("Failed", 2, 3)
    assert outcome.message == "failed (1) > failureLimit (0)"


def test_failure_limit_counts_failures_that_are_not_consecutive():
    outcome = assess([F, S, F, S, S, F, S], ArgoLimits(failure_limit=2))
    assert (outcome.phase, outcome.ended_at) == ("Failed", 5)


def test_inconclusive_pauses_once_past_its_limit():
    assert assess([S, N, S], ArgoLimits()).ended_at == 1
    outcome = assess([N, S, N, S], ArgoLimits(inconclusive_limit=1))
    assert (outcome.phase, outcome.ended_at) == ("Inconclusive", 2)


def test_errors_end_the_metric_only_when_consecutive_beyond_the_limit():
    # Four in a row are tolerated by default; a success resets the streak.
    assert assess([E, E, E, E, S, E, E, E, E, S], ArgoLimits()).phase == "Running"
    outcome = assess([S, E, E, E, E, E, S], ArgoLimits())
    assert (outcome.phase, outcome.ended_at) == ("Error", 5)
    assert assess([E, S], ArgoLimits(consecutive_error_limit=0)).phase == "Error"


def test_count_ends_successfully_and_errors_do_not_count():
    outcome = assess([S, E, S, S, F], ArgoLimits(count=3))
    assert (outcome.phase, outcome.ended_at, outcome.measured) == ("Successful", 3, 4)


def test_a_replay_that_runs_out_of_points_is_still_running():
    outcome = assess([S, S], ArgoLimits())
    assert (outcome.phase, outcome.ended_at, outcome.measured) == ("Running", None, 2)


def test_negative_limits_are_rejected():
    with pytest.raises(ValueError, match="failure-limit"):
        ArgoLimits(failure_limit=-1).check()
    with pytest.raises(ValueError, match="count"):
        ArgoLimits(count=0).check()


def _emulator_outcome(phases: list[str], limits: ArgoLimits) -> tuple[str, int | None]:
    """The same phases through the Argo emulator's bookkeeping (tests/support/argo.py)."""
    metric = argo.Metric(
        name="m",
        web=argo.WebProvider(url="http://unused"),
        interval=60.0,
        count=limits.count,
        failure_limit=limits.failure_limit,
        inconclusive_limit=limits.inconclusive_limit,
        consecutive_error_limit=limits.consecutive_error_limit,
    )
    run = argo.MetricRun(argo.Phase.RUNNING, [])
    for index, phase in enumerate(phases):
        run.record(argo.Phase(phase))
        verdict, _ = argo.assess_metric(metric, run)
        if verdict is not argo.Phase.RUNNING:
            return str(verdict), index
    return "Running", None


def test_agrees_with_the_argo_emulator_on_random_sequences():
    rng = random.Random(4711)
    for _ in range(2000):
        phases = rng.choices([S, F, N, E], weights=[6, 1, 1, 2], k=rng.randint(1, 15))
        limits = ArgoLimits(
            failure_limit=rng.randint(0, 3),
            inconclusive_limit=rng.randint(0, 3),
            consecutive_error_limit=rng.randint(0, 5),
            count=rng.choice([None, rng.randint(1, 12)]),
        )
        ours = assess(phases, limits)
        assert (ours.phase, ours.ended_at) == _emulator_outcome(phases, limits), (phases, limits)


def _template_yaml(**changes: object) -> str:
    values: dict[str, object] = dict(
        service="checkout",
        namespace="shop",
        policy="default",
        url="http://ra:8080",
        name="checkout-analysis",
        cluster=False,
        secret_name="s",
        secret_key="token",
        interval="2m",
        count=7,
        initial_delay="30s",
        failure_limit=2,
        inconclusive_limit=1,
        consecutive_error_limit=6,
        timeout_seconds=10,
        window=None,
    )
    values.update(changes)
    return yaml.safe_dump(build_template(TemplateSettings(**values)))  # type: ignore[arg-type]


def test_read_template_takes_limits_interval_and_delay():
    metric = read_template(_template_yaml())
    assert metric.limits == ArgoLimits(2, 1, 6, 7)
    assert (metric.interval, metric.initial_delay) == ("2m", "30s")


def test_read_template_uses_argos_defaults_for_missing_fields():
    text = """
apiVersion: argoproj.io/v1alpha1
kind: ClusterAnalysisTemplate
metadata: {name: t}
spec:
  metrics:
    - name: other
      provider: {web: {url: "http://x"}}
    - name: verdict
      failureLimit: "3"
      provider: {web: {url: "http://x"}}
"""
    metric = read_template(text, "verdict")
    assert metric.limits == ArgoLimits(3, 0, 4, None)
    assert metric.interval is None


def test_read_template_rejects_unsubstituted_args_and_missing_metrics():
    text = _template_yaml().replace("failureLimit: 2", "failureLimit: '{{args.limit}}'")
    with pytest.raises(ValueError, match="pass --failure-limit"):
        read_template(text)
    with pytest.raises(ValueError, match="no metric named 'nope'"):
        read_template(_template_yaml(), "nope")
    with pytest.raises(ValueError, match="no AnalysisTemplate"):
        read_template("kind: Rollout\n")


def test_replay_times_cover_the_period_on_the_interval():
    assert replay_times(100.0, 400.0, 60.0) == [100.0, 160.0, 220.0, 280.0, 340.0, 400.0]
    assert replay_times(100.0, 100.0, 60.0) == [100.0]
    with pytest.raises(CliError, match="before --start"):
        replay_times(200.0, 100.0, 60.0)
