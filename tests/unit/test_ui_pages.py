"""The report pages without a server: escaping, the CSP, generic sections, auth rules, history
bookkeeping (fakeredis) and the CLI's offline `--html`."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import fakeredis
import pytest
from click.testing import CliRunner
from pydantic import SecretStr
from starlette.requests import Request

import analysis
from analysis.durations import format_time
from cli.main import cli
from webhooks.ui import render
from webhooks.ui.auth import UiAuth
from webhooks.ui.charts import bucket_shares
from webhooks.ui.data import EventView, UiData
from worker.history import History, poll_summary, read_summary
from worker.keyspace import Keys

EVIL = '<script>alert(1)</script><img src=x onerror="alert(2)">'
RECORDING = Path(analysis.__file__).parent / "data" / "demo-recording.json"


def result(**changes) -> dict:
    base = {
        "analysis_id": "a" * 32,
        "verdict": "fail",
        "score": 50.0,
        "reasons": ["canary slower"],
        "service": "checkout",
        "namespace": "shop",
        "canary": "c1",
        "baseline": "b1",
        "rollout": "checkout",
        "revision": "4",
        "policy": "default",
        "window": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:05:00Z", "seconds": 300},
        "requests": {"canary": 1000, "baseline": 3000},
        "errors": {"canary": 10, "baseline": 3},
        "metrics": {
            "success_rate": {"canary": 0.99, "baseline": 0.999},
            "latency_seconds": {"p99": {"canary": 0.4, "baseline": 0.2}},
            "error_budget": {"slo": 0.999, "burn_canary": 10.0, "burn_baseline": 1.0},
        },
        "histograms": {
            "canary": {"0.1": 500, "0.5": 900, "+Inf": 1000},
            "baseline": {"0.1": 2000, "0.5": 2900, "+Inf": 3000},
        },
        "checks": [
            {
                "name": "latency.p99.regression",
                "verdict": "fail",
                "critical": True,
                "weight": 1,
                "canary": 0.4,
                "baseline": 0.2,
                "limit": 1.2,
                "p_value": 1e-9,
                "method": "binomial-exact",
                "reason": "p99 x2.0",
            },
        ],
        "source": {"kind": "prometheus", "round_trips": 1, "queries": ["sum(rate(x[5m]))"]},
    }
    base.update(changes)
    return base


def analysis_page(res: dict, **kwargs) -> str:
    record = {"id": res["analysis_id"], "status": "done", "result": res, "spec": {"end": None}}
    context = render.analysis_context(
        record,
        actions=kwargs.get("actions", []),
        event=kwargs.get("event"),
        polls=kwargs.get("polls", []),
        links=kwargs.get("links", []),
        timeline_url="/ui/rollouts/shop/checkout?revision=4",
    )
    return render.page("analysis.html", **context)


def test_every_value_from_a_request_or_prometheus_is_text():
    hostile = result(
        service=EVIL,
        namespace=EVIL,
        canary=EVIL,
        reasons=[EVIL],
        histograms={"canary": {EVIL: 5, "+Inf": 10}, "baseline": {}},
        metrics={
            "success_rate": {"canary": 0.9, "baseline": 0.99},
            "latency_seconds": {EVIL: {"canary": 0.1, "baseline": 0.1}},
            "error_budget": {},
        },
        checks=[{"name": EVIL, "verdict": EVIL, "reason": EVIL, "method": EVIL}],
        sequence={"note": EVIL, "polls": [{EVIL: EVIL}]},
        source={"kind": EVIL, "round_trips": 1, "queries": [EVIL]},
    )
    event = EventView("e#1", "verdict", 0.0, EVIL, EVIL, "a" * 32, EVIL,
                      deliveries=[{"target": EVIL, "status": EVIL, "reason": EVIL}])  # fmt: skip
    actions = [{"type": EVIL, "target": EVIL, "status": EVIL, "reason": EVIL,
                "from_weights": {EVIL: {"canary": 1}}, "patch": [{"op": EVIL}]}]  # fmt: skip
    html = analysis_page(hostile, event=event, actions=actions, links=[(EVIL, "https://x/?a=<")])
    assert "<script" not in html and "<img" not in html
    assert html.count("&lt;script&gt;") >= 15
    # A class name built from a value cannot carry markup or pick arbitrary classes.
    assert 'class="chip scriptalertscriptimgsrcxonerro"' in html


def test_check_values_show_in_their_units():
    html = analysis_page(
        result(
            checks=[
                {"name": "success_rate.slo", "verdict": "fail", "canary": 0.9894,
                 "baseline": 0.9994, "limit": 0.999},
                {"name": "latency.p99.regression", "verdict": "pass", "canary": 0.242,
                 "baseline": 0.2421, "limit": 1.2},
                {"name": "error_budget.fast_burn", "verdict": "pass", "canary": 10.55,
                 "baseline": 0.61, "limit": 14.4},
            ]
        )
    )  # fmt: skip
    cells = re.findall(r'<td class="num">([^<]*)</td>', html)
    for shown in ("98.94%", "99.94%", "99.90%", "242.0 ms", "242.1 ms", "x1.2", "10.55x", "14.4x"):
        assert shown in cells, (shown, cells)


def test_the_stylesheet_is_the_only_style_the_policy_allows():
    html = analysis_page(result())
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    assert len(styles) == 1
    digest = base64.b64encode(hashlib.sha256(styles[0].encode()).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in render.CSP
    assert "script-src" not in render.CSP and "default-src 'none'" in render.CSP
    assert " style=" not in html  # inline style attributes would be blocked


def test_sequence_and_live_render_when_present_and_the_page_still_renders_without():
    sequence = {
        "id": "6db6f0b2700922e54a20f6d0", "started_at": 1793534460.0, "polls": 2, "alpha": 0.01,
        "interval": {"start": "2026-11-01T12:11:00Z", "end": "2026-11-01T12:11:00Z",
                     "seconds": 0},
        "history": [
            {"poll": 1, "end": 1793534760.0, "interval_seconds": 300,
             "requests": {"canary": 5023, "baseline": 14784}, "verdict": "pass",
             "max_e_value": 3.5},
            {"poll": 2, "end": 1793534820.0, "interval_seconds": 60,
             "success_rate": {"canary": 0.9894, "baseline": 0.9994}, "verdict": "fail",
             "max_e_value": 3.7e32},
        ],
    }  # fmt: skip
    window = {"start": "2026-11-01T12:01:00Z", "end": "2026-11-01T12:11:00Z", "seconds": 600.5}
    with_sequence = analysis_page(result(live=False, sequence=sequence, window=window))
    assert "(600.5 s)" in with_sequence and "(0 s)" in with_sequence
    assert "Sequential evidence" in with_sequence and "2 poll(s) since 2026-11-01" in with_sequence
    assert "5,023 / 14,784" in with_sequence and "98.94% / 99.94%" in with_sequence
    assert "3.7e+32" in with_sequence and "replay of the past" in with_sequence
    # A shape this page does not know yet is still shown, generically.
    other = analysis_page(result(sequence={"polls": [{"n": 1, "e_value": 31.5}]}))
    assert "Sequential evidence" in other and "e_value" in other and "31.5" in other
    without = analysis_page(result())
    assert "Sequential evidence" not in without and ">live<" in without


def test_pages_of_running_and_failed_analyses_say_so():
    spec = {"service": "checkout", "namespace": "shop", "canary": "c1", "baseline": "b1",
            "end": None}  # fmt: skip
    running = render.page(
        "analysis.html",
        **render.analysis_context(
            {"id": "b" * 32, "status": "running", "spec": spec},
            actions=[],
            event=None,
            polls=[],
            links=[],
            timeline_url=None,
        ),
    )
    assert "The analysis is running" in running and 'http-equiv="refresh"' in running
    failed = render.page(
        "analysis.html",
        **render.analysis_context(
            {"id": "b" * 32, "status": "error", "spec": spec, "error": {"error": "timeout"}},
            actions=[],
            event=None,
            polls=[],
            links=[],
            timeline_url=None,
        ),
    )
    assert "The metrics could not be read: timeout" in failed and "refresh" not in failed


def test_bucket_shares_turn_cumulative_counts_into_shares():
    shares = bucket_shares({"+Inf": 100, "0.1": 50, "0.5": 90})
    assert list(shares) == ["0.1", "0.5", "+Inf"]
    assert shares == pytest.approx({"0.1": 0.5, "0.5": 0.4, "+Inf": 0.1})
    assert bucket_shares({}) == {}
    # A bucket whose rate came out a hair below the previous one's holds nothing, not less.
    dipped = bucket_shares({"0.1": 50.0, "0.5": 49.9, "1.0": 90.0, "+Inf": 100.0})
    assert dipped == pytest.approx({"0.1": 0.5, "0.5": 0.0, "1.0": 0.4, "+Inf": 0.1})


def _request(headers: dict[str, str]) -> Request:
    # A stand-in for Starlette's request: UiAuth reads only its headers.
    return cast(Request, SimpleNamespace(headers={k.lower(): v for k, v in headers.items()}))


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_ui_auth_accepts_either_token_as_bearer_or_basic_password_and_nothing_else():
    settings = SimpleNamespace(
        api_token=SecretStr("api"), ui_token=SecretStr("ui"), ui_auth_header=None
    )
    auth = UiAuth(settings)  # type: ignore[arg-type]
    for ok in ({"Authorization": "Bearer ui"}, {"Authorization": "Bearer api"}, basic("x", "ui")):
        assert auth.allows(_request(ok)), ok
    for bad in (
        {},
        {"Authorization": "Bearer nope"},
        basic("ui", "nope"),
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon-ui").decode()},
        {"X-Auth-Request-User": "alice"},  # no proxy header configured: it means nothing
    ):
        assert not auth.allows(_request(bad)), bad
    open_settings = SimpleNamespace(api_token=None, ui_token=None, ui_auth_header=None)
    assert UiAuth(open_settings).open  # type: ignore[arg-type]


def test_history_keeps_each_poll_once_and_the_pages_read_it_back():
    server = fakeredis.FakeServer()
    history = History(fakeredis.FakeRedis(server=server), "ra:")
    first = result(analysis_id="1" * 32, live=True)
    second = result(
        analysis_id="2" * 32,
        live=True,
        verdict="pass",
        window={"start": "x", "end": format_time(1767225900 + 60), "seconds": 300},
    )
    history.poll(first)
    history.poll(first)  # a redelivered task
    history.poll(second)
    history.event("shop/checkout@4", "shop/checkout@4#1", 1.0, "1" * 32)
    history.step("shop/checkout@4#1", "notify:team")
    client = fakeredis.FakeRedis(server=server)
    client.set(Keys("ra:").event("shop/checkout@4#1"), json.dumps(
        {"kind": "verdict", "verdict": "fail", "analysis_id": "1" * 32, "time": 1.0}))  # fmt: skip
    client.set("ra:step:shop/checkout@4#1:notify:team", json.dumps(
        {"target": "team", "status": "delivered", "attempts": 1, "http_status": 200}))  # fmt: skip

    async def read():
        data = UiData(fakeredis.FakeAsyncRedis(server=server), "ra:")
        return await data.timeline("shop/checkout@4", "shop/checkout"), await data.rollouts()

    timeline, rollouts = asyncio.run(read())
    assert [p["analysis_id"] for p in timeline.polls] == ["1" * 32, "2" * 32]
    assert [p["verdict"] for p in timeline.polls] == ["fail", "pass"]
    assert timeline.events[0].deliveries == [
        {"target": "team", "status": "delivered", "attempts": 1, "http_status": 200}
    ]
    assert [k for k, _, _ in timeline.revisions] == ["shop/checkout@4"]
    assert [(k, last["analysis_id"]) for k, _, last in rollouts] == [("shop/checkout@4", "2" * 32)]


def test_a_revisions_poll_history_keeps_its_last_hour_compact():
    """120 polls per rollout revision (an hour at 30 s), each kept without nulls and with
    6 significant digits; the pages read every field back, also from a summary kept in full."""
    server = fakeredis.FakeServer()
    history = History(fakeredis.FakeRedis(server=server), "ra:")
    metrics = result()["metrics"]
    metrics["success_rate"] = {"canary": 0.99912345678901, "baseline": None}
    for n in range(130):
        end = format_time(1767225900 + 30 * n)
        poll = result(analysis_id=f"{n:032x}", live=True, metrics=metrics, window={"end": end})
        history.poll(poll)
    key = "ra:history:polls:shop/checkout@4"
    stored = fakeredis.FakeRedis(server=server).zrange(key, 0, -1)
    assert len(stored) == 120
    assert b"null" not in stored[0] and b'"canary":0.999123' in stored[0]
    shown = asyncio.run(UiData(fakeredis.FakeAsyncRedis(server=server), "ra:").polls(key[17:]))
    assert [p["analysis_id"] for p in shown] == [f"{n:032x}" for n in range(10, 130)]
    full = poll_summary(poll, live=True)
    assert shown[-1] == {**full, "success_rate": {"canary": 0.999123}}
    assert read_summary(json.dumps(full)) == full  # kept in full by an earlier version
    assert "99.91%" in analysis_page(poll, polls=shown)


def test_cli_analyze_and_replay_write_the_page_offline(tmp_path):
    runner = CliRunner()
    sides = ["--from-recording", str(RECORDING), "--namespace", "shop", "--service", "payments",
             "--canary", "6d4f8b7c9a", "--baseline", "5c8d7e6f4b"]  # fmt: skip
    page = tmp_path / "analyze.html"
    done = runner.invoke(cli, ["analyze", *sides, "--html", str(page)])
    assert done.exit_code == 1, done.output  # fail
    html = page.read_text()
    assert "payments" in html and ">fail<" in html and "<script" not in html
    assert '<meta http-equiv="Content-Security-Policy"' in html and html.count("<svg") == 4

    replayed = tmp_path / "replay.html"
    times = ["--start", format_time(1793534700.0), "--end", format_time(1793535060.0)]
    done = runner.invoke(cli, ["replay", *sides, *times, "--html", str(replayed)])
    assert done.exit_code == 1, done.output
    html = replayed.read_text()
    assert "replay of the past" in html and "measurement #1" in html

    denied = runner.invoke(cli, ["analyze", *sides, "--html", str(tmp_path / "no" / "x.html")])
    assert denied.exit_code != 0 and "cannot write" in done.output + denied.output
