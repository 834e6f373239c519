"""deploy/overlays/followup-workers: follow-ups on workers of their own, checked offline like the
rest of deploy/ (the schema, hardening and PDB checks of test_deploy_manifests.py cover this
overlay too, as they render every kustomization)."""

from __future__ import annotations

import click
import pytest

from cli.main import worker as worker_command
from tests.integration.test_deploy_manifests import (
    DEPLOY,
    container_environment,
    find,
    pod_spec,
    render,
    selects,
    the,
)

pytestmark = pytest.mark.integration

OVERLAY = DEPLOY / "overlays" / "followup-workers"
ANALYSIS, FOLLOWUP = "rollout-analyzer-worker", "rollout-analyzer-followup-worker"


def queues_of(objects, deployment: str) -> str:
    (container,) = pod_spec(the(objects, "Deployment", deployment))["containers"]
    args = container["args"]
    assert args[0] == "worker"
    return args[args.index("--queues") + 1] if "--queues" in args else "all"


def test_without_the_component_every_worker_consumes_both_queues() -> None:
    assert queues_of(render(DEPLOY / "base"), ANALYSIS) == "all"


def test_analysis_and_follow_up_workers_split_the_queues_between_them() -> None:
    objects = render(OVERLAY)
    assert (queues_of(objects, ANALYSIS), queues_of(objects, FOLLOWUP)) == (
        "analyses", "followups",
    )  # fmt: skip
    (option,) = [p for p in worker_command.params if p.name == "which"]
    assert isinstance(option.type, click.Choice)
    assert {"analyses", "followups"} <= set(option.type.choices)  # what the CLI accepts
    # Same settings, hence the same queue names and Redis, for both.
    analysis_env = container_environment(objects, ANALYSIS)
    assert container_environment(objects, FOLLOWUP) == analysis_env


def test_follow_up_workers_are_their_own_pods_reaching_redis_and_nothing_else() -> None:
    objects = render(OVERLAY)
    analysis = the(objects, "Deployment", ANALYSIS)
    followup = the(objects, "Deployment", FOLLOWUP)
    followup_labels = followup["spec"]["template"]["metadata"]["labels"]
    # Selectors that do not overlap: each Deployment owns only its own pods.
    assert not selects(analysis["spec"]["selector"], followup_labels)
    assert not selects(
        followup["spec"]["selector"], analysis["spec"]["template"]["metadata"]["labels"]
    )
    redis_policy = the(objects, "NetworkPolicy", "rollout-analyzer-redis")
    (peer,) = redis_policy["spec"]["ingress"][0]["from"]
    assert selects(peer["podSelector"], followup_labels)
    no_ingress = the(objects, "NetworkPolicy", FOLLOWUP)
    assert selects(no_ingress["spec"]["podSelector"], followup_labels)
    assert not no_ingress["spec"].get("ingress")
    budgets = [
        p
        for p in find(objects, "PodDisruptionBudget")
        if selects(p["spec"]["selector"], followup_labels)
    ]
    assert len(budgets) == 1
    assert followup["metadata"]["namespace"] == "rollout-analyzer"


def test_both_workers_run_the_same_image() -> None:
    objects = render(OVERLAY)
    images = {
        pod_spec(the(objects, "Deployment", d))["containers"][0]["image"]
        for d in (ANALYSIS, FOLLOWUP)
    }
    assert len(images) == 1
