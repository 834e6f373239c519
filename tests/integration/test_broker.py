"""The Redis transport's ack emulation, kept for follow-ups, skipped for analyses (real Redis).

worker/broker.py: an analysis message is held in the worker's memory only (its claim and lease
recover a lost one); a follow-up's goes to kombu's unacked hash, so a dead worker's chat or
traffic task comes back after the visibility timeout. Both come back at a warm shutdown. The
loop adds the BRPOP socket to epoll once, not on every tick.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from queue import Empty
from types import SimpleNamespace
from typing import Any, cast

import pytest
import redis
from celery import Celery
from kombu.asynchronous import Hub
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.messaging import Consumer

from tests.support.chat_receivers import Answer, ChatReceivers
from tests.support.procs import RedisServer, wait_for
from tests.support.service import Worker, service_env
from worker.broker import (
    ANALYSES_ONLY_SECONDS,
    FOLLOWUP_SLOTS,
    MEMORY_ACK_QUEUES,
    TRANSPORT,
    Channel,
)
from worker.notify.dead_letter import DeadLetters
from worker.notify.delivery import DeliveryResult
from worker.notify.message import Notification
from worker.queues import priority_for
from worker.task_names import ANALYZE_TASK, REDELIVER_TASK

ANALYSES, FOLLOWUPS = "ra-analyses", "ra-analyses-followups"


@pytest.fixture
def broker(redis_flushed: RedisServer) -> Iterator[tuple[Connection, redis.Redis]]:
    options = {MEMORY_ACK_QUEUES: [ANALYSES]}
    connection = Connection(redis_flushed.url, transport=TRANSPORT, transport_options=options)
    kv = redis.Redis.from_url(redis_flushed.url)
    try:
        yield connection, kv
    finally:
        connection.release()
        kv.close()


def publish(connection: Connection, queue: str, body: dict[str, str]) -> None:
    with connection.Producer() as producer:
        producer.publish(body, routing_key=queue, declare=[Queue(queue)], serializer="json")


def unacked_bodies(kv: redis.Redis) -> list[dict[str, str]]:
    """The bodies in kombu's unacked hash (entries: [message, exchange, routing key])."""
    bodies = []
    for entry in kv.hvals("unacked"):
        message = json.loads(entry)[0]
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        bodies.append(json.loads(body))
    return bodies


def test_only_the_follow_up_is_in_the_unacked_index_and_acks_clear_it(broker) -> None:
    connection, kv = broker
    publish(connection, ANALYSES, {"task": "analyze"})
    publish(connection, FOLLOWUPS, {"task": "notify"})
    channel = connection.channel()
    analysis = Queue(ANALYSES, channel=channel).get(no_ack=False)
    followup = Queue(FOLLOWUPS, channel=channel).get(no_ack=False)
    assert analysis.payload == {"task": "analyze"} and followup.payload == {"task": "notify"}
    # kombu's bookkeeping for the follow-up (its redelivery after a worker dies), none for
    # the analysis.
    assert unacked_bodies(kv) == [{"task": "notify"}]
    assert kv.zcard("unacked_index") == 1
    analysis.ack()
    followup.ack()
    assert kv.hlen("unacked") == 0 and kv.zcard("unacked_index") == 0
    assert kv.llen(ANALYSES) == 0 and kv.llen(FOLLOWUPS) == 0
    channel.close()
    # Acked messages stay acked: nothing is put back when the channel closes.
    assert kv.llen(ANALYSES) == 0 and kv.llen(FOLLOWUPS) == 0


def test_a_warm_shutdown_puts_unacked_messages_of_both_queues_back(broker) -> None:
    connection, kv = broker
    publish(connection, ANALYSES, {"task": "analyze", "n": "1"})
    publish(connection, ANALYSES, {"task": "analyze", "n": "2"})
    publish(connection, FOLLOWUPS, {"task": "notify"})
    channel = connection.channel()
    taken = [Queue(ANALYSES, channel=channel).get(no_ack=False) for _ in range(2)]
    taken[0].ack()  # the first analysis ran; the second was taken but not started
    Queue(FOLLOWUPS, channel=channel).get(no_ack=False)
    assert kv.llen(ANALYSES) == 0 and kv.llen(FOLLOWUPS) == 0
    channel.close()  # what a worker's warm shutdown does: unacked messages are restored
    assert kv.llen(ANALYSES) == 1 and kv.llen(FOLLOWUPS) == 1
    assert kv.hlen("unacked") == 0
    again = connection.channel()
    back = Queue(ANALYSES, channel=again).get(no_ack=True)
    assert back.payload == {"task": "analyze", "n": "2"}
    assert back.delivery_info.get("redelivered") or back.headers.get("redelivered")
    again.close()


def test_a_rejected_analysis_is_requeued_or_dropped_as_asked(broker) -> None:
    connection, kv = broker
    publish(connection, ANALYSES, {"task": "analyze", "n": "1"})
    publish(connection, ANALYSES, {"task": "analyze", "n": "2"})
    channel = connection.channel()
    first = Queue(ANALYSES, channel=channel).get(no_ack=False)
    first.reject(requeue=True)
    assert kv.llen(ANALYSES) == 2
    # Back on the queue where kombu puts a requeued message (read after the one waiting).
    second = Queue(ANALYSES, channel=channel).get(no_ack=False)
    again = Queue(ANALYSES, channel=channel).get(no_ack=False)
    assert second.payload["n"] == "2" and again.payload == first.payload
    again.reject(requeue=False)
    second.ack()
    channel.close()
    assert kv.llen(ANALYSES) == 0  # the dropped one stays dropped


def missing_lines(log: str) -> int:
    """The worker's JSON log lines of a task that found no analysis to run."""
    lines = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return sum(1 for line in lines if line.get("state") == "missing")


def test_a_worker_at_its_prefetch_limit_keeps_taking_analyses(redis_flushed, tmp_path) -> None:
    """A worker acks an analysis message in the thread that ran it (worker/consumer.py), not
    in its event loop; when that ack frees the only prefetch slot, the loop must still be woken
    to read the next message. Concurrency 1 puts every message at the limit: a missed wake-up
    would leave each next message waiting for the loop's own timeout (a second or more)."""
    queue = "ra-prefetch"
    # A Prometheus that is never asked: a task for no analysis ends before any query.
    env = service_env(
        redis_flushed.url,
        prometheus_url="http://127.0.0.1:9",
        key_prefix="ra:prefetch:",
        queue=queue,
    )
    worker = Worker(env, tmp_path, concurrency=1, name="prefetch").start()
    celery = Celery(broker=redis_flushed.url)
    kv = redis.Redis.from_url(redis_flushed.url)
    try:
        sent = 30
        began = time.monotonic()
        for n in range(sent):  # ids of no analysis: each task ends at once ("missing")
            celery.send_task(ANALYZE_TASK, args=[f"{n:032x}"], queue=queue)
        wait_for(lambda: missing_lines(worker.logs()) == sent, 20, "all 30 tasks")
        assert time.monotonic() - began < 10, "the loop waited for its timeout between messages"
        assert kv.llen(queue) == 0
    finally:
        celery.close()
        kv.close()
        worker.stop()


def test_follow_ups_still_flow_where_an_acl_refuses_client_unblock(redis_flushed, tmp_path):
    """A worker at its follow-up cap ends its short BRPOP with CLIENT UNBLOCK when a follow-up
    ends (worker/broker.py). Where the Redis user may not (a managed Redis' ACL), it says so
    once and falls back to a 0.1 s BRPOP: every follow-up still runs."""
    kv = redis.Redis.from_url(redis_flushed.url)
    kv.acl_setuser(
        "ra-limited", enabled=True, passwords=["+limited"], keys=["*"], channels=["*"],
        commands=["+@all", "-client|unblock"],
    )  # fmt: skip
    url = redis_flushed.url.replace("redis://", "redis://ra-limited:limited@", 1)
    queue, prefix, sent = "ra-acl", "ra:acl:", 12
    celery = Celery(broker=redis_flushed.url)
    with ChatReceivers() as chat:
        # Each delivery holds the worker's one follow-up slot for 50 ms: its event loop is at
        # the cap, in the short BRPOP that the follow-up's end must cut short, every time.
        # (Deliveries that end at once can finish before that BRPOP is even sent, on a busy
        # host every time, and nothing would be asked of CLIENT UNBLOCK.)
        chat.always("generic", Answer.slow(0.05))
        targets = tmp_path / "targets.yaml"
        targets.write_text(
            f'targets: [{{name: audit, kind: generic, url: "{chat.url("generic")}"}}]\n'
        )
        env = service_env(
            url, prometheus_url="http://127.0.0.1:9", key_prefix=prefix, queue=queue,
            extra={"ROLLOUT_ANALYZER_CHAT_TARGETS_FILE": str(targets)},
        )  # fmt: skip
        worker = Worker(env, tmp_path, concurrency=2, name="acl").start()  # one follow-up slot
        try:
            # Dead letters retried by the operator: each is delivered again, once.
            letters = DeadLetters(kv, key=f"{prefix}dead-letters")
            failed = DeliveryResult("audit", "failed", 3, 500, "server error")
            note = Notification(analysis_id="a" * 32, service="svc", namespace="ns",
                                rollout="r", revision="1", verdict="fail")  # fmt: skip
            # With the priority the service gives them (worker/queues.py): the first list is
            # traffic actions', which a worker at its cap still reads.
            priority = priority_for(REDELIVER_TASK)
            for entry_id in [letters.push(failed, note) for _ in range(sent)]:
                celery.send_task(
                    REDELIVER_TASK, args=[entry_id], queue=f"{queue}-followups", priority=priority
                )

            wait_for(lambda: len(chat.accepted("generic")) == sent and not kv.hlen("unacked"),
                     20, "every follow-up delivered and acked")  # fmt: skip
            assert kv.llen(f"{queue}-followups") == 0 and letters.list() == []
            assert worker.logs().count("CLIENT UNBLOCK refused") == 1
        finally:
            celery.close()
            worker.stop()
            kv.acl_deluser("ra-limited")
            kv.close()


@pytest.mark.parametrize("first_trip_seconds", [0.0, 0.03], ids=["quick", "slow-first-trip"])
def test_a_capped_brpop_redis_reads_after_the_unblock_still_ends_at_once(
    redis_flushed, monkeypatch, first_trip_seconds
):
    """A follow-up ends just as the capped BRPOP is sent, and CLIENT UNBLOCK reaches Redis
    before the BRPOP does: Redis answers that nobody is blocked. Asked again once the BRPOP is
    read, it ends it; otherwise chat waits for the BRPOP's own timeout (0.5 s). A first round
    trip slower than the retries' window (a busy host: 30 ms against 20) still gets its retry."""
    options = {MEMORY_ACK_QUEUES: [ANALYSES], FOLLOWUP_SLOTS: 1}
    kv = redis.Redis.from_url(redis_flushed.url)
    connection = Connection(redis_flushed.url, transport=TRANSPORT, transport_options=options)
    channel = cast(Channel, connection.default_channel)  # TRANSPORT's channel
    try:
        client = channel.client  # the BRPOP's: the poller gives it its own connection
        brpop = client.connection = client.connection_pool.get_connection()
        # The consumer's state once its capped BRPOP is written but not yet read by Redis.
        channel._in_poll, channel._capped = brpop, channel._client_id(brpop)

        def unblocks() -> int:
            return int(kv.info("commandstats").get("cmdstat_client|unblock", {}).get("calls", 0))

        # The order made certain, not raced: the BRPOP goes out only after Redis has answered
        # the first CLIENT UNBLOCK (with 0), in the pause before the next one.
        before = unblocks()  # Redis' counters outlive the tests' FLUSHALL
        sent: list[int] = []  # CLIENT UNBLOCKs answered when the BRPOP went out

        def pause_then_brpop(seconds: float) -> None:
            if not sent:
                sent.append(unblocks() - before)
                channel._brpop_keys([ANALYSES], ANALYSES_ONLY_SECONDS)
            time.sleep(seconds)

        clock = SimpleNamespace(monotonic=time.monotonic, time=time.time, sleep=pause_then_brpop)
        monkeypatch.setattr("worker.broker.time", clock)
        unblocker = channel._create_client()
        asked = unblocker.execute_command

        def slow_first_trip(*args: object) -> object:
            if args[:2] == ("CLIENT", "UNBLOCK") and unblocks() == before:
                time.sleep(first_trip_seconds)
            return asked(*args)

        monkeypatch.setattr(unblocker, "execute_command", slow_first_trip)
        monkeypatch.setattr(channel, "_create_client", lambda: unblocker)
        channel.followup_ended()  # no follow-up held: under the cap of one
        assert sent == [1], "the first CLIENT UNBLOCK found the BRPOP, or none was retried"
        with pytest.raises(Empty):  # ended as if timed out: nothing was taken
            channel._brpop_read()
        # kombu declares _brpop_sent_at as None; the BRPOP's send set it to a monotonic time.
        waited = time.monotonic() - cast(float, channel._brpop_sent_at)
        assert waited < ANALYSES_ONLY_SECONDS / 2, f"the BRPOP ran {waited:.3f}s, to its timeout"
        assert unblocks() - before >= 2
    finally:
        # Closing would wait for the reply of a BRPOP never sent. (kombu declares _in_poll as a
        # bool and sets None itself.)
        channel._in_poll = None  # type: ignore[assignment]
        connection.release()
        kv.close()


def test_the_loop_adds_a_socket_to_epoll_once_and_again_after_a_disconnect(broker) -> None:
    """Change 6: kombu re-added the BRPOP socket on every tick of the loop (EEXIST, an
    exception, each time); ours adds it once, and again when a dropped connection comes back."""
    connection, _ = broker
    hub = Hub()
    connection.transport.register_with_event_loop(connection.connection, hub)
    got: list[int] = []

    def received(body: dict[str, int], message: Any) -> None:
        got.append(body["i"])
        message.ack()

    channel = connection.default_channel
    Consumer(channel, [Queue(ANALYSES)], callbacks=[received], accept=["json"]).consume()
    registered: list[int] = []
    register = hub.poller.register

    def counted(fd: int, events: int) -> Any:
        registered.append(fd)
        return register(fd, events)

    hub.poller.register = counted

    def deliver(numbers: range) -> None:
        for i in numbers:
            publish(connection, ANALYSES, {"i": i})  # type: ignore[dict-item]
        deadline = time.monotonic() + 10
        while len(got) < numbers.stop and time.monotonic() < deadline:
            hub.run_once()
        assert got == list(range(numbers.stop))

    deliver(range(0, 5))
    first = len(registered)
    assert 1 <= first <= 3
    deliver(range(5, 25))
    assert len(registered) == first  # twenty messages, as many ticks and more: no new add
    channel.client.connection.disconnect()  # a dropped connection
    deliver(range(25, 30))
    assert len(registered) > first  # the new socket was added, and is read
