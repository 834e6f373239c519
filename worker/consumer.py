"""Celery's consumer, acking memory-kept analysis messages in the thread that ran the task.

Celery hands every ack to the event loop's thread (`call_soon`): the pool thread writes to a
socket to wake the loop, the loop wakes, takes the GIL from the pool thread, acks, sleeps again.
For a message kept only in memory (worker/broker.py) the ack touches a set and nothing in Redis,
so it is done where the task ran; the loop is still woken when the ack frees the prefetch slot
it may be waiting for.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from worker.broker import QoS


def _noop() -> None:
    pass


class Consumer(CeleryConsumer):  # type: ignore[misc]
    def call_soon_ack(self, p: Any, *args: Any, **kwargs: Any) -> Any:
        message = getattr(p, "__self__", None)
        qos = getattr(getattr(message, "channel", None), "qos", None)
        if (
            self.hub is not None
            and getattr(p, "__name__", "") == "ack_log_error"
            and isinstance(qos, QoS)
            and message is not None
            and qos.kept_in_memory(message.delivery_tag)
        ):
            p(*args, **kwargs)
            if qos.at_prefetch_limit(after_ack=True):
                self.hub.call_soon(_noop)  # the loop may be waiting for this slot
            return p
        return super().call_soon_ack(p, *args, **kwargs)
