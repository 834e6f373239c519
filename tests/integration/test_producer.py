"""The webhook's own publisher writes what Celery's send_task writes, on a real redis-server."""

from __future__ import annotations

import asyncio
import base64
import json

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
    message = json.loads(raw)
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
        await producer.close()

    asyncio.run(publish())
    ours = pushed(client, "ra-producer")

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
