"""The webhook's own publisher writes what Celery's send_task writes, on a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import cast

import redis
import redis.asyncio as aioredis

from webhooks.producer import RedisTaskProducer, publishes_directly
from worker.celery_app import make_celery
from worker.settings import Settings
from worker.task_names import ANALYZE_TASK

# Differ per message by design (ids, tags) or name the sending process.
PER_MESSAGE = {"id", "root_id", "origin", "correlation_id", "delivery_tag", "reply_to"}


def pushed(client: redis.Redis, queue: str) -> dict:
    raw = client.rpop(queue)
    assert raw is not None, "nothing was pushed"
    message = json.loads(cast(bytes, raw))  # one element: RPOP without a count
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def test_the_message_is_the_one_send_task_writes(redis_flushed):
    settings = Settings(redis_url=redis_flushed.url, queue="ra-producer")
    app = make_celery(settings)
    client = redis.Redis.from_url(redis_flushed.url)
    app.send_task(ANALYZE_TASK, args=["a" * 32], queue="ra-producer")
    theirs = pushed(client, "ra-producer")

    async def publish() -> None:
        async_client = aioredis.Redis.from_url(redis_flushed.url)
        producer = RedisTaskProducer(app, async_client, "ra-producer")
        await producer.publish(ANALYZE_TASK, ["a" * 32])
        await producer.publish(ANALYZE_TASK, ["b" * 32])  # the same task's message again
        await producer.close()

    asyncio.run(publish())
    ours, again = pushed(client, "ra-producer"), pushed(client, "ra-producer")
    # Each message its own: id, arguments and their repr (the rest is built once per task).
    assert again["body"][0] == ["b" * 32] and again["headers"]["argsrepr"] == repr(["b" * 32])
    assert again["headers"]["id"] == again["headers"]["root_id"] != ours["headers"]["id"]
    assert again["properties"]["correlation_id"] == again["headers"]["id"]
    assert ours["properties"]["correlation_id"] == ours["headers"]["id"]

    assert ours["body"] == theirs["body"]
    assert set(ours) == set(theirs)
    for part in ("headers", "properties"):
        assert set(ours[part]) == set(theirs[part]), part
        for key in set(ours[part]) - PER_MESSAGE - {"ignore_result"}:
            assert ours[part][key] == theirs[part][key], (part, key)
    # send_task leaves it to the task's setting (ignored); ours says so in the message.
    assert ours["headers"]["ignore_result"] is True
    assert ours["content-type"] == theirs["content-type"] == "application/json"


def test_only_plain_redis_brokers_are_published_directly():
    assert publishes_directly("redis://127.0.0.1:6379/0")
    assert publishes_directly("rediss://redis.example:6380/1")
    assert not publishes_directly("sentinel://s1:26379;sentinel://s2:26379")
    assert not publishes_directly("amqp://guest@rabbit//")


def test_a_new_claim_pushes_its_task_in_the_same_script_and_a_repeat_pushes_nothing(
    redis_flushed,
):
    """With the broker on the store's Redis, the webhook hands the task's message to CLAIM."""
    from worker.keyspace import new_analysis_id
    from worker.store import AsyncStore, Keys

    ids = [new_analysis_id("same-identity") for _ in range(2)]

    settings = Settings(redis_url=redis_flushed.url, queue="ra-claimed")
    app = make_celery(settings)
    client = redis.Redis.from_url(redis_flushed.url)

    async def claim_twice() -> tuple[str, str, str, str]:
        async_client = aioredis.Redis.from_url(redis_flushed.url)
        store = AsyncStore(async_client, "ra:t:")
        producer = RedisTaskProducer(app, async_client, "ra-claimed")
        claims = []
        for new_id in ids:
            task = (producer.queue, producer.envelope(ANALYZE_TASK, [new_id]))
            claim = await store.claim(
                "same-identity", {"service": "checkout"}, pending_seconds=60,
                result_ttl_seconds=600, now=0.0, new_id=new_id, task=task,
            )  # fmt: skip
            claims += [claim.analysis_id, claim.state]
        await async_client.aclose()
        return tuple(claims)  # type: ignore[return-value]

    first_id, first_state, second_id, second_state = asyncio.run(claim_twice())
    assert (first_id, first_state) == (ids[0], "new")
    assert (second_id, second_state) == (ids[0], "queued")  # joined: no second task
    assert client.llen("ra-claimed") == 1
    assert pushed(client, "ra-claimed")["body"][0] == [ids[0]]
    assert client.hget(Keys("ra:t:").record(ids[0]), "status") == b"queued"


def test_chat_goes_on_the_list_send_task_gives_its_priority(redis_flushed):
    """A dead letter sent again is chat: the webhook pushes it where a worker's send_task puts
    a chat message (kombu's priority-9 list), past which a worker with its follow-up slots
    taken still reads traffic actions (worker/broker.py)."""
    from webhooks.runtime import CeleryDispatcher
    from worker.queues import CHAT_PRIORITY
    from worker.task_names import REDELIVER_TASK

    settings = Settings(redis_url=redis_flushed.url, followup_queue="ra-chat")
    app = make_celery(settings)
    client = redis.Redis.from_url(redis_flushed.url)
    app.send_task(REDELIVER_TASK, args=["e1"], queue="ra-chat", priority=CHAT_PRIORITY)
    (key,) = [k.decode() for k in cast(list[bytes], client.keys("ra-chat*"))]
    assert key != "ra-chat"  # kombu's own list for that priority
    theirs = pushed(client, key)

    async def enqueue() -> None:
        async_client = aioredis.Redis.from_url(redis_flushed.url)
        await CeleryDispatcher(settings, async_client).enqueue(REDELIVER_TASK, ["e2"])
        await async_client.aclose()

    asyncio.run(enqueue())
    assert [k.decode() for k in cast(list[bytes], client.keys("ra-chat*"))] == [key]
    ours = pushed(client, key)
    assert ours["body"][0] == ["e2"]
    assert ours["properties"]["priority"] == theirs["properties"]["priority"] == CHAT_PRIORITY
