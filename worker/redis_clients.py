"""Redis clients for our state: one Redis, or a Redis Cluster (`redis_cluster` setting).

The Celery broker is never a cluster (kombu's Redis transport is not cluster-aware): it has
its own URL, `broker_url`, checked in worker/settings.py.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster


def sync_client(url: str, *, cluster: bool, **options: Any) -> redis.Redis:
    if cluster:
        # Typed as Redis: the commands we use are the same; keys are routed by slot.
        client: Any = RedisCluster.from_url(url, **options)
        return client  # type: ignore[no-any-return]
    return redis.Redis.from_url(url, **options)


def async_cluster_client(url: str, *, max_connections: int, **options: Any) -> aioredis.Redis:
    # Per node; a full pool fails at once (no blocking pool for clusters in redis-py), which
    # the webhook turns into a 503 that Argo retries.
    client: Any = AsyncRedisCluster.from_url(url, max_connections=max_connections, **options)
    return client  # type: ignore[no-any-return]
