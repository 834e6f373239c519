"""Payloads, signatures and escaping of the chat providers (no network).

Payloads are checked with the receivers' validators (written from each service's docs, not
from the providers) and on the specific fields a reader sees.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import ValidationError

from tests.support.chat_receivers import (
    VALIDATORS,
    check_dingtalk_signature,
    check_feishu_signature,
    check_generic_signature,
    validate_dingtalk,
    validate_wecom,
)
from worker.notify import (
    ChatTarget,
    Notification,
    TargetConfigError,
    build_request,
    render_markdown,
    render_plain,
    severity_allows,
)
from worker.notify.delivery import parse_retry_after
from worker.notify.fit import truncate_utf8
from worker.notify.providers import redact_url

NOW = 1_767_225_600.25  # 2026-01-01T00:00:00.25Z
KINDS = ("slack", "teams", "dingtalk", "wecom", "feishu", "discord", "generic")
SECRET = "SECtest-secret-5f1c"
URL_TOKEN = "tok-a9b8c7d6e5"


def make_notification(**overrides: object) -> Notification:
    fields: dict[str, object] = {
        "analysis_id": "an-123",
        "service": "checkout",
        "namespace": "shop",
        "rollout": "checkout-rollout",
        "revision": "7",
        "verdict": "fail",
        "previous_verdict": "pass",
        "score": 42.5,
        "reasons": ["success rate 97.1% < 99.5% threshold", "p99 latency 480ms vs 210ms"],
        "error_budget": {
            "slo": 0.999,
            "burn_canary": 14.2,
            "burn_baseline": 0.8,
            "burn_delta": 13.4,
            "excess_errors": 37,
            "budget_delta": None,
        },
        "requests": {"canary": 1200, "baseline": 10800},
        "actions": [
            {
                "type": "set_weights",
                "target": "VirtualService shop/checkout",
                "status": "applied",
                "reason": "verdict fail",
                "to_weights": {"stable": 100, "canary": 0},
            }
        ],
        "links": {
            "Prometheus graph": "http://prometheus:9090/graph?g0.expr=up",
            "Dashboard": "https://grafana.example/d/checkout",
        },
        "time": datetime(2026, 1, 1, tzinfo=UTC),
    }
    fields.update(overrides)
    return Notification.model_validate(fields)


def target(kind: str, **overrides: object) -> ChatTarget:
    fields: dict[str, object] = {
        "name": f"{kind}-team",
        "kind": kind,
        "url": f"https://chat.example/hook/{kind}?access_token={URL_TOKEN}",
    }
    if kind in ("dingtalk", "feishu", "generic"):
        fields["secret"] = SECRET
    fields.update(overrides)
    return ChatTarget.model_validate(fields)


def all_strings(value: object) -> list[str]:
    """Every string inside a JSON value: what a chat client could render."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in all_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in all_strings(v)]
    return []


# --- every provider ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_payload_is_what_the_service_accepts(kind: str) -> None:
    request = build_request(target(kind), make_notification(), NOW)
    assert VALIDATORS[kind](request.json_body) == []
    assert request.headers["Content-Type"].startswith("application/json")
    # The bytes sent are the JSON body.
    assert json.loads(request.content()) == request.json_body


@pytest.mark.parametrize("kind", ["slack", "teams", "dingtalk", "wecom", "feishu"])
def test_every_provider_says_the_same_things(kind: str) -> None:
    body = build_request(target(kind), make_notification(), NOW).json_body
    text = "\n".join(all_strings(body))
    for expected in (
        "checkout",  # service
        "shop/checkout-rollout",  # rollout
        "7",  # revision
        "FAIL",
        "42.5",  # score
        "PASS",  # previous verdict
        "97.1%",  # a reason
        "14.2x",  # error-budget burn
        "set",  # traffic action ...
        "stable 100 / canary 0",  # ... and the weights it set
        "https://grafana.example/d/checkout",  # link
    ):
        assert expected in text, f"{kind} message lacks {expected!r}"


def test_slack_uses_block_kit_with_link_buttons() -> None:
    body = build_request(target("slack"), make_notification(), NOW).json_body
    assert body["text"]  # notification fallback
    types = [block["type"] for block in body["blocks"]]
    assert types == ["header", "section", "section", "section", "context", "actions"]
    assert body["blocks"][0]["text"] == {
        "type": "plain_text",
        "text": "Canary FAIL: shop/checkout-rollout",
        "emoji": False,
    }
    buttons = body["blocks"][-1]["elements"]
    assert [(b["text"]["text"], b["url"]) for b in buttons] == [
        ("Prometheus graph", "http://prometheus:9090/graph?g0.expr=up"),
        ("Dashboard", "https://grafana.example/d/checkout"),
    ]


def test_teams_sends_an_adaptive_card_with_facts_and_open_url_actions() -> None:
    body = build_request(target("teams"), make_notification(), NOW).json_body
    (attachment,) = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert tuple(map(int, card["version"].split("."))) >= (1, 4)
    facts = next(e for e in card["body"] if e["type"] == "FactSet")["facts"]
    assert {"title": "Service", "value": "checkout"} in facts
    assert [a["type"] for a in card["actions"]] == ["Action.OpenUrl", "Action.OpenUrl"]
    assert card["body"][0]["color"] == "Attention"


def test_feishu_card_header_colour_follows_severity() -> None:
    fail = build_request(target("feishu"), make_notification(), NOW).json_body
    passed = build_request(target("feishu"), make_notification(verdict="pass"), NOW).json_body
    assert fail["msg_type"] == "interactive"
    assert fail["card"]["header"]["template"] == "red"
    assert passed["card"]["header"]["template"] == "green"
    assert passed["card"]["header"]["title"]["content"] == "Canary PASS: shop/checkout-rollout"


def test_generic_body_is_the_notification_as_json() -> None:
    notification = make_notification()
    body = build_request(target("generic"), notification, NOW).json_body
    assert Notification.model_validate(body) == notification


def test_argo_event_notifications_render() -> None:
    event = make_notification(verdict="rollout-aborted", event="rollout-aborted", score=None)
    assert event.severity == "warn"
    assert "rollout-aborted" in render_plain(event)
    for kind in KINDS:
        assert VALIDATORS[kind](build_request(target(kind), event, NOW).json_body) == []


# --- signatures (known answers computed here with hmac, independently of the providers) ----------


def test_dingtalk_signature_known_answer() -> None:
    request = build_request(target("dingtalk"), make_notification(), NOW)
    timestamp = "1767225600250"  # milliseconds
    expected = base64.b64encode(
        hmac.new(SECRET.encode(), f"{timestamp}\n{SECRET}".encode(), hashlib.sha256).digest()
    ).decode()
    query = parse_qs(urlsplit(request.url).query)
    assert query["timestamp"] == [timestamp]
    assert query["sign"] == [expected]
    assert query["access_token"] == [URL_TOKEN]  # the existing query is kept
    # base64's + / = must arrive percent-encoded, or DingTalk reads "+" as a space.
    raw_sign = urlsplit(request.url).query.split("sign=")[1]
    assert not set("+/=") & set(raw_sign)
    assert check_dingtalk_signature(urlsplit(request.url).query, SECRET, NOW) is None


def test_feishu_signature_known_answer() -> None:
    body = build_request(target("feishu"), make_notification(), NOW).json_body
    key = f"1767225600\n{SECRET}".encode()  # seconds
    expected = base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert body["timestamp"] == "1767225600"
    assert body["sign"] == expected
    assert check_feishu_signature(body, SECRET, NOW) is None


def test_generic_signature_covers_the_exact_body() -> None:
    request = build_request(target("generic"), make_notification(), NOW)
    expected = hmac.new(
        SECRET.encode(), b"1767225600." + request.content(), hashlib.sha256
    ).hexdigest()
    assert request.headers["X-Rollout-Analyzer-Signature"] == f"sha256={expected}"
    assert check_generic_signature(request.headers, request.content(), SECRET, NOW) is None
    tampered = request.content().replace(b"checkout", b"checkout-evil")
    assert check_generic_signature(request.headers, tampered, SECRET, NOW) == "bad signature"


def test_signatures_are_rejected_with_a_wrong_secret_or_an_old_timestamp() -> None:
    ding = build_request(target("dingtalk"), make_notification(), NOW)
    feishu = build_request(target("feishu"), make_notification(), NOW).json_body
    query = urlsplit(ding.url).query
    assert check_dingtalk_signature(query, "SECother", NOW) == "sign not match"
    assert check_feishu_signature(feishu, "other", NOW) == "sign match fail"
    two_hours_later = NOW + 7200
    assert "timestamp" in (check_dingtalk_signature(query, SECRET, two_hours_later) or "")
    assert "one hour" in (check_feishu_signature(feishu, SECRET, two_hours_later) or "")


def test_unsigned_targets_send_no_signature() -> None:
    ding = build_request(target("dingtalk", secret=None), make_notification(), NOW)
    feishu = build_request(target("feishu", secret=None), make_notification(), NOW).json_body
    assert "sign" not in parse_qs(urlsplit(ding.url).query)
    assert "sign" not in feishu and "timestamp" not in feishu


# --- escaping of user-derived text ---------------------------------------------------------------

HOSTILE = (
    "evil <!channel> <@U024BE7LH> <https://phish.example|click me> [docs](https://phish.example)"
    " <at id=all></at> <@all> **boom**\n### injected heading\r\nX-Injected: 1 & more"
)


@pytest.mark.parametrize("kind", KINDS)
def test_hostile_service_name_stays_inert(kind: str) -> None:
    notification = make_notification(service=HOSTILE, reasons=[HOSTILE], rollout="r<@all>")
    body = build_request(target(kind), notification, NOW).json_body
    assert VALIDATORS[kind](body) == []
    for text in all_strings(body):
        if kind == "generic":
            continue  # raw JSON data, not markup; receivers must escape it themselves
        # No mention or link syntax survives: Slack <!channel>/<@U..>/<url|text>,
        # WeCom <@user>, Feishu <at id=all>, and (outside Slack, which does not render
        # it) a markdown link [text](url).
        forbidden = ["<!channel>", "<@", "<https://phish", "<at "]
        if kind != "slack":
            forbidden.append("](https://phish")
        for syntax in forbidden:
            assert syntax not in text, f"{kind}: {syntax!r} in {text!r}"
        # The embedded newline cannot start a heading or a fake header line of its own.
        assert "\n### injected" not in text
        assert "\nX-Injected" not in text


def test_slack_escapes_its_three_control_characters() -> None:
    body = build_request(target("slack"), make_notification(service="a<b>&c"), NOW).json_body
    fields = body["blocks"][1]["fields"]
    assert fields[0]["text"] == "*Service:*\na&lt;b&gt;&amp;c"
    assert all(field["verbatim"] is True for field in fields)


def test_markdown_escapes_link_and_emphasis_syntax() -> None:
    markdown = render_markdown(make_notification(service="[x](http://e.vil) *y* <z>"))
    fullwidth = "\uff1cz\uff1e"  # <z> with full-width brackets: no tag can start
    assert r"**Service:** \[x\]\(http://e.vil\) \*y\* " + fullwidth in markdown


def test_header_values_carry_no_line_breaks() -> None:
    notification = make_notification(analysis_id="an-1\r\nX-Injected: yes", event="verdict\n")
    request = build_request(target("generic"), notification, NOW)
    for name, value in request.headers.items():
        assert "\r" not in value and "\n" not in value, name
    assert request.headers["X-Rollout-Analyzer-Analysis-Id"] == "an-1 X-Injected: yes"
    # httpx refuses header values with CR/LF; ours must pass.
    httpx.Request("POST", "http://127.0.0.1/", headers=request.headers)


def test_links_must_be_plain_http_urls() -> None:
    with pytest.raises(ValidationError, match="not an http"):
        make_notification(links={"x": "javascript:alert(1)"})
    with pytest.raises(ValidationError, match="not allowed"):
        make_notification(links={"x": "https://ok.example/a>b"})


# --- secrets never leak --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_no_secret_or_url_in_rendered_text_or_repr(kind: str) -> None:
    chat_target = target(kind)
    request = build_request(chat_target, make_notification(), NOW)
    for leaked in (SECRET, URL_TOKEN, "chat.example/hook"):
        assert leaked not in json.dumps(request.json_body, ensure_ascii=False)
        assert leaked not in repr(request)
        assert leaked not in repr(chat_target) and leaked not in str(chat_target)
    assert leaked not in render_markdown(make_notification())
    assert repr(request).startswith("PreparedRequest(url='https://chat.example/…'")


def test_redact_url_keeps_only_scheme_and_host() -> None:
    assert redact_url("https://oapi.dingtalk.com/robot/send?access_token=abc") == (
        "https://oapi.dingtalk.com/…"
    )
    assert redact_url("http://127.0.0.1:8080/x/y") == "http://127.0.0.1:8080/…"


# --- size limits ---------------------------------------------------------------------------------


def test_wecom_markdown_is_cut_to_4096_bytes_without_breaking_characters() -> None:
    reasons = [f"原因 {i}: 金丝雀错误率高于基线 — canary error rate too high" for i in range(300)]
    body = build_request(target("wecom"), make_notification(reasons=reasons), NOW).json_body
    content = body["markdown"]["content"]
    assert len(content.encode("utf-8")) <= 4096
    assert content.endswith("…(truncated)")
    assert "**Service:** checkout" in content  # the head of the message survives
    assert validate_wecom(body) == []


def test_dingtalk_markdown_is_cut_to_its_limit() -> None:
    reasons = [f"reason {i} " + "x" * 400 for i in range(100)]
    body = build_request(target("dingtalk"), make_notification(reasons=reasons), NOW).json_body
    assert len(body["markdown"]["text"].encode()) <= 20000
    assert validate_dingtalk(body) == []


def test_truncate_utf8_never_splits_a_character_or_leaves_a_dangling_escape() -> None:
    for limit in range(20, 60):
        cut = truncate_utf8("é" * 50 + "\\*", limit, marker="…")
        assert len(cut.encode()) <= limit
        assert not cut.removesuffix("…").endswith("\\")
    assert truncate_utf8("short", 100) == "short"


def test_slack_limits_hold_for_many_long_reasons() -> None:
    reasons = [f"reason {i} " + "y" * 450 for i in range(40)]
    body = build_request(target("slack"), make_notification(reasons=reasons), NOW).json_body
    assert VALIDATORS["slack"](body) == []
    assert "more" in body["blocks"][2]["text"]["text"]


# --- target configuration ------------------------------------------------------------------------


def test_target_needs_exactly_one_url_source() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        ChatTarget(name="t", kind="slack")
    with pytest.raises(ValidationError, match="exactly one"):
        ChatTarget.model_validate(
            {"name": "t", "kind": "slack", "url": "https://a/b", "url_env": "X"}
        )
    with pytest.raises(ValidationError, match="at most one"):
        ChatTarget.model_validate(
            {"name": "t", "kind": "feishu", "url": "https://a/b", "secret": "s", "secret_env": "S"}
        )


def test_url_and_secret_are_resolved_when_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secret"
    chat_target = ChatTarget(
        name="ops", kind="dingtalk", url_env="OPS_DINGTALK_URL", secret_file=secret_file
    )
    monkeypatch.delenv("OPS_DINGTALK_URL", raising=False)
    with pytest.raises(TargetConfigError, match="OPS_DINGTALK_URL") as missing:
        chat_target.resolve_url()
    assert "ops" in str(missing.value)
    monkeypatch.setenv("OPS_DINGTALK_URL", "https://oapi.dingtalk.com/robot/send?access_token=t1")
    secret_file.write_text("SECrotated\n")
    request = build_request(chat_target, make_notification(), NOW)
    assert request.url.startswith("https://oapi.dingtalk.com/robot/send?access_token=t1&")
    assert check_dingtalk_signature(urlsplit(request.url).query, "SECrotated", NOW) is None


def test_a_non_http_url_is_refused_without_echoing_it() -> None:
    chat_target = ChatTarget(name="t", kind="slack", url="ftp://secret-host/token123")
    with pytest.raises(TargetConfigError) as error:
        chat_target.resolve_url()
    assert "token123" not in str(error.value)


@pytest.mark.parametrize(
    ("minimum", "severity", "allowed"),
    [
        ("info", "info", True),
        ("warn", "info", False),
        ("warn", "warn", True),
        ("warn", "error", True),
        ("error", "warn", False),
    ],
)
def test_severity_allows(minimum: str, severity: str, allowed: bool) -> None:
    assert severity_allows(target("slack", min_severity=minimum), severity) is allowed


def test_severity_follows_the_verdict_unless_given() -> None:
    assert make_notification(verdict="pass").severity == "info"
    assert make_notification(verdict="inconclusive").severity == "warn"
    assert make_notification(verdict="fail").severity == "error"
    assert make_notification(verdict="pass", severity="warn").severity == "warn"


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("1", NOW) == 1.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:30 GMT", 1_767_225_600.0) == 30.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


def test_discord_pings_nobody_and_colours_by_severity() -> None:
    body = build_request(target("discord"), make_notification(service="@everyone"), NOW).json_body
    assert body["allowed_mentions"] == {"parse": []}
    (embed,) = body["embeds"]
    assert embed["color"] == 0xE01E5A  # fail: error red
    assert embed["title"] == "Canary FAIL: shop/checkout-rollout"
    passed = build_request(target("discord"), make_notification(verdict="pass"), NOW).json_body
    assert passed["embeds"][0]["color"] == 0x2EB67D


def test_an_unknown_chat_service_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValidationError) as refused:
        target("matrix")
    assert "unknown chat service 'matrix'" in str(refused.value)
    assert "discord" in str(refused.value) and "slack" in str(refused.value)
