"""Notification delivery over real HTTP to local chat receivers, dead letters in a real Redis.

The receivers (tests/support/chat_receivers.py) validate payloads and signatures the way the
services document them and answer like the services do; scripted answers reproduce outages.
One call is one attempt: a transient failure comes back as `RetryLater` (the Celery task turns
it into a countdown), so nothing here sleeps; tests drive the next attempt themselves.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import parse_qs

import httpx
import pytest
import redis

from tests.support.chat_receivers import Answer, ChatReceivers
from tests.support.procs import RedisServer, free_port
from worker.chat import ChatSender, RetryLater
from worker.notify import ChatTarget, DeadLetters, DeliveryResult, Notification, RateLimiter
from worker.notify.delivery import send_once
from worker.notify.holds import SPREAD, TargetHolds

pytestmark = pytest.mark.integration

DINGTALK_SECRET = "SECdingtalk-test-0f9e"
FEISHU_SECRET = "feishu-test-secret-77"
GENERIC_SECRET = "generic-hmac-secret-31"
KINDS = ("slack", "teams", "dingtalk", "wecom", "feishu", "discord", "generic")


NOW = 1_767_225_600.0


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


# --- one attempt --------------------------------------------------------------------------------


def once(client: httpx.Client, target: ChatTarget, now: float | None = None):
    return send_once(client, target, verdict(), time.time() if now is None else now, attempt=1)


@pytest.mark.parametrize("kind", KINDS)
def test_delivered_on_the_first_try(
    receivers: ChatReceivers, client: httpx.Client, kind: str
) -> None:
    result = once(client, chat_target(receivers, kind))
    status = {"teams": 202, "discord": 204}.get(kind, 200)
    assert result == DeliveryResult(f"{kind}-ops", "delivered", 1, status)
    (message,) = receivers.accepted(kind)
    assert "payments" in message.raw.decode()
    assert receivers.rejected(kind) == []


def test_retry_after_is_read_from_a_429(receivers: ChatReceivers, client: httpx.Client) -> None:
    receivers.script("teams", Answer.rate_limited(retry_after="7"))
    result = once(client, chat_target(receivers, "teams"))
    assert (result.status, result.http_status, result.retry_after) == ("retry", 429, 7.0)


def test_discord_says_how_long_to_wait_in_its_429_body(
    receivers: ChatReceivers, client: httpx.Client
) -> None:
    limited = {"message": "You are being rate limited.", "retry_after": 0.75, "global": False}
    receivers.script("discord", Answer.json(limited, status=429))
    result = once(client, chat_target(receivers, "discord"))
    assert (result.status, result.http_status, result.retry_after) == ("retry", 429, 0.75)
    receivers.script("discord", Answer.json({"code": 10015, "message": "Unknown Webhook"}, 404))
    unknown = once(client, chat_target(receivers, "discord"))
    assert (unknown.status, unknown.reason) == ("failed", "discord error 10015: Unknown Webhook")


def test_wrong_dingtalk_secret_is_rejected_and_not_retried(
    receivers: ChatReceivers, client: httpx.Client
) -> None:
    result = once(client, chat_target(receivers, "dingtalk", secret="SECwrong-secret"))
    assert (result.status, result.attempts, result.http_status) == ("failed", 1, 200)
    assert result.reason.startswith("dingtalk error 310000: sign not match")
    assert "SECwrong-secret" not in result.reason
    assert receivers.accepted("dingtalk") == []
    assert len(receivers.rejected("dingtalk")) == 1


def test_feishu_rejects_a_timestamp_more_than_an_hour_off(client: httpx.Client) -> None:
    with ChatReceivers(feishu_secret=FEISHU_SECRET, clock=lambda: NOW) as rx:
        target = chat_target(rx, "feishu")
        late = once(client, target, now=NOW + 3601)
        on_time = once(client, target, now=NOW + 3500)
    assert late.status == "failed"
    assert late.reason.startswith("feishu error 19021")
    assert on_time.status == "delivered"


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
    first = once(client, chat_target(receivers, kind))
    assert (first.status, first.http_status) == ("retry", 200)
    assert first.reason.endswith("(rate limited)")
    assert once(client, chat_target(receivers, kind)).status == "delivered"
    assert len(receivers.accepted(kind)) == 1


def test_other_service_error_codes_fail_at_once(
    receivers: ChatReceivers, client: httpx.Client
) -> None:
    receivers.script("wecom", Answer.json({"errcode": 93000, "errmsg": "invalid webhook url"}))
    result = once(client, chat_target(receivers, "wecom"))
    assert (result.status, result.attempts) == ("failed", 1)
    assert result.reason == "wecom error 93000: invalid webhook url"


def test_slack_client_errors_fail_at_once_with_slacks_reason(
    receivers: ChatReceivers, client: httpx.Client
) -> None:
    receivers.script("slack", Answer.status_only(404, "no_service"))
    result = once(client, chat_target(receivers, "slack"))
    assert (result.status, result.attempts, result.http_status) == ("failed", 1, 404)
    assert result.reason == "HTTP 404: no_service"


def test_a_slow_receiver_beyond_the_timeout_is_a_retry(receivers: ChatReceivers) -> None:
    receivers.always("slack", Answer.slow(3.0))
    with httpx.Client(timeout=0.3) as impatient:
        result = once(impatient, chat_target(receivers, "slack"))
    assert (result.status, result.http_status, result.reason) == (
        "retry", None, "timeout: ReadTimeout",
    )  # fmt: skip


def test_unreachable_target_is_a_retry_and_the_url_stays_out_of_the_reason(
    client: httpx.Client,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook/secret-path-token"
    result = once(client, ChatTarget(name="gone", kind="slack", url=url))
    assert result.status == "retry"
    assert result.reason.startswith("network error: ConnectError")
    assert "secret-path-token" not in result.reason


def test_missing_url_configuration_fails_without_a_request(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_TEST_UNSET_URL", raising=False)
    target = ChatTarget(name="unset", kind="teams", url_env="NOTIFY_TEST_UNSET_URL")
    result = once(client, target)
    assert (result.status, result.attempts) == ("failed", 0)
    assert "NOTIFY_TEST_UNSET_URL" in result.reason


# --- attempts scheduled, not slept (worker/chat.py) ----------------------------------------------


class Elapsing:
    """The holds' clock here, where attempts run back to back: a test lets countdowns pass."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def clock_of(chat: ChatSender) -> Elapsing:
    """The holds' clock `sender` gave `chat`."""
    return cast(Elapsing, chat.holds.clock)


def sender(redis_client: redis.Redis, targets: list[ChatTarget], **options: Any) -> ChatSender:
    options.setdefault("holds", TargetHolds(clock=Elapsing()))
    return ChatSender(
        redis_client, "t:", {t.name: t for t in targets}, httpx.Client(timeout=5), **options
    )


def until_settled(chat: ChatSender, step: str, target: str, note: Notification) -> tuple:
    """Run attempts as the Celery task would, each after its countdown; (outcome, countdowns)."""
    attempt = 1
    countdowns: list[float] = []
    while True:
        try:
            return chat.send(step, target, note, attempt, rate_key="prod/payments"), countdowns
        except RetryLater as later:
            countdowns.append(later.countdown)
            clock_of(chat).now += later.countdown
            attempt = later.attempt


def test_two_server_errors_then_success_delivers_once(
    receivers: ChatReceivers, redis_client: redis.Redis
) -> None:
    receivers.script("slack", Answer.status_only(500), Answer.status_only(503))
    chat = sender(redis_client, [chat_target(receivers, "slack")])
    outcome, countdowns = until_settled(chat, "t:step:1", "slack-ops", verdict())
    assert outcome == "delivered"
    assert receivers.hits("slack") == 3 and len(receivers.accepted("slack")) == 1
    assert len(countdowns) == 2 and 0 < countdowns[0] < countdowns[1] <= 60
    stored = redis_client.get("t:step:1")
    assert stored is not None
    assert json.loads(stored)["attempts"] == 3


def test_retry_after_is_the_countdown_and_is_capped(
    receivers: ChatReceivers, redis_client: redis.Redis
) -> None:
    receivers.script("teams", Answer.rate_limited("2"), Answer.rate_limited("3600"))
    chat = sender(redis_client, [chat_target(receivers, "teams")], max_wait_seconds=30)
    outcome, countdowns = until_settled(chat, "t:step:2", "teams-ops", verdict())
    assert (outcome, countdowns) == ("delivered", [2.0, 30.0])


def test_a_scheduled_attempt_is_taken_once(
    receivers: ChatReceivers, redis_client: redis.Redis
) -> None:
    receivers.script("slack", Answer.status_only(500))
    chat = sender(redis_client, [chat_target(receivers, "slack")])
    with pytest.raises(RetryLater) as later:
        chat.send("t:step:3", "slack-ops", verdict(), 1)
    # A redelivered copy of the first attempt finds the step scheduled: it sends nothing.
    assert chat.send("t:step:3", "slack-ops", verdict(), 1) == "duplicate"
    assert chat.send("t:step:3", "slack-ops", verdict(), later.value.attempt) == "delivered"
    assert chat.send("t:step:3", "slack-ops", verdict(), later.value.attempt) == "duplicate"
    assert receivers.hits("slack") == 2 and len(receivers.accepted("slack")) == 1


def test_a_retry_after_holds_the_target_for_every_message(
    receivers: ChatReceivers, redis_client: redis.Redis
) -> None:
    receivers.always("slack", Answer.rate_limited("5"))
    chat = sender(redis_client, [chat_target(receivers, "slack")], max_attempts=3)
    with pytest.raises(RetryLater) as first:
        chat.send("t:step:h1", "slack-ops", verdict(), 1)
    assert (first.value.countdown, receivers.hits("slack")) == (5.0, 1)
    # Other messages to the target wait out the same 5 s without a request, each spending an
    # attempt as the 429 would have, and come due spread over a fifth of the wait after it.
    later = []
    for n in range(20):
        with pytest.raises(RetryLater) as held:
            chat.send(f"t:step:h2-{n}", "slack-ops", verdict(), 1)
        later.append(held.value)
    assert receivers.hits("slack") == 1
    assert {held.attempt for held in later} == {2}
    assert all(5.0 <= held.countdown <= 5.0 * (1 + SPREAD) for held in later)
    assert len({held.countdown for held in later}) > 1
    assert redis_client.get("t:step:h2-0") == b"retry:2"

    clock_of(chat).now += 2.0  # 3 s of the hold left
    with pytest.raises(RetryLater) as held:
        chat.send("t:step:h2-0", "slack-ops", verdict(), 2)
    assert 3.0 <= held.value.countdown <= 3.0 * (1 + SPREAD) and receivers.hits("slack") == 1
    # The last attempt asks the service anyway: only a real answer makes a dead letter.
    assert chat.send("t:step:h2-0", "slack-ops", verdict(), 3) == "failed"
    assert receivers.hits("slack") == 2
    (entry,) = chat.dead_letters.list(10)
    assert entry["result"]["reason"].startswith("HTTP 429")

    # Once the hold is over, the next message asks; the service is back and takes it.
    clock_of(chat).now += 5.0
    receivers.always("slack", None)
    assert chat.send("t:step:h3", "slack-ops", verdict(), 1) == "delivered"
    assert receivers.hits("slack") == 3


def test_only_a_service_that_named_a_wait_holds_its_target(
    receivers: ChatReceivers, redis_client: redis.Redis
) -> None:
    receivers.always("teams", Answer.status_only(503))  # no Retry-After: backoff, no hold
    receivers.always("slack", Answer.rate_limited("30"))
    chat = sender(redis_client, [chat_target(receivers, "teams"), chat_target(receivers, "slack")])
    for n in range(3):
        with pytest.raises(RetryLater):
            chat.send(f"t:step:n{n}", "teams-ops", verdict(), 1)
    assert receivers.hits("teams") == 3
    with pytest.raises(RetryLater):
        chat.send("t:step:s1", "slack-ops", verdict(), 1)
    # A hold is the target's own: the other target is asked at once.
    receivers.always("teams", None)
    assert chat.send("t:step:n9", "teams-ops", verdict(), 1) == "delivered"
    assert (receivers.hits("slack"), receivers.hits("teams")) == (1, 4)


def test_server_errors_forever_fail_and_land_in_dead_letters(
    receivers: ChatReceivers, redis_client: redis.Redis
) -> None:
    receivers.always("feishu", Answer.status_only(500, "internal error"))
    chat = sender(redis_client, [chat_target(receivers, "feishu")], max_attempts=4)
    outcome, countdowns = until_settled(chat, "t:step:4", "feishu-ops", verdict())
    assert (outcome, len(countdowns), receivers.hits("feishu")) == ("failed", 3, 4)
    (entry,) = chat.dead_letters.list(10)
    assert entry["target"] == "feishu-ops"
    assert (entry["result"]["reason"], entry["result"]["attempts"]) == (
        "HTTP 500: internal error",
        4,
    )
    assert entry["notification"]["service"] == "payments"
    raw_entries = redis_client.lrange("t:dead-letters", 0, -1)
    stored = "".join(r.decode() if isinstance(r, bytes) else r for r in raw_entries)
    for leaked in (FEISHU_SECRET, receivers.url("feishu")):
        assert leaked not in stored

    # The service recovers: the letter, taken out and sent by the same path, is delivered.
    receivers.always("feishu", None)
    assert chat.retry_dead_letter(entry["id"]) == "delivered"
    assert chat.dead_letters.count() == 0
    assert chat.retry_dead_letter(entry["id"]) == "gone"  # a second retry task sends nothing
    assert len(receivers.accepted("feishu")) == 1


def test_a_redelivery_that_fails_again_goes_back_with_a_retry_counted(
    receivers: ChatReceivers, redis_client: redis.Redis
) -> None:
    receivers.always("wecom", Answer.json({"errcode": 93000, "errmsg": "invalid webhook url"}))
    chat = sender(redis_client, [chat_target(receivers, "wecom")])
    assert until_settled(chat, "t:step:5", "wecom-ops", verdict())[0] == "failed"
    (failed,) = chat.dead_letters.list()
    taken = chat.dead_letters.take(failed["id"])
    assert taken == failed and chat.dead_letters.count() == 0
    # The worker died mid-retry: the redelivered task finds the letter where it was left.
    assert chat.retry_dead_letter(failed["id"]) == "failed"
    (entry,) = chat.dead_letters.list()
    assert (entry["id"], entry["retries"]) == (failed["id"], 1)
    assert entry["result"]["reason"] == "wecom error 93000: invalid webhook url"


def test_each_attempt_is_signed_afresh(redis_client: redis.Redis) -> None:
    ticks = itertools.count(1)
    clock = lambda: 1000.0 * next(ticks)  # noqa: E731 - every reading is a later time
    with ChatReceivers(dingtalk_secret=DINGTALK_SECRET, clock=lambda: 3000.0) as rx:
        rx.script("dingtalk", Answer.status_only(502))
        chat = sender(redis_client, [chat_target(rx, "dingtalk")], clock=clock)
        outcome, _ = until_settled(chat, "t:step:6", "dingtalk-ops", verdict())
        (accepted,) = rx.accepted("dingtalk")
    assert outcome == "delivered"
    signed_at = int(parse_qs(accepted.query)["timestamp"][0])
    assert signed_at > 1_000_000  # not the first attempt's timestamp (1000 s, in ms)


def test_severity_filter_and_rate_limit_but_a_failure_always_gets_through(
    receivers: ChatReceivers, redis_client: redis.Redis
) -> None:
    slack = chat_target(receivers, "slack", rate_limit_per_minute=1)
    teams = chat_target(receivers, "teams", min_severity="error")
    chat = sender(redis_client, [slack, teams])
    inconclusive = verdict(verdict="inconclusive")
    assert chat.send("t:a:slack", "slack-ops", inconclusive, rate_key="r") == "delivered"
    assert chat.send("t:a:teams", "teams-ops", inconclusive, rate_key="r") == "suppressed"
    assert chat.send("t:b:slack", "slack-ops", inconclusive, rate_key="r") == "rate_limited"
    # Over the limit, but a `fail` is what the rate limit must never hide.
    assert chat.send("t:c:slack", "slack-ops", verdict(), rate_key="r") == "delivered"
    assert len(receivers.accepted("slack")) == 2
    assert receivers.hits("teams") == 0


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


def test_a_rate_limited_flood_keeps_only_the_messages_let_through(redis_client):
    """A rollout flapping through hundreds of events a minute: the window's memory is the
    limit's, not the flood's, and a denied message asked again is denied again."""
    limiter = RateLimiter(redis_client, clock=lambda: 1_767_225_600.0)
    answers = [limiter.allow("prod/flap|slack", 3, f"event-{i}") for i in range(500)]
    assert answers == [True] * 3 + [False] * 497
    (window,) = redis_client.keys("rollout-analyzer:notify-rate:prod/flap|slack:*")
    assert redis_client.hlen(window) == 3
    assert limiter.allow("prod/flap|slack", 3, "event-1") is True  # asked again: the same
    assert limiter.allow("prod/flap|slack", 3, "event-9") is False


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
