"""The CLI as users run it: a real subprocess against the backfilled Prometheus and a recording."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

import analysis
from analysis.durations import format_time, parse_time
from tests.integration.conftest import TOKEN
from tests.support import argo
from tests.support.crd_schema import validator_for
from tests.support.procs import free_port
from tests.support.reference_data import crd_path

DEMO_RECORDING = Path(analysis.__file__).parent / "data" / "demo-recording.json"
COMMANDS = ["analyze", "replay", "record", "template", "doctor", "policies", "dead-letters"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_ANALYZER_")}
    clean.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        capture_output=True,
        text=True,
        env=clean,
        timeout=120,
        check=False,
    )


def sides(prometheus, name: str) -> list[str]:
    scenario = prometheus.scenarios[name]
    return [
        "--service", scenario.service, "--namespace", scenario.namespace,
        "--canary", "6d4f8b7c9a", "--baseline", "5c8d7e6f4b",
    ]  # fmt: skip


def at(ts: float) -> str:
    return format_time(ts)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 3, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- help and bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Example:" in result.stdout and f"rollout-analyzer {command}" in result.stdout


def test_unknown_policy_is_one_line_and_exit_3(prometheus):
    result = run_cli(
        "analyze", "--prometheus", prometheus.url, *sides(prometheus, "good"), "--policy", "nope"
    )
    assert_one_line_error(result, "unknown policy 'nope'", "default")


def test_end_before_start_is_rejected(prometheus):
    args = ["replay", "--prometheus", prometheus.url, *sides(prometheus, "good")]
    result = run_cli(*args, "--start", "-10m", "--end", "-20m")
    assert_one_line_error(result, "--end", "before --start")


def test_unreachable_prometheus_is_one_line_unless_debug(prometheus):
    dead = f"http://127.0.0.1:{free_port()}"
    args = ["analyze", "--prometheus", dead, *sides(prometheus, "good")]
    assert_one_line_error(run_cli(*args), dead, "reachable")
    debug = run_cli("--debug", *args)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--end", "yesterday"], "is not an RFC 3339 time"),
        (["--end", "2026-01-01T00:00:00"], "has no time zone"),
        (["--window", "5 minutes"], "window"),
        (["--override", "slo"], "NAME=VALUE"),
        (["--override", "speed=3"], "unknown override"),
        (["--from-recording", "/nonexistent/recording.json"], "cannot read recording"),
    ],
)
def test_bad_input_is_one_line_and_exit_3(prometheus, args, needle):
    result = run_cli("analyze", "--prometheus", prometheus.url, *sides(prometheus, "good"), *args)
    if "--from-recording" in args:
        result = run_cli("analyze", *sides(prometheus, "good"), *args)
    assert_one_line_error(result, needle)


def test_a_missing_option_is_one_line_and_exit_3():
    result = run_cli("analyze", "--service", "checkout")
    assert_one_line_error(result, "--canary", "--help")


# --- analyze -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "code", "verdict"),
    [("good", 0, "pass"), ("errors", 1, "fail"), ("low-traffic", 2, "inconclusive")],
)
def test_analyze_exit_code_is_the_verdict(prometheus, name, code, verdict):
    result = run_cli(
        "analyze", "--prometheus", prometheus.url, *sides(prometheus, name), "--end", "-2m"
    )
    assert result.returncode == code, result.stderr
    assert result.stdout.startswith(verdict)
    if verdict != "inconclusive":
        # The checks table: every check with canary, baseline, limit and p-value.
        assert "success_rate.regression" in result.stdout and "p-value" in result.stdout


def test_analyze_from_the_demo_recording():
    base = ["analyze", "--from-recording", str(DEMO_RECORDING), "--namespace", "shop"]
    base += ["--canary", "6d4f8b7c9a", "--baseline", "5c8d7e6f4b"]
    assert run_cli(*base, "--service", "checkout").returncode == 0
    payments = run_cli(*base, "--service", "payments", "--output", "json")
    assert payments.returncode == 1
    assert json.loads(payments.stdout)["source"] == {
        "kind": "recording",
        "round_trips": 0,
        "queries": [],
    }


# --- replay ------------------------------------------------------------------------------------


def replay_json(prometheus, name: str, *args: str) -> tuple[int, dict]:
    result = run_cli(
        "replay",
        "--prometheus",
        prometheus.url,
        *sides(prometheus, name),
        "--output",
        "json",
        *args,
    )
    assert result.returncode in (0, 1, 2), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_replay_of_a_degrading_canary_finds_the_first_failure(prometheus):
    changes_at = prometheus.scenarios["degrades"].changes_at
    start, end = at(changes_at - 20 * 60), at(changes_at + 20 * 60)
    code, data = replay_json(
        prometheus, "degrades", "--start", start, "--end", end, "--interval", "1m",
        "--failure-limit", "2",
    )  # fmt: skip
    first = data["first_failure"]
    assert first is not None
    # The replay is one live sequence that has seen 20 good minutes: a 10x error rate is caught
    # within a few polls of the change (never before it), the price of never failing a healthy
    # canary however long it is polled. --fixed-windows judges each window alone.
    assert 0 <= parse_time(first["time"]) - changes_at <= 240
    verdicts = [m["verdict"] for m in data["measurements"]]
    assert set(verdicts[: first["index"]]) == {"pass"}
    # failureLimit 2: the third failed measurement fails the metric and aborts the rollout.
    assert data["argo"]["phase"] == "Failed" and data["argo"]["rollout"] == "aborted"
    assert data["argo"]["ended_at"]["index"] == first["index"] + 2
    assert code == 1
    measured = [m["measured_by_argo"] for m in data["measurements"]]
    assert measured == [i <= first["index"] + 2 for i in range(len(measured))]


def test_replay_text_names_the_stop_and_the_final_phase(prometheus, tmp_path):
    changes_at = prometheus.scenarios["degrades"].changes_at
    plot = tmp_path / "replay.svg"
    result = run_cli(
        "replay", "--prometheus", prometheus.url, *sides(prometheus, "degrades"),
        "--start", at(changes_at - 5 * 60), "--end", at(changes_at + 5 * 60), "--plot", str(plot),
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "first failing measurement: #" in result.stdout
    assert "final phase: Failed (the rollout is aborted)" in result.stdout
    assert "Argo: Failed" in result.stdout
    svg = plot.read_text()
    assert svg.startswith("<svg") and "success rate" in svg and "limit 99.90%" in svg
    assert "Argo: Failed at #" in svg


def test_replay_pauses_on_inconclusive_past_the_limit(prometheus):
    code, data = replay_json(
        prometheus, "low-traffic", "--start", "-30m", "--end", "-20m", "--inconclusive-limit", "2"
    )
    assert (code, data["argo"]["phase"], data["argo"]["rollout"]) == (2, "Inconclusive", "paused")
    assert data["argo"]["ended_at"]["index"] == 2


def test_an_hour_at_one_minute_costs_one_range_query(prometheus):
    ranges = prometheus.http_requests_total("/api/v1/query_range")
    instants = prometheus.http_requests_total("/api/v1/query")
    _, data = replay_json(prometheus, "good", "--start", "-70m", "--end", "-10m", "--fixed-windows")
    assert len(data["measurements"]) == 61 and data["mode"] == "fixed"
    assert data["source"]["round_trips"] == 1
    assert prometheus.http_requests_total("/api/v1/query_range") - ranges == 1
    assert prometheus.http_requests_total("/api/v1/query") - instants == 0
    assert data["argo"]["phase"] == "Running"  # no count: nothing stopped it within the hour
    # As the live service would have answered: the first window, then one range query.
    _, data = replay_json(prometheus, "good", "--start", "-70m", "--end", "-10m")
    assert len(data["measurements"]) == 61 and data["mode"] == "sequential"
    assert data["source"]["round_trips"] == 2
    assert prometheus.http_requests_total("/api/v1/query_range") - ranges == 2
    assert prometheus.http_requests_total("/api/v1/query") - instants == 1
    polls = [m["report"]["sequence"]["polls"] for m in data["measurements"]]
    assert polls == list(range(1, 62))
    assert data["argo"]["phase"] == "Running"


def test_replay_takes_limits_from_a_template(prometheus, tmp_path):
    changes_at = prometheus.scenarios["degrades"].changes_at
    template = run_cli(
        "template", "--service", "degrades", "--namespace", "shop", "--interval", "1m",
        "--initial-delay", "2m", "--count", "30", "--failure-limit", "1",
    )  # fmt: skip
    assert template.returncode == 0, template.stderr
    path = tmp_path / "template.yaml"
    path.write_text(template.stdout)
    args = ["--start", at(changes_at - 12 * 60), "--end", at(changes_at + 20 * 60)]
    _, data = replay_json(prometheus, "degrades", *args, "--template", str(path))
    # initialDelay 2m: the first measurement comes two minutes after --start.
    assert data["measurements"][0]["time"] == at(changes_at - 10 * 60)
    assert data["limits"] == {
        "failure_limit": 1, "inconclusive_limit": 1, "consecutive_error_limit": 6, "count": 30,
    }  # fmt: skip
    assert data["argo"]["ended_at"]["index"] == data["first_failure"]["index"] + 1
    # A short count ends the analysis Successful before the canary degrades.
    code, short = replay_json(
        prometheus, "degrades", *args, "--template", str(path), "--count", "5"
    )
    assert (code, short["argo"]["phase"], short["argo"]["ended_at"]["index"]) == (
        0,
        "Successful",
        4,
    )


# --- record ------------------------------------------------------------------------------------


def test_record_then_replay_offline_equals_replay_live(prometheus, tmp_path):
    changes_at = prometheus.scenarios["degrades"].changes_at
    period = ["--start", at(changes_at - 10 * 60), "--end", at(changes_at + 10 * 60)]
    recording = tmp_path / "incident.json"
    recorded = run_cli(
        "record", "--prometheus", prometheus.url, *sides(prometheus, "degrades"), *period,
        "--interval", "1m", "--out", str(recording), "--description", "degrades incident",
    )  # fmt: skip
    assert recorded.returncode == 0, recorded.stderr
    assert "recorded 21 points" in recorded.stdout
    _, live = replay_json(prometheus, "degrades", *period, "--failure-limit", "1")
    offline = run_cli(
        "replay", "--from-recording", str(recording), *sides(prometheus, "degrades"), *period,
        "--failure-limit", "1", "--output", "json",
    )  # fmt: skip
    assert offline.returncode == 1, offline.stderr
    replayed = json.loads(offline.stdout)

    def timeline(data: dict) -> list[dict]:
        return [
            {**m, "report": {k: v for k, v in m["report"].items() if k != "source"}}
            for m in data["measurements"]
        ]

    assert timeline(replayed) == timeline(live)
    assert replayed["argo"] == live["argo"] and replayed["first_failure"] == live["first_failure"]
    assert (replayed["source"]["kind"], live["source"]["kind"]) == ("recording", "prometheus")


# --- template against the CRD and the running service ------------------------------------------


@pytest.mark.parametrize(
    ("flags", "crd", "kind"),
    [
        ([], "analysistemplates.argoproj.io.crd.yaml", "AnalysisTemplate"),
        (["--cluster"], "clusteranalysistemplates.argoproj.io.crd.yaml", "ClusterAnalysisTemplate"),
    ],
)
def test_template_validates_against_the_crd(flags, crd, kind):
    result = run_cli("template", "--service", "checkout", "--namespace", "shop", *flags)
    assert result.returncode == 0, result.stderr
    document = yaml.safe_load(result.stdout)
    assert document["kind"] == kind
    validator_for(crd_path(crd), "v1alpha1")(document)


@pytest.fixture(scope="module")
def stack(stack_factory, prometheus):
    return stack_factory("cli", prometheus_url=prometheus.url)


@pytest.mark.parametrize(
    ("name", "phase"),
    [("good", "Successful"), ("errors", "Failed"), ("low-traffic", "Inconclusive")],
)
def test_argo_gets_the_phase_from_the_generated_template(stack, prometheus, name, phase):
    result = run_cli(
        "template", "--service", name, "--namespace", "shop", "--url", stack.url,
        "--count", "3", "--interval", "30s", "--initial-delay", "0s",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = argo.load_template(
        result.stdout,
        {"canary-hash": "6d4f8b7c9a", "stable-hash": "5c8d7e6f4b", "api-token": TOKEN},
    )
    with httpx.Client() as client:
        run = argo.run_metric(metrics[0], client, sleep=lambda _: None)
    assert run.phase == phase, [m.message or m.value for m in run.measurements]


def test_analyze_json_is_exactly_the_webhooks_answer(stack, prometheus):
    end = at(time.time() - 180)
    body = {"service": "errors", "namespace": "shop", "canary": "6d4f8b7c9a"}
    body |= {"baseline": "5c8d7e6f4b", "end": end}
    with stack.client() as client:
        answer = client.post("/v1/analyze", json=body)
    assert answer.status_code == 200, answer.text
    server_only = ("analysis_id", "timing", "report_url")
    webhook = {k: v for k, v in answer.json().items() if k not in server_only}
    # How the worker's query travelled (sent as its task's message arrived): the CLI has no
    # task. Everything the query read and every number after it must be the same.
    assert webhook["source"].pop("sent_ahead", True) is True
    result = run_cli(
        "analyze", "--prometheus", prometheus.url, *sides(prometheus, "errors"),
        "--end", end, "--output", "json",
    )  # fmt: skip
    assert result.returncode == 1
    assert json.loads(result.stdout) == webhook


# --- doctor and policies -----------------------------------------------------------------------


@pytest.fixture
def listening_host():
    """A TCP port that accepts connections (a stand-in chat host; doctor posts nothing)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in accepted:
        conn.close()


def test_doctor_passes_when_everything_is_reachable(
    redis_server, prometheus, tmp_path, listening_host
):
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        yaml.safe_dump(
            {
                "targets": [
                    {
                        "name": "oncall",
                        "kind": "slack",
                        "url": f"http://127.0.0.1:{listening_host}/hook",
                    }
                ]
            }
        )
    )
    result = run_cli(
        "doctor", "--service", "good", "--namespace", "shop",
        env={
            "ROLLOUT_ANALYZER_REDIS_URL": redis_server.url,
            "ROLLOUT_ANALYZER_PROMETHEUS_URL": prometheus.url,
            "ROLLOUT_ANALYZER_CHAT_TARGETS_FILE": str(targets),
        },
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert any(line.startswith("ok   redis:") for line in lines)
    assert any(line.startswith("ok   metrics:") and "http_requests_total" in line for line in lines)
    assert "info kubernetes: no traffic actions configured" in lines
    assert any(
        line.startswith("ok   chat oncall (slack):") and "nothing posted" in line for line in lines
    )
    assert lines[-1] == "all checks passed"


def test_doctor_names_each_problem_with_a_fix(prometheus, tmp_path):
    targets = tmp_path / "targets.yaml"
    targets.write_text(
        yaml.safe_dump([{"name": "ding", "kind": "dingtalk", "url_env": "NOT_SET_HERE"}])
    )
    result = run_cli(
        "doctor", "--service", "no-such-service", "--prometheus", prometheus.url,
        "--chat-targets", str(targets),
        env={"ROLLOUT_ANALYZER_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
    )  # fmt: skip
    assert result.returncode == 1
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert [line.split(":")[0] for line in failures] == [
        "FAIL redis", "FAIL metrics", "FAIL metrics", "FAIL chat ding (dingtalk)",
    ]  # fmt: skip
    assert all(" -- fix: " in line for line in failures)
    assert "NOT_SET_HERE" in failures[-1]


POLICIES = """
policies:
  mesh:
    preset: istio
    thresholds: {slo: 0.995}
    checks:
      error_budget.spend: {enabled: false}
"""


def test_policies_shows_effective_values_after_presets(tmp_path):
    path = tmp_path / "policies.yaml"
    path.write_text(POLICIES)
    result = run_cli("policies", "--policies-file", str(path), "--output", "json")
    assert result.returncode == 0, result.stderr
    by_name = {p["name"]: p for p in json.loads(result.stdout)}
    assert sorted(by_name) == ["default", "mesh"]
    mesh = by_name["mesh"]
    assert mesh["metrics"]["requests_metric"] == "istio_requests_total"
    assert mesh["metrics"]["latency_unit_seconds"] == 0.001
    assert mesh["thresholds"]["slo"] == 0.995 and mesh["thresholds"]["fast_burn"] == 14.4
    assert mesh["checks"]["error_budget.spend"]["enabled"] is False
    assert mesh["checks"]["success_rate.slo"] == {"enabled": True, "critical": True, "weight": 3.0}


def test_policies_rejects_an_invalid_file_in_one_line(tmp_path):
    path = tmp_path / "policies.yaml"
    path.write_text("policies:\n  broken:\n    preset: linkerd\n")
    assert_one_line_error(run_cli("policies", "-f", str(path)), "broken", "preset")
    path.write_text("policies: [unclosed\n")
    assert_one_line_error(run_cli("policies", "-f", str(path)))


def test_doctor_reads_the_virtual_service_named_by_the_traffic_actions(tmp_path):
    from tests.support.k8s_emulator import K8sEmulator, write_kubeconfig

    policies = {"mesh": {"actions": {"traffic": {"virtual_service": "{service}-vs"}}}}
    (tmp_path / "policies.yaml").write_text(yaml.safe_dump({"policies": policies}))
    virtual_service = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "checkout-vs", "namespace": "shop"},
        "spec": {
            "hosts": ["checkout"],
            "http": [{"route": [{"destination": {"host": "checkout"}}]}],
        },
    }
    with K8sEmulator() as emulator:
        emulator.create_object("networking.istio.io/v1", "virtualservices", "shop", virtual_service)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator.url, emulator.token)
        env = {
            "ROLLOUT_ANALYZER_KUBECONFIG": str(kubeconfig),
            "ROLLOUT_ANALYZER_POLICIES_FILE": str(tmp_path / "policies.yaml"),
        }
        found, missing = (
            run_cli("doctor", "-s", service, "-n", "shop", "-p", "mesh", env=env)
            for service in ("checkout", "payments")
        )
    assert "ok   kubernetes: VirtualService shop/checkout-vs can be read" in found.stdout
    assert "FAIL kubernetes: VirtualService shop/payments-vs: get answered 404" in missing.stdout
    assert " -- fix: create it" in missing.stdout


def test_doctor_reads_the_http_route_of_a_gateway_api_policy(tmp_path):
    from tests.support.k8s_emulator import K8sEmulator, write_kubeconfig

    traffic = {"kind": "gateway-api", "http_route": "{service}-route"}
    policies = {"gw": {"actions": {"traffic": traffic}}}
    (tmp_path / "policies.yaml").write_text(yaml.safe_dump({"policies": policies}))
    http_route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "checkout-route", "namespace": "shop"},
        "spec": {"rules": [{"backendRefs": [{"name": "checkout", "port": 8080}]}]},
    }
    with K8sEmulator() as emulator:
        emulator.create_object("gateway.networking.k8s.io/v1", "httproutes", "shop", http_route)
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", emulator.url, emulator.token)
        env = {
            "ROLLOUT_ANALYZER_KUBECONFIG": str(kubeconfig),
            "ROLLOUT_ANALYZER_POLICIES_FILE": str(tmp_path / "policies.yaml"),
        }
        found, missing = (
            run_cli("doctor", "-s", service, "-n", "shop", "-p", "gw", env=env)
            for service in ("checkout", "payments")
        )
    assert "ok   kubernetes: HTTPRoute shop/checkout-route can be read" in found.stdout
    assert "FAIL kubernetes: HTTPRoute shop/payments-route: get answered 404" in missing.stdout
    assert "actions.traffic.http_route/namespace" in missing.stdout
