"""The report pages as people see them: headless Chromium loads each page from the running
service and reads it; the console stays clean and nothing is fetched outside this machine.

- the demo's four scenarios (in-process), each through the report URL the demo prints;
- a failing canary on the real stack (Redis, Prometheus, Celery workers, the Kubernetes API
  emulator, chat receivers): the rollback, its patch, every chat delivery, the "View analysis"
  link in the messages, the timeline with Argo's event (a hostile message shown as text).
Screenshots go to $RA_SCREENSHOT_DIR (default: the test's temporary directory).
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import analysis
from tests.integration.conftest import AUTH
from tests.support.actions_world import NS, argo_call, body, start_actions_world
from tests.support.argo import Phase
from tests.support.browser import Browser, PageVisit
from tests.support.procs import wait_for
from tests.support.service import served_demo

RECORDING = Path(analysis.__file__).parent / "data" / "demo-recording.json"

UI_TOKEN = "read-only-ui-token"
PUBLIC_URL = "https://canary.example.com/analyzer"
BASIC = {"Authorization": "Basic " + base64.b64encode(f"oncall:{UI_TOKEN}".encode()).decode()}
HOSTILE = '<script>alert("x")</script><img src=https://evil.example/p.png>'


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    started = Browser(tmp_path_factory.mktemp("chromium")).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    chosen = os.environ.get("RA_SCREENSHOT_DIR")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def assert_clean(visit: PageVisit) -> None:
    """Loaded, no console error (a CSP violation would be one), nothing from outside."""
    assert visit.status == 200, (visit.url, visit.status, visit.text[:300])
    assert visit.console_errors == [], visit.console_errors
    assert visit.outside_loopback() == [], visit.outside_loopback()
    policy = visit.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert "<script" not in visit.html


# --- the demo's scenarios --------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    with served_demo(tmp_path_factory.mktemp("demo")) as served:
        yield served


EXPECTED = {
    "checkout": ("PASS", "all 7 checks passed"),
    "payments": ("FAIL", "error ratio 1.06% (canary) vs allowed 0.10%"),
    "search": ("FAIL", "p50 latency 135.2 ms (canary) vs 50.0 ms (baseline)"),
    "inventory": ("INCONCLUSIVE", "not enough data: canary has 28 requests"),
}


def test_the_demo_prints_each_scenarios_page_and_chromium_shows_it(demo, browser, shots):
    base, printed = demo
    urls = dict(re.findall(r"^\s+(\w+)\s+(http://\S+/ui/analyses/[0-9a-f]{32})$", printed, re.M))
    assert set(urls) == set(EXPECTED), printed
    for service, (verdict, reason) in EXPECTED.items():
        # JavaScript off: the pages are plain server-rendered HTML.
        visit = browser.visit(urls[service], javascript=False, screenshot=shots / f"{service}.png")
        assert_clean(visit)
        text = visit.text
        assert f"\n{service} in shop\n" in text, text[:200]
        assert verdict in text and "live" in text and reason in text
        for section in ("Canary vs baseline", "Checks", "Actions taken", "Links"):
            assert section in text
        assert "canary 6d4f8b7c9a vs baseline 5c8d7e6f4b" in text
        if verdict != "INCONCLUSIVE":
            # Side by side, the checks with their p-values, and the four charts.
            assert re.search(r"success rate\s+[\d.]+%\s+[\d.]+%", text), text
            assert re.search(r"latency p99\s+[\d.]+ ms\s+[\d.]+ ms", text)
            assert "success_rate.slo" in text and "p-value / evidence" in text
            for chart in ("Latency distribution", "Latency quantiles", "Success rate over 1"):
                assert chart in text
            assert visit.html.count("<svg") == 4
    # The canary's timeline (the demo's requests name no rollout) and the index.
    timeline = browser.visit(f"{base}/ui/canaries/shop/payments/6d4f8b7c9a")
    assert_clean(timeline)
    assert "Canary 6d4f8b7c9a" in timeline.text and "FAIL" in timeline.text
    index = browser.visit(f"{base}/ui/", screenshot=shots / "index.png")
    assert_clean(index)
    for service in EXPECTED:
        assert service in index.text
    assert index.text.index("inventory") < index.text.index("checkout")  # newest first


def test_the_offline_page_of_a_replay_opens_clean(browser, tmp_path):
    page = tmp_path / "replay.html"
    replay = subprocess.run(
        [sys.executable, "-m", "cli", "replay", "--from-recording", str(RECORDING),
         "--service", "payments", "--namespace", "shop", "--canary", "6d4f8b7c9a",
         "--baseline", "5c8d7e6f4b", "--start", "2026-11-01T12:00:00Z",
         "--end", "2026-11-01T12:11:00Z", "--failure-limit", "2", "--html", str(page)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert replay.returncode == 1 and f"report written to {page}" in replay.stdout
    visit = browser.visit(page.as_uri(), javascript=False)
    # No server, so no headers: the policy travels in a meta tag, and nothing breaks it.
    assert visit.console_errors == [] and visit.requests == [page.as_uri()]
    text = visit.text
    assert "FAIL" in text and "replay of the past" in text and "Sequential evidence" in text
    assert "Success rate over 3 poll(s)" in text and "measurement #1" in text


# --- a failing canary with a traffic action, on the real stack -------------------------------


@pytest.fixture(scope="module")
def world(stack_factory, prometheus, tmp_path_factory):
    built = start_actions_world(
        stack_factory,
        prometheus.url,
        tmp_path_factory.mktemp("ui"),
        "ui",
        settings={
            "ROLLOUT_ANALYZER_UI_TOKEN": UI_TOKEN,
            "ROLLOUT_ANALYZER_PUBLIC_URL": PUBLIC_URL,
        },
    )
    yield built
    built.close()


def local(url: str, stack) -> str:
    assert url.startswith(PUBLIC_URL + "/ui/"), url
    return stack.url + url.removeprefix(PUBLIC_URL)


def test_a_failing_canary_page_shows_the_rollback_and_every_delivery(world, browser, shots):
    stack, _emulator, receivers, _ = world.parts
    world.reset()
    # Three polls of Argo's (the reuse window is 1 s): one event, one rollback, one message each.
    for poll in range(3):
        assert argo_call(stack, body("21"))[0] == Phase.FAILED
        if poll < 2:
            time.sleep(1.1)
    wait_for(lambda: world.weights() == {"stable": 100, "canary": 0}, 10, "the rollback")
    targets = ("slack", "dingtalk", "feishu", "generic")
    wait_for(lambda: all(receivers.accepted(p) for p in targets), 15, "the messages")
    assert all(len(receivers.accepted(p)) == 1 for p in targets)

    # Every message links to the page; the stored analysis gives the same URL.
    generic = receivers.accepted("generic")[0].body
    page = generic["links"]["View analysis"]
    assert page == f"{PUBLIC_URL}/ui/analyses/{generic['analysis_id']}"
    for path in ("slack", "dingtalk", "feishu"):
        assert page in str(receivers.accepted(path)[0].body), path
    with stack.client() as client:
        assert client.get(f"/v1/analyses/{generic['analysis_id']}").json()["report_url"] == page

    def delivered() -> PageVisit:
        return browser.visit(local(page, stack), headers=BASIC, screenshot=shots / "fail.png")

    # The deliveries' outcomes are written just after the receivers got them.
    wait_for(lambda: delivered().text.count("delivered") == 4, 10, "four deliveries on the page")
    visit = delivered()
    assert_clean(visit)
    text = visit.text
    assert "FAIL" in text and "errors in shop" in text and "rollout errors revision 21" in text
    assert re.search(r"traffic\.rollback\s+shop/errors\s+applied", text), text
    assert "primary: canary 30 / stable 70" in text and "primary: canary 0 / stable 100" in text
    assert "JSON Patch sent" in text
    for target in ("team-slack", "team-dingtalk", "team-feishu", "audit"):
        assert re.search(rf"{target}\s+delivered\s+1\s+200", text), (target, text)
    assert "Prometheus graph" in text and "Dashboard" in text
    # The event's analysis was the first poll; the revision's timeline has all three.
    assert "Success rate over 1 poll(s)" in text and text.count("this one") == 1
    timeline = browser.visit(f"{stack.url}/ui/rollouts/{NS}/errors?revision=21", headers=BASIC)
    assert_clean(timeline)
    assert "3 polls" in timeline.text and "Success rate over 3 poll(s)" in timeline.text
    assert len(re.findall(r"\tlive\t", timeline.text)) == 3, timeline.text
    assert "https://prometheus.example.com/graph?g0.expr=" in visit.html
    assert "https://grafana.example.com/d/canary?var-svc=errors" in visit.html


def test_the_timeline_shows_polls_events_and_argo_messages_as_text(world, browser, shots):
    stack, _emulator, receivers, _ = world.parts
    world.reset()
    assert argo_call(stack, body("22"))[0] == Phase.FAILED
    event = {"event": "rollout-aborted", "rollout": "errors", "namespace": NS,
             "revision": "22", "phase": "Degraded", "message": HOSTILE}  # fmt: skip
    with stack.client() as client:
        assert client.post("/v1/events/argo-rollouts", json=event).status_code == 202
    url = f"{stack.url}/ui/rollouts/{NS}/errors?revision=22"

    def timeline() -> PageVisit:
        return browser.visit(url, headers=BASIC, screenshot=shots / "timeline.png")

    wait_for(lambda: "rollout-aborted" in timeline().text, 15, "Argo's event on the timeline")
    visit = timeline()
    assert_clean(visit)
    text = visit.text
    assert "errors in shop" in text and "Rollout revision 22" in text
    assert re.search(r"verdict\s+fail", text) and "traffic.rollback applied" in text
    # The hostile message is text on the page: no element, no request to evil.example.
    assert HOSTILE in text
    # Argo's event has no analysis: its message links to this timeline.
    argo = [m.body for m in receivers.accepted("generic") if m.body["event"] == "rollout-aborted"]
    assert argo[0]["links"]["View timeline"] == f"{PUBLIC_URL}/ui/rollouts/{NS}/errors?revision=22"
    assert "&lt;script&gt;" in visit.html and "<img src=https" not in visit.html
    # The revision list and the index.
    assert re.search(r"Recent revisions\s+revision\s+last poll\s+last verdict\s+22\s", text), text
    index = browser.visit(f"{stack.url}/ui/", headers=BASIC)
    assert_clean(index)
    assert "errors" in index.text and "revision 22" in index.text


# --- who may read them --------------------------------------------------------------------------


def test_pages_need_credentials_and_the_ui_token_opens_only_ui(world):
    stack, *_ = world.parts
    bearer_ui = {"Authorization": f"Bearer {UI_TOKEN}"}
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        for path in ("/ui/", "/ui/rollouts/shop/errors", "/ui/analyses/" + "0" * 32):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert refused.headers["www-authenticate"].startswith("Basic ")
            assert "authorization" in refused.text and "Traceback" not in refused.text
            wrong = "Basic " + base64.b64encode(b"oncall:not-the-token").decode()
            assert client.get(path, headers={"Authorization": wrong}).status_code == 401
        for headers in (BASIC, bearer_ui, AUTH):
            assert client.get("/ui/", headers=headers).status_code == 200
        # The read-only token never opens the API.
        for headers in (BASIC, bearer_ui):
            assert client.get("/v1/dead-letters", headers=headers).status_code == 401
            assert client.get("/v1/analyses/" + "0" * 32, headers=headers).status_code == 401
        # Bad input: 4xx naming the field, as HTML.
        bad = client.get("/ui/analyses/not-an-id", headers=BASIC)
        assert bad.status_code == 422 and "analysis_id" in bad.text
        missing = client.get("/ui/analyses/" + "0" * 32, headers=BASIC)
        assert missing.status_code == 404 and "no such analysis" in missing.text
        bad_name = client.get("/ui/rollouts/shop/%3Cscript%3E", headers=BASIC)
        assert bad_name.status_code == 422 and "rollout" in bad_name.text
        assert "<script>" not in bad_name.text
        for path, field in (
            ("/ui/rollouts/shop/errors?revision=%3Cb%3E", "revision"),
            ("/ui/rollouts/" + "n" * 300 + "/errors", "namespace"),
            ("/ui/canaries/shop/%00/c1", "service"),
            ("/ui/canaries/shop/errors/%E2%80%AE", "canary"),
            ("/ui/analyses/" + "A" * 32, "analysis_id"),
        ):
            answer = client.get(path, headers=BASIC)
            assert answer.status_code == 422 and field in answer.text, (path, answer.text)


def test_an_auth_proxy_header_opens_ui_and_not_v1(stack_factory):
    stack = stack_factory(
        "uiproxy", workers=0, settings={"ROLLOUT_ANALYZER_UI_AUTH_HEADER": "X-Auth-Request-User"}
    )
    signed_in = {"X-Auth-Request-User": "alice@example.com"}
    with httpx.Client(base_url=stack.url, timeout=10) as client:
        assert client.get("/ui/").status_code == 401
        assert client.get("/ui/", headers={"X-Auth-Request-User": ""}).status_code == 401
        assert client.get("/ui/", headers=signed_in).status_code == 200
        assert client.get("/v1/dead-letters", headers=signed_in).status_code == 401
