"""`make demo` on embedded defaults: no Redis, no Prometheus, verdicts printed, serving."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.support.procs import free_port, wait_for


def test_demo_judges_the_bundled_scenarios_and_keeps_serving(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_ANALYZER_")}
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "cli", "demo", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            wait_for(lambda: "Serving" in log.read_text(), 60, "the demo to print its verdicts")
            text = log.read_text()
            lines = {line.split()[0]: line.split()[1] for line in text.splitlines()[3:7]}
            assert lines == {
                "checkout": "pass", "payments": "fail", "search": "fail",
                "inventory": "inconclusive",
            }, text  # fmt: skip
            assert "curl -s -X POST" in text
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(f"{base}/readyz").status_code == 200
            body = {"service": "payments", "namespace": "shop", "canary": "6d4f8b7c9a",
                    "baseline": "5c8d7e6f4b"}  # fmt: skip
            answer = httpx.post(f"{base}/v1/analyze", json=body, timeout=10)
            assert answer.json()["verdict"] == "fail"
            stored = httpx.get(f"{base}/v1/analyses/{answer.json()['analysis_id']}")
            assert stored.json()["status"] == "done"
        finally:
            demo.terminate()
            demo.wait(15)
