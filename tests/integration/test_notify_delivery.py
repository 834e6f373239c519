"""Notification delivery over real HTTP to local chat receivers, dead letters in a real Redis.

The receivers (tests/support/chat_receivers.py) validate payloads and signatures the way the
services document them and answer like the services do; scripted answers reproduce outages.
Backoff sleeps are recorded instead of slept, except where noted.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qs

import httpx
import pytest
import redis

from tests.support.chat_receivers import Answer, ChatReceivers
from tests.support.procs import RedisServer, free_port
from worker.notify import (
    ChatTarget,
    DeadLetters,
    DeliveryResult,
    Notification,
    RateLimiter,
    deliver,
    notify,
)

pytestmark = pytest.mark.integration

DINGTALK_SECRET = "SECdingtalk-test-0f9e"
FEISHU_SECRET = "feishu-test-secret-77"
GENERIC_SECRET = "generic-hmac-secret-31"
KINDS = ("slack", "teams", "dingtalk", "wecom", "feishu", "generic")


class SleepRecorder:
    """Stands in for time.sleep: remembers the backoff waits deliver() asked for."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def receivers() -> Iterator[ChatReceivers]:
    with ChatReceivers(
        dingtalk_secret=DINGTALK_SECRET, feishu_secret=FEISHU_SECRET, generic_secret=GENERIC_SECRET
    ) as rx:
        yield rx


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=5.0) as http:
        yield http


@pytest.fixture
def redis_client(redis_flushed: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_flushed.url)
    try:
        yield client
    finally:
        client.close()


def chat_target(rx: ChatReceivers, kind: str, **overrides: object) -> ChatTarget:
    secrets = {"dingtalk": DINGTALK_SECRET, "feishu": FEISHU_SECRET, "generic": GENERIC_SECRET}
    fields: dict[str, object] = {"name": f"{kind}-ops", "kind": kind, "url": rx.url(kind)}
    if kind in secrets:
        fields["secret"] = secrets[kind]
    fields.update(overrides)
    return ChatTarget.model_validate(fields)


def verdict(**overrides: object) -> Notification:
    fields: dict[str, object] = {
        "analysis_id": "an-42",
        "service": "payments",
        "namespace": "prod",
        "rollout": "payments",
        "revision": "12",
        "verdict": "fail",
        "score": 31.0,
        "reasons": ["error rate 3.2% vs baseline 0.4%"],
        "error_budget": {"slo": 0.999, "burn_canary": 32.0, "burn_baseline": 4.0},
        "requests": {"canary": 900, "baseline": 8100},
        "actions": [{"type": "abort", "target": "Rollout prod/payments", "status": "applied"}],
        "links": {"Dashboard": "https://grafana.example/d/payments"},
        "time": datetime(2026, 1, 1, tzinfo=UTC),
    }
    fields.update(overrides)
    return Notification.model_validate(fields)


# --- delivery ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_delivered_on_the_first_try(
    receivers: ChatReceivers, client: httpx.Client, kind: str
) -> None:
    result = deliver(client, chat_target(receivers, kind), verdict(), sleep=SleepRecorder())
    assert result == DeliveryResult(f"{kind}-ops", "delivered", 1, 202 if kind == "teams" else 200)
    (message,) = receivers.accepted(kind)
    assert "payments" in message.raw.decode()
    assert receivers.rejected(kind) == []


def test_two_server_errors_then_success_delivers_once(
    receivers: ChatReceivers, client: httpx.Client
) -> None:
    receivers.script("slack", Answer.status_only(500), Answer.status_only(503))
    sleep = SleepRecorder()
    result = deliver(client, chat_target(receivers, "slack"), verdict(), sleep=sleep)
    assert (result.status, result.attempts, result.http_status) == ("delivered", 3, 200)
    assert receivers.hits("slack") == 3
    assert len(receivers.accepted("slack")) == 1
    assert len(sleep.waits) == 2 and all(wait > 0 for wait in sleep.waits)


def test_retry_after_is_honoured(receivers: ChatReceivers, client: httpx.Client) -> None:
    receivers.script("teams", Answer.rate_limited(retry_after="1"))
    sleep = SleepRecorder()
    result = deliver(client, chat_target(receivers, "teams"), verdict(), sleep=sleep)
    assert (result.status, result.attempts) == ("delivered", 2)
    assert sleep.waits == [1.0]


def test_retry_after_is_really_waited_with_the_default_sleep(
    receivers: ChatReceivers, client: httpx.Client
) -> None:
    receivers.script("wecom", Answer.rate_limited(retry_after="1"))
    result = deliver(client, chat_target(receivers, "wecom"), verdict())
    assert (result.status, result.attempts) == ("delivered", 2)
    first, second = receivers.hits("wecom"), len(receivers.accepted("wecom"))
    assert (first, second) == (2, 1)


def test_a_long_retry_after_is_capped(receivers: ChatReceivers, client: httpx.Client) -> None:
    receivers.script("slack", Answer.rate_limited(retry_after="3600"))
    sleep = SleepRecorder()
    result = deliver(
        client, chat_target(receivers, "slack"), verdict(), max_wait_seconds=5, sleep=sleep
    )
    assert result.status == "delivered"
    assert sleep.waits == [5.0]


def test_server_errors_forever_fail_and_land_in_dead_letters(
    receivers: ChatReceivers, client: httpx.Client, redis_client: redis.Redis
) -> None:
    receivers.always("feishu", Answer.status_only(500, "internal error"))
    target = chat_target(receivers, "feishu")
    result = deliver(client, target, verdict(), sleep=SleepRecorder())
    assert (result.status, result.attempts, result.http_status) == ("failed", 4, 500)
    assert result.reason == "HTTP 500: internal error"
    assert receivers.hits("feishu") == 4

    dead_letters = DeadLetters(redis_client)
    entry_id = dead_letters.push(result, verdict())
    assert dead_letters.count() == 1
    (entry,) = dead_letters.list(10)
    assert entry["id"] == entry_id
    assert entry["target"] == "feishu-ops"
    assert entry["result"]["reason"] == "HTTP 500: internal error"
    assert entry["notification"]["service"] == "payments"
    raw_entries = redis_client.lrange("rollout-analyzer:dead-letters", 0, -1)
    stored = "".join(r.decode() if isinstance(r, bytes) else r for r in raw_entries)
    for leaked in (FEISHU_SECRET, receivers.url("feishu")):
        assert leaked not in stored

    # The service recovers: retry_all delivers the letter and removes it.
    receivers.always("feishu", None)
    targets = {target.name: target}
    results = dead_letters.retry_all(
        lambda name, n: deliver(client, targets[name], n, sleep=SleepRecorder())
    )
    assert [r.status for r in results] == ["delivered"]
    assert dead_letters.count() == 0
    assert len(receivers.accepted("feishu")) == 1


def test_wrong_dingtalk_secret_is_rejected_and_not_retried(
    receivers: ChatReceivers, client: httpx.Client
) -> None:
    target = chat_target(receivers, "dingtalk", secret="SECwrong-secret")
    result = deliver(client, target, verdict(), sleep=SleepRecorder())
    assert (result.status, result.attempts, result.http_status) == ("failed", 1, 200)
    assert result.reason.startswith("dingtalk error 310000: sign not match")
    assert "SECwrong-secret" not in result.reason
    assert receivers.accepted("dingtalk") == []
    assert len(receivers.rejected("dingtalk")) == 1


def test_feishu_rejects_a_timestamp_more_than_an_hour_off(client: httpx.Client) -> None:
    with ChatReceivers(feishu_secret=FEISHU_SECRET, clock=lambda: 1_767_225_600.0) as rx:
        target = chat_target(rx, "feishu")
        late = deliver(client, target, verdict(), clock=lambda: 1_767_225_600.0 + 3601)
        on_time = deliver(client, target, verdict(), clock=lambda: 1_767_225_600.0 + 3500)
    assert (late.status, late.attempts) == ("failed", 1)
    assert late.reason.startswith("feishu error 19021")
    assert on_time.status == "delivered"


def test_each_retry_is_signed_afresh(client: httpx.Client) -> None:
    ticks = itertools.count(1)
    clock = lambda: 1000.0 * next(ticks)  # noqa: E731 - every reading is a later time
    with ChatReceivers(dingtalk_secret=DINGTALK_SECRET, clock=lambda: 3000.0) as rx:
        rx.script("dingtalk", Answer.status_only(502))
        target = chat_target(rx, "dingtalk")
        result = deliver(client, target, verdict(), clock=clock, sleep=SleepRecorder())
        (accepted,) = rx.accepted("dingtalk")
    assert result.status == "delivered"
    signed_at = int(parse_qs(accepted.query)["timestamp"][0])
    assert signed_at > 1_000_000  # not the first attempt's timestamp (1000 s, in ms)


@pytest.mark.parametrize(
    ("kind", "rate_limited"),
    [
        ("dingtalk", {"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"}),
        ("wecom", {"errcode": 45009, "errmsg": "api freq out of limit"}),
        ("feishu", {"code": 11232, "msg": "frequency limited"}),
    ],
)
def test_service_rate_limit_codes_in_a_200_answer_are_retried(
    receivers: ChatReceivers, client: httpx.Client, kind: str, rate_limited: dict[str, object]
) -> None:
    receivers.script(kind, Answer.json(rate_limited))
    result = deliver(client, chat_target(receivers, kind), verdict(), sleep=SleepRecorder())
    assert (result.status, result.attempts) == ("delivered", 2)
    assert len(receivers.accepted(kind)) == 1


def test_other_service_error_codes_fail_at_once(
    receivers: ChatReceivers, client: httpx.Client
) -> None:
    receivers.script("wecom", Answer.json({"errcode": 93000, "errmsg": "invalid webhook url"}))
    result = deliver(client, chat_target(receivers, "wecom"), verdict(), sleep=SleepRecorder())
    assert (result.status, result.attempts) == ("failed", 1)
    assert result.reason == "wecom error 93000: invalid webhook url"


def test_slack_client_errors_fail_at_once_with_slacks_reason(
    receivers: ChatReceivers, client: httpx.Client
) -> None:
    receivers.script("slack", Answer.status_only(404, "no_service"))
    result = deliver(client, chat_target(receivers, "slack"), verdict(), sleep=SleepRecorder())
    assert (result.status, result.attempts, result.http_status) == ("failed", 1, 404)
    assert result.reason == "HTTP 404: no_service"


def test_slow_receiver_beyond_the_timeout_is_retried_then_fails(receivers: ChatReceivers) -> None:
    receivers.always("slack", Answer.slow(3.0))
    sleep = SleepRecorder()
    with httpx.Client(timeout=0.3) as impatient:
        result = deliver(
            impatient, chat_target(receivers, "slack"), verdict(), max_attempts=3, sleep=sleep
        )
    assert (result.status, result.attempts, result.http_status) == ("failed", 3, None)
    assert result.reason == "timeout: ReadTimeout"
    assert receivers.hits("slack") == 3
    assert len(sleep.waits) == 2


def test_unreachable_target_is_retried_and_the_url_stays_out_of_the_reason(
    client: httpx.Client,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook/secret-path-token"
    target = ChatTarget(name="gone", kind="slack", url=url)
    result = deliver(client, target, verdict(), max_attempts=2, sleep=SleepRecorder())
    assert (result.status, result.attempts) == ("failed", 2)
    assert result.reason.startswith("network error: ConnectError")
    assert "secret-path-token" not in result.reason


def test_missing_url_configuration_fails_without_a_request(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_TEST_UNSET_URL", raising=False)
    target = ChatTarget(name="unset", kind="teams", url_env="NOTIFY_TEST_UNSET_URL")
    result = deliver(client, target, verdict())
    assert (result.status, result.attempts) == ("failed", 0)
    assert "NOTIFY_TEST_UNSET_URL" in result.reason


# --- Redis-backed helpers ------------------------------------------------------------------------


def test_rate_limiter_allows_per_minute_per_key(redis_client: redis.Redis) -> None:
    now = [1_767_225_600.0]
    limiter = RateLimiter(redis_client, clock=lambda: now[0])
    assert [limiter.allow("prod/payments|slack", 3) for _ in range(5)] == [
        True, True, True, False, False,
    ]  # fmt: skip
    assert limiter.allow("prod/orders|slack", 3) is True  # another rollout has its own budget
    now[0] += 60  # next minute
    assert limiter.allow("prod/payments|slack", 3) is True
    (counter,) = redis_client.keys("rollout-analyzer:notify-rate:prod/payments|slack:*")[:1]
    assert 0 < redis_client.ttl(counter) <= 120


def test_notify_filters_by_severity_rate_limits_and_dead_letters(
    receivers: ChatReceivers, client: httpx.Client, redis_client: redis.Redis
) -> None:
    receivers.always("wecom", Answer.status_only(500))
    targets = [
        chat_target(receivers, "slack", rate_limit_per_minute=1),
        chat_target(receivers, "teams", min_severity="error"),
        chat_target(receivers, "wecom"),
    ]
    dead_letters = DeadLetters(redis_client)
    limiter = RateLimiter(redis_client)
    sleep = SleepRecorder()

    first = notify(
        client, targets, verdict(verdict="inconclusive"),
        rate_limiter=limiter, dead_letters=dead_letters, max_attempts=2, sleep=sleep,
    )  # fmt: skip
    assert [(r.target, r.status) for r in first] == [
        ("slack-ops", "delivered"),
        ("teams-ops", "suppressed"),  # inconclusive is "warn", below the target's "error"
        ("wecom-ops", "failed"),
    ]
    second = notify(client, targets[:1], verdict(), rate_limiter=limiter, sleep=sleep)
    assert [(r.status, r.reason) for r in second] == [("suppressed", "rate limited")]
    assert len(receivers.accepted("slack")) == 1
    assert receivers.hits("teams") == 0
    assert [entry["target"] for entry in dead_letters.list()] == ["wecom-ops"]


def test_dead_letters_are_capped_listed_newest_first_and_droppable(
    redis_client: redis.Redis,
) -> None:
    dead_letters = DeadLetters(redis_client, key="test:dead", max_len=3)
    ids = [
        dead_letters.push(DeliveryResult(f"t{i}", "failed", 4, 500, "HTTP 500"), verdict())
        for i in range(5)
    ]
    assert dead_letters.count() == 3
    assert [entry["target"] for entry in dead_letters.list(10)] == ["t4", "t3", "t2"]
    assert [entry["target"] for entry in dead_letters.list(1)] == ["t4"]
    assert dead_letters.drop(ids[0]) is False  # trimmed away already
    assert dead_letters.drop(ids[3]) is True
    assert [entry["target"] for entry in dead_letters.list()] == ["t4", "t2"]


def test_retry_all_keeps_what_still_fails_and_counts_retries(redis_client: redis.Redis) -> None:
    dead_letters = DeadLetters(redis_client)
    dead_letters.push(DeliveryResult("ok-now", "failed", 4, 500, "HTTP 500"), verdict())
    dead_letters.push(DeliveryResult("still-down", "failed", 4, 500, "HTTP 500"), verdict())

    def redeliver(name: str, notification: Notification) -> DeliveryResult:
        if name == "ok-now":
            return DeliveryResult(name, "delivered", 1, 200)
        return DeliveryResult(name, "failed", 4, 503, "HTTP 503: maintenance")

    results = dead_letters.retry_all(redeliver)
    assert [(r.target, r.status) for r in results] == [
        ("ok-now", "delivered"),
        ("still-down", "failed"),
    ]
    (entry,) = dead_letters.list()
    assert (entry["target"], entry["retries"]) == ("still-down", 1)
    assert entry["result"]["reason"] == "HTTP 503: maintenance"
    assert json.loads(json.dumps(entry))["notification"]["analysis_id"] == "an-42"
