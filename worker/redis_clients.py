"""Redis clients for our state: one Redis, or a Redis Cluster (`redis_cluster` setting).

The Celery broker is never a cluster (kombu's Redis transport is not cluster-aware): it has
its own URL, `broker_url`, checked in worker/settings.py.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry


def sync_client(url: str, *, cluster: bool, **options: Any) -> redis.Redis:
    if cluster:
        # Typed as Redis: the commands we use are the same; keys are routed by slot. The
        # cluster client retries a dropped call by itself (and re-learns the slots).
        client: Any = RedisCluster.from_url(url, **options)
        return client  # type: ignore[no-any-return]
    return redis.Redis.from_url(url, retry=worker_retry(), **options)


def worker_retry() -> Retry:
    """A call whose connection dropped or timed out is sent again, a few times within a second
    (from_url alone never retries). Redis may have run it already: every script and write of
    ours gives the same answer and changes nothing more when run twice (tests/integration/
    test_lost_replies.py)."""
    return Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.25), 3)


def async_cluster_client(url: str, *, max_connections: int, **options: Any) -> aioredis.Redis:
    # Per node; a full pool fails at once (no blocking pool for clusters in redis-py), which
    # the webhook turns into a 503 that Argo retries.
    client: Any = AsyncRedisCluster.from_url(url, max_connections=max_connections, **options)
    return client  # type: ignore[no-any-return]
