"""kombu's Redis transport, made cheaper per task where our own store already covers a loss.

Six changes to kombu 5.7's Redis transport, nothing else (messages, BRPOP, priorities and the
queues stay kombu's):

1. **One client object per channel** instead of one per command: kombu built a new
   `redis.Redis` for every command sent outside the BRPOP loop (~0.3 ms of CPU each: redis-py
   fills its response-callback table per client). A client is only a handle on the pool, safe
   to share between threads; a new pool (after a reconnect) gets a new client.
2. **Ack emulation only where it recovers something.** kombu records every received message in
   an "unacked" hash and index (a MULTI/EXEC round trip) and removes it at the ack (another), so
   that a message held by a worker that died comes back after `visibility_timeout` (300 s).
   The follow-up queue (chat, traffic) needs that. The analysis queue does not: a running
   analysis is recovered by its lease (~20 s, README), and one a worker took but never started
   by its claim lapsing after `pending_seconds` (120 s; the next call starts it again), both
   well before 300 s. So messages of the queues named in the transport option
   `memory_ack_queues` are kept in the worker's memory only, as kombu does with
   `ack_emulation: False`: acked and rejected there, put back on the queue at a warm shutdown
   or a reject with requeue. That is two Redis round trips less per analysis: Celery's CPU per
   task 1.9-2.0 -> 1.3-1.4 ms (`python -m tests.perf.hop`), ~0.5 ms less from a message's read
   to its task running (docs/performance.md, change 16).
3. **Follow-ups never take every slot of a worker that also answers analyses.** A chat service
   that hangs holds a thread for the whole HTTP timeout (10 s); a burst of events filled every
   prefetch slot and thread with such deliveries, and the verdicts Argo waited for sat behind
   them for 6-7 s (docs/performance.md, eighth pass). With the transport option
   `followup_slots`, once that many follow-ups are held and due, the worker reads only the
   analysis queue (a short BRPOP, so the follow-ups are read again soon after a slot frees).
   Follow-ups waiting for their countdown do not count: they hold no thread. Traffic actions
   are still read then: they wait on the follow-up queue's first list, chat on its last
   (worker/queues.py), and the short BRPOP takes that first list after the analyses.
   When a follow-up ends and frees a slot, the worker ends that short BRPOP at once
   (`CLIENT UNBLOCK` from another connection: BRPOP then answers as if timed out, so no
   message is taken; sent again if it reached Redis before the BRPOP did): without it a
   capped worker read at most its slots' worth of chat per timeout, ~40 messages a second
   for two workers (a burst's 900 took 22 s).
4. **The envelope read by orjson** (worker/message_json.py): the same values as kombu's
   `loads`, which builds a Python json decoder per message.
5. **The channel's clients cached as plain attributes**: kombu's `cached_property` takes a lock
   on every read, a few times per message.
6. **The loop's tick adds a socket to epoll only when the loop does not read it yet.** kombu
   re-adds every socket of the cycle on every tick of Celery's loop (twice per analysis); epoll
   answers EEXIST, an OSError raised and caught each time (~2 % of a worker's samples). A
   socket the cycle (re)registers goes through epoll in the cycle itself, and a disconnect
   takes its descriptor out of the loop, so it is added again on the next tick.
"""

from __future__ import annotations

import functools
import logging
import select
import time
import weakref
from datetime import datetime
from queue import Empty
from typing import Any

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from worker import message_json

# The transport option naming the queues whose messages skip the unacked index.
MEMORY_ACK_QUEUES = "memory_ack_queues"
# The transport option: how many follow-ups a worker reading analyses too may hold (change 3).
FOLLOWUP_SLOTS = "followup_slots"
# While those are taken, the BRPOP on the analysis queue and the actions' list returns after
# this long (s) if no follow-up ends first and unblocks it; Redis takes a fractional timeout.
ANALYSES_ONLY_SECONDS = 0.5
# ... and this long where CLIENT UNBLOCK is refused (an ACL without it): the freed slot is
# then seen only when the BRPOP times out.
ANALYSES_ONLY_SECONDS_POLLED = 0.1
# CLIENT UNBLOCK sent before Redis has read the BRPOP it is meant for finds nothing to end:
# it is sent again this often, for at most this long (on the consumer's thread; Redis reads a
# BRPOP already on its socket within microseconds, so one retry is the usual case).
UNBLOCK_RETRY_SECONDS = 0.0005
UNBLOCK_RETRY_FOR_SECONDS = 0.02

log = logging.getLogger(__name__)


def _due_at(message: Any) -> float:
    """When a message may run: its Celery ETA (a retry's countdown), 0 for now."""
    eta = (getattr(message, "headers", None) or {}).get("eta")
    if not eta:
        return 0.0
    try:
        return datetime.fromisoformat(str(eta)).timestamp()
    except ValueError:
        return 0.0


def _has_reply(connection: Any) -> bool:
    """Whether a reply waits on this connection's socket (read nothing: the consumer's event
    loop reads it when the socket polls readable)."""
    sock = getattr(connection, "_sock", None)
    if sock is None:
        return True  # disconnected: no BRPOP left to end
    if getattr(sock, "pending", None) and sock.pending():  # TLS: decrypted, not yet read
        return True
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class QoS(kombu_redis.QoS):
    """kombu's Redis ack emulation, except for messages of the memory-ack queues."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self._in_memory: set[Any] = set()  # delivery tags kept only in `_delivered`
        self._followups: dict[Any, float] = {}  # other held tags: when each may run

    def append(self, message: Any, delivery_tag: Any) -> None:
        if message.delivery_info.get("routing_key") in self.channel.memory_ack_queues:
            self._in_memory.add(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        self._followups[delivery_tag] = _due_at(message)
        super().append(message, delivery_tag)  # type: ignore[no-untyped-call]

    def ack(self, delivery_tag: Any) -> None:
        if self._followups.pop(delivery_tag, None) is not None:
            self.channel.followup_ended()
        if delivery_tag in self._in_memory:
            self._in_memory.discard(delivery_tag)
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().ack(delivery_tag)  # type: ignore[no-untyped-call]

    def kept_in_memory(self, delivery_tag: Any) -> bool:
        return delivery_tag in self._in_memory

    def followups_due(self) -> int:
        """Follow-ups held that are running or may run now (not waiting for a countdown)."""
        now = time.time()
        return sum(1 for at in list(self._followups.values()) if at <= now)

    def at_prefetch_limit(self, after_ack: bool = False) -> bool:
        """Whether the loop may have stopped reading for want of a prefetch slot (one more
        than that just after an ack: the loop may have looked before it)."""
        limit = self.prefetch_count
        held = len(self._delivered) - len(self._dirty)
        return bool(limit) and held >= limit - (1 if after_ack else 0)

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        if self._followups.pop(delivery_tag, None) is not None:
            self.channel.followup_ended()
        if delivery_tag in self._in_memory:
            self._in_memory.discard(delivery_tag)
            if requeue:
                self._put_back([self._delivered[delivery_tag]], leftmost=True)
            virtual.QoS.ack(self, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().reject(delivery_tag, requeue)  # type: ignore[no-untyped-call]

    def restore_unacked(self, client: Any = None) -> None:
        # A warm shutdown: the memory-kept messages go back on their queue, the others are
        # restored from the unacked hash by kombu.
        tags = [tag for tag in list(self._delivered) if tag in self._in_memory]
        self._put_back([self._delivered.pop(tag) for tag in tags], leftmost=False, client=client)
        self._in_memory.difference_update(tags)
        super().restore_unacked(client)  # type: ignore[no-untyped-call]

    def _put_back(self, messages: list[Any], leftmost: bool, client: Any = None) -> None:
        if not messages:
            return
        channel = self.channel
        with channel.conn_or_acquire(client) as conn:
            pipe = conn.pipeline()
            for message in messages:
                info = message.delivery_info
                exchange, queue = info["exchange"], info["routing_key"]
                channel._do_restore_message(message._raw, exchange, queue, pipe, leftmost)
            pipe.execute()


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        options = self.connection.client.transport_options
        self.memory_ack_queues = frozenset(options.get(MEMORY_ACK_QUEUES) or ())
        self.followup_slots = int(options.get(FOLLOWUP_SLOTS) or 0)
        # Redis' id of each BRPOP connection, with the socket it was read on (a reconnect
        # gets a new id); the id of the one in a capped BRPOP now, for CLIENT UNBLOCK.
        self._client_ids: weakref.WeakKeyDictionary[Any, tuple[Any, int]] = (
            weakref.WeakKeyDictionary()
        )
        self._capped: int | None = None
        self._unblock_refused = False

    def followup_ended(self) -> None:
        """A follow-up slot is free: end a capped BRPOP now, so the next one reads chat too."""
        capped = self._capped
        if capped is None or self.qos.followups_due() >= self.followup_slots:
            return
        self._capped = None
        brpop = self._in_poll
        try:
            # Redis answers 0 when that client is not blocked: its BRPOP was answered already
            # (the reply waits on its socket), or Redis has not read it yet, as when the slot
            # frees just as the BRPOP is sent. Only the latter is asked again, briefly.
            # The window runs from Redis' first answer: a slow first round trip (a connection
            # made, a busy host) must not use it up before anyone asked again.
            give_up: float | None = None
            while not self._create_client().execute_command("CLIENT", "UNBLOCK", capped):
                if brpop is None or self._in_poll is not brpop or _has_reply(brpop):
                    return
                now = time.monotonic()
                give_up = give_up or now + UNBLOCK_RETRY_FOR_SECONDS
                if now > give_up:
                    return  # Redis is that slow: the BRPOP ends at its own timeout
                time.sleep(UNBLOCK_RETRY_SECONDS)
        except redis.ResponseError as exc:  # NOPERM: fall back to short timeouts
            self._unblock_refused = True
            log.warning("CLIENT UNBLOCK refused, polling instead: %s", exc)
        except redis.RedisError:
            pass  # the BRPOP still times out; a lost connection is the consumer's to see

    def _brpop_read(self, **options: Any) -> Any:
        """kombu 5.7's `_brpop_read`, with the envelope read by orjson (change 4)."""
        self._capped = None
        try:
            try:
                dest_item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                # Disconnected, so that the next turn of the loop connects again.
                self.client.connection.disconnect()
                raise
            if not dest_item:
                raise Empty()
            dest, item = dest_item
            queue = bytes_to_str(dest).rsplit(self.sep, 1)[0]  # type: ignore[no-untyped-call]
            self._queue_cycle.rotate(queue)
            self.connection._deliver(message_json.loads(item), queue)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            self._flush_brpop_reauth()  # type: ignore[no-untyped-call]

    def _client_id(self, connection: Any) -> int | None:
        """Redis' id of the (idle) BRPOP connection, asked once per socket."""
        known = self._client_ids.get(connection)
        if known is not None and known[0] is connection._sock:
            return known[1]
        try:
            connection.send_command("CLIENT", "ID")
            client_id = int(connection.read_response())
        except redis.ResponseError:
            self._unblock_refused = True
            return None
        self._client_ids[connection] = (connection._sock, client_id)
        return client_id

    def _brpop_start(self, timeout: Any = None) -> None:
        if self.followup_slots and self.qos.followups_due() >= self.followup_slots:
            analyses = [q for q in self.active_queues if q in self.memory_ack_queues]
            others = [q for q in self.active_queues if q not in self.memory_ack_queues]
            if analyses and others:
                # Every list of the analysis queues, then the others' first (traffic actions).
                keys = [self._queue_key(q, pri) for pri in self.priority_steps for q in analyses]
                keys += [self._queue_key(q, 0) for q in others]
                client_id = (
                    None if self._unblock_refused else self._client_id(self.client.connection)
                )
                if client_id is None:
                    self._brpop_keys(keys, ANALYSES_ONLY_SECONDS_POLLED)
                    return
                self._brpop_keys(keys, ANALYSES_ONLY_SECONDS)
                self._capped = client_id
                # A slot freed while the BRPOP was being sent: end it at once.
                self.followup_ended()
                return
        super()._brpop_start(timeout)  # type: ignore[no-untyped-call]

    def _queue_key(self, queue: str, priority: int) -> str:
        """The list kombu keeps `queue`'s messages of `priority` on."""
        return str(self._q_for_pri(queue, priority))  # type: ignore[no-untyped-call]

    def _brpop_keys(self, keys: list[str], timeout: float) -> None:
        """kombu's `_brpop_start` on these lists alone."""
        self._in_poll = self.client.connection
        self._brpop_sent_at = time.monotonic()  # type: ignore[assignment]  # kombu's None
        command = ["BRPOP", *keys, timeout]
        if self.global_keyprefix:
            command = self.client._prefix_args(command)
        self.client.connection.send_command(*command)

    # Change 5. kombu's cached_property is a data descriptor, so its value is never read from the
    # instance's dict directly. These keep the value in `__dict__` too, where kombu looks for it,
    # and are read at the cost of an attribute.
    @functools.cached_property
    def client(self) -> Any:
        return self._create_client(asynchronous=True)

    @functools.cached_property
    def subclient(self) -> Any:
        return self._create_client(asynchronous=True).pubsub()

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()  # type: ignore[no-untyped-call]
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        """kombu's, with its tick (change 6) adding a socket to the loop only when the loop
        does not read it already."""
        ticks = set(loop.on_tick)
        super().register_with_event_loop(connection, loop)  # type: ignore[no-untyped-call]
        added = set(loop.on_tick) - ticks
        if len(added) != 1:
            return  # not the kombu this was written for: its own tick stays
        loop.on_tick.discard(added.pop())
        cycle: Any = self.cycle  # kombu's MultiChannelPoller
        readers, add_reader = loop.readers, loop.add_reader
        on_readable = self.on_readable

        def on_poll_start() -> None:
            cycle.on_poll_start()
            for fd in cycle.fds:
                # kombu re-adds every socket on every tick: epoll answers EEXIST, raised and
                # caught in Python each time. A socket (re)registered by the cycle went through
                # epoll there; one the loop dropped (a disconnect) is no longer in `readers`.
                if readers.get(fd) != (on_readable, (fd,)):
                    add_reader(fd, on_readable, fd)

        loop.on_tick.add(on_poll_start)


# For `broker_transport`: kombu resolves "module:Class".
TRANSPORT = f"{__name__}:Transport"
