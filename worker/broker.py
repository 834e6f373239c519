"""kombu's Redis transport, with one client object per channel instead of one per command.

kombu 5.7 builds a new `redis.Redis` around its connection pool for every command it sends
outside the BRPOP loop: twice per task (the late-ack bookkeeping when a message is received,
then the ack). Building one costs ~0.3 ms of CPU (redis-py fills its response-callback table
each time), a third of Celery's whole cost per task here (py-spy, `make bench` row 2). A client
object is only a handle on the pool and safe to share between threads, so one per channel does;
a new pool (after a reconnect) gets a new client. Messages, acks and redelivery are unchanged.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel


# For `broker_transport`: kombu resolves "module:Class".
TRANSPORT = f"{__name__}:Transport"
