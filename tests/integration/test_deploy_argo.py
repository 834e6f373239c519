"""The AnalysisTemplate we ship (deploy/argo), run by the Argo web-provider emulator against the
running service: a good canary's step is Successful, a bad one's Failed, an idle one pauses."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import TOKEN
from tests.support.argo import Phase, load_template, run_metric

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "argo" / "analysistemplate.yaml"


@pytest.fixture(scope="module")
def stack(stack_factory, prometheus):
    return stack_factory("deploy-argo", prometheus_url=prometheus.url)


@pytest.mark.parametrize(
    ("service", "phase"),
    [("good", Phase.SUCCESSFUL), ("errors", Phase.FAILED), ("low-traffic", Phase.INCONCLUSIVE)],
)
def test_the_shipped_template_drives_the_step(stack, prometheus, service, phase):
    scenario = prometheus.scenarios[service]
    args = {
        "service": scenario.service,
        "namespace": scenario.namespace,
        "rollout": scenario.service,
        "canary-hash": scenario.canary.selector,
        "stable-hash": scenario.baseline.selector,
        "api-token": TOKEN,
    }
    [metric] = load_template(TEMPLATE.read_text(), args)
    assert metric.count == 5 and metric.interval == 60
    with httpx.Client() as client:
        # The in-cluster URL is pointed at the test server; Argo's waits run 1000x faster.
        run = run_metric(metric, client, base_url=stack.url, time_scale=0.001)
    assert run.phase == phase, run.message
    if phase == Phase.SUCCESSFUL:
        assert len(run.measurements) == 5
    if phase == Phase.INCONCLUSIVE:
        assert [m.phase for m in run.measurements] == [Phase.INCONCLUSIVE] * 2  # limit 1
