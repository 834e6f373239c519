"""`make demo` on embedded defaults: no Redis, no Prometheus, verdicts printed, serving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from analysis.durations import format_time
from cli.demo import RECORDING
from cli.demo_recording import BASELINE, CANARY, START
from tests.support.service import served_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[tuple[str, str]]:
    """The demo served: its base URL and what it printed."""
    with served_demo(tmp_path_factory.mktemp("demo")) as served:
        yield served


def test_demo_judges_the_bundled_scenarios_and_keeps_serving(demo):
    base, text = demo
    lines = {line.split()[0]: line.split()[1] for line in text.splitlines()[3:7]}
    assert lines == {
        "checkout": "pass", "payments": "fail", "search": "fail", "inventory": "inconclusive",
    }, text  # fmt: skip
    assert "curl -s -X POST" in text
    assert httpx.get(f"{base}/readyz").status_code == 200
    body = {"service": "payments", "namespace": "shop", "canary": "6d4f8b7c9a",
            "baseline": "5c8d7e6f4b"}  # fmt: skip
    answer = httpx.post(f"{base}/v1/analyze", json=body, timeout=10)
    assert answer.json()["verdict"] == "fail"
    stored = httpx.get(f"{base}/v1/analyses/{answer.json()['analysis_id']}")
    assert stored.json()["status"] == "done"


LAST = START + 11 * 60  # the recording's last point


def recorded(service: str, selector: str, t: float) -> dict[str, float]:
    """A point's requests by status, read from the shipped file itself."""
    entries = json.loads(Path(RECORDING).read_text())["entries"]
    (found,) = [
        e for e in entries if (e["service"], e["selector"], e["time"]) == (service, selector, t)
    ]
    return found["requests_by_status"]


def one_number(base: str, metric: str, labels: dict[str, str], end: float, seconds: float):
    body = {"metricName": metric, "labels": labels, "endTimestamp": format_time(end),
            "startTimestamp": format_time(end - seconds)}  # fmt: skip
    answer = httpx.post(f"{base}/metrics/analysis", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()["value"]


def success(*statuses: dict[str, float]) -> float:
    total = sum(n for s in statuses for n in s.values())
    errors = sum(n for s in statuses for code, n in s.items() if code.startswith("5"))
    return 100 * (1 - errors / total)


def test_the_demo_answers_one_number_per_metric_from_its_recording(demo):
    """POST /metrics/analysis on the demo reads the recording's counts: a canary's, a whole
    service's (both selectors), a request rate from the 5 m window over 1 m; no point in the
    range is null, never a healthy number."""
    base, text = demo
    canary = recorded("payments", CANARY, LAST)
    baseline = recorded("payments", BASELINE, LAST)
    labels = {"service": "payments", "namespace": "shop", "rollout": CANARY}
    assert one_number(base, "http_success_rate", labels, LAST, 300) == pytest.approx(
        success(canary)
    )
    whole = one_number(base, "http_success_rate", {"service": "payments"}, LAST, 300)
    assert whole == pytest.approx(success(canary, baseline))
    rate = one_number(base, "http_request_rate", labels, LAST, 60)
    assert rate == pytest.approx(sum(canary.values()) / 300, rel=0.02)
    slow = one_number(base, "http_latency_p99", {"service": "search", "rollout": CANARY}, LAST, 300)
    usual = one_number(
        base, "http_latency_p99", {"service": "checkout", "rollout": CANARY}, LAST, 300
    )
    assert slow > 1.5 * usual  # the recording's search canary is the slow one
    # The call the demo prints to try it, as printed.
    lines = text.splitlines()
    (at,) = [i for i, line in enumerate(lines) if "/metrics/analysis" in line]
    printed = json.loads(lines[at + 1].split("-d '", 1)[1].rstrip("'"))
    answer = httpx.post(f"{base}/metrics/analysis", json=printed, timeout=10)
    assert answer.json()["value"] == pytest.approx(success(canary))
    assert one_number(base, "http_success_rate", labels, START - 3600, 300) is None
    assert one_number(base, "http_success_rate", labels, LAST + 3600, 300) is None
    assert one_number(base, "http_success_rate", {"service": "nobody"}, LAST, 300) is None
