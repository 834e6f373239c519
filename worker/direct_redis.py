"""Sockets of our own to Redis, for the few commands every analysis sends.

After the idle gap between polls (Argo polls each canary every 30 s; `make bench` pauses 35 ms)
the code runs with cold caches, and there a script call through redis-py 8's client cost
~450 us of CPU, where the same command written to a socket and its reply read by hiredis cost
~220 us (tests/perf/cold_redis_call.py: one EVALSHA after a 35 ms sleep, medians of 400). The
difference is redis-py's way to the socket: the pool's checkout and release, its events and
metrics, the retry wrapper, a deprecation shim, a poll for stale data. Those are kept for
everything else. DirectRedis: a socket per worker thread; AsyncDirectRedis: the webhook's one
pipelined connection and its completion subscription.

Only for one plain Redis over TCP, RESP2 (what `redis://` gives): a cluster, TLS, a unix socket
or a Sentinel pool keep redis-py for every command (`of` answers None; PooledSender sends ahead
on redis-py's pool there). A failure drops the socket (the next command connects again) and
raises what redis-py raises (ConnectionError, TimeoutError, ResponseError, NoScriptError);
callers fall back to redis-py's own path, with its retries, on the first two.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, cast

import hiredis
import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

Arg = str | bytes | int | float
T = TypeVar("T")
log = logging.getLogger("rollout_analyzer.redis")
_UNREAD = object()
_clients: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


def pack(args: tuple[Arg, ...]) -> bytes:
    """One command in RESP: an array of bulk strings (numbers as redis-py writes them)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise redis.DataError(f"a command argument must be text, bytes or a number: {arg!r}")
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


def _error(reply: Exception) -> redis.RedisError:
    message = str(reply)
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    return redis.ResponseError(message)


def _refused(reply: Exception) -> redis.ConnectionError:
    """AUTH or SELECT refused: a connection error (callers fall back to redis-py, which
    raises its own AuthenticationError or ResponseError saying why)."""
    if "AUTH" in str(reply):  # WRONGPASS, NOAUTH, or AUTH without a password set
        return redis.AuthenticationError(str(reply))
    return redis.ConnectionError(f"Redis refused the connection's setup: {reply}")


class _Reply:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: Any = _UNREAD


class _Socket:
    """One connection: commands written at once, replies read in the order sent."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.pid = os.getpid()
        address = _address(options)
        try:
            self.sock = socket.create_connection(address, options.get("socket_connect_timeout"))
        except TimeoutError as exc:
            raise redis.TimeoutError(f"connecting to Redis at {address}: {exc}") from exc
        except OSError as exc:
            raise redis.ConnectionError(f"connecting to Redis at {address}: {exc}") from exc
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(options.get("socket_timeout"))
        self.reader = _reader(options)
        self.pending: deque[_Reply] = deque()
        self.broken = False
        try:
            for command in _setup(options):
                self.get(self.send(command))
        except redis.ResponseError as exc:
            self.close()
            raise _refused(exc) from exc

    def send(self, command: tuple[Arg, ...]) -> _Reply:
        reply = _Reply()
        self._io("writing to", self.sock.sendall, pack(command))
        self.pending.append(reply)
        return reply

    def get(self, reply: _Reply) -> Any:
        """`reply`'s value, reading (and keeping) the replies of commands sent before it."""
        while reply.value is _UNREAD:
            if self.broken:
                raise redis.ConnectionError("the connection to Redis was closed")
            value = self.reader.gets()
            if value is False:
                self._fill()
                continue
            self.pending.popleft().value = value
        if isinstance(reply.value, hiredis.ReplyError):
            raise _error(reply.value)
        return reply.value

    def _io(self, doing: str, step: Callable[[Any], T], arg: Any) -> T:
        """A socket step; where it fails, the socket is closed and redis-py's error raised."""
        try:
            return step(arg)
        except TimeoutError as exc:
            self.close()
            raise redis.TimeoutError(f"{doing} Redis: {exc}") from exc
        except OSError as exc:
            self.close()
            raise redis.ConnectionError(f"{doing} Redis: {exc}") from exc

    def _fill(self) -> None:
        data: bytes = self._io("reading from", self.sock.recv, 65536)
        if not data:
            self.close()
            raise redis.ConnectionError("Redis closed the connection")
        try:
            self.reader.feed(data)
        except hiredis.ProtocolError as exc:
            self.close()
            raise redis.ConnectionError(f"Redis' reply cannot be read: {exc}") from exc

    def close(self) -> None:
        self.broken = True
        self.pending.clear()  # their replies will not come: `get` says so, callers fall back
        self.sock.close()


def _plain_tcp(client: Any, pools: tuple[type, ...]) -> dict[str, Any] | None:
    """The connection options of a client of one Redis over plain TCP with RESP2; else None."""
    pool = client.connection_pool
    if type(pool) not in pools:
        return None  # Sentinel's pool: the master's address is the pool's to find
    if pool.connection_class not in (redis.Connection, aioredis.Connection):  # TLS, unix socket
        return None
    options = dict(pool.connection_kwargs)
    if options.get("protocol") not in (None, 2, "2"):
        return None
    return options


def _shared(client: Any, make: Callable[[], T]) -> T:
    """One direct path per client, made on first ask."""
    with _clients_lock:
        if client not in _clients:
            _clients[client] = make()
        return cast(T, _clients[client])


def _address(options: dict[str, Any]) -> tuple[str, int]:
    return options.get("host", "localhost"), int(options.get("port", 6379))


def _setup(options: dict[str, Any]) -> list[tuple[Arg, ...]]:
    """The commands a new connection starts with: AUTH and SELECT, as the options say."""
    setup: list[tuple[Arg, ...]] = []
    password, user = options.get("password"), options.get("username")
    if password is not None:
        setup.append(("AUTH", user, password) if user else ("AUTH", password))
    if int(options.get("db") or 0):
        setup.append(("SELECT", int(options["db"])))
    return setup


def _reader(options: dict[str, Any]) -> hiredis.Reader:
    if options.get("decode_responses"):
        return hiredis.Reader(encoding=options.get("encoding", "utf-8"))
    return hiredis.Reader()


class DirectRedis:
    """Commands of this process's threads, each on a socket of its own (made on first use)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._local = threading.local()

    @classmethod
    def of(cls, client: Any) -> DirectRedis | None:
        """The direct path to `client`'s Redis, shared by its callers; None where redis-py's
        own path must serve (anything but one plain Redis over TCP with RESP2)."""
        if not isinstance(client, redis.Redis):
            return None
        options = _plain_tcp(client, (redis.ConnectionPool, redis.BlockingConnectionPool))
        return _shared(client, lambda: cls(options) if options is not None else None)

    def _socket(self) -> _Socket:
        sock: _Socket | None = getattr(self._local, "sock", None)
        if sock is None or sock.broken or sock.pid != os.getpid():
            sock = self._local.sock = _Socket(self._options)
        return sock

    def send(self, *command: Arg) -> Callable[[], Any]:
        """Write the command now; the call returned reads its reply (raising as `call`)."""
        sock = self._socket()
        reply = sock.send(command)
        return lambda: sock.get(reply)

    def call(self, *command: Arg) -> Any:
        sock = self._socket()
        return sock.get(sock.send(command))


class PooledSender:
    """`send` through redis-py's pool where no socket of ours serves (TLS, a unix socket, a
    Sentinel pool): a pooled connection held from the command to its reply, read once."""

    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool

    @classmethod
    def of(cls, client: Any) -> PooledSender | None:
        """None for a cluster client: it has no single pool (its callers run at once)."""
        pool = getattr(client, "connection_pool", None)
        return cls(pool) if isinstance(pool, redis.ConnectionPool) else None

    def send(self, *command: Arg) -> Callable[[], Any]:
        pool = self._pool
        connection: Any = pool.get_connection()
        try:
            connection.send_command(*command)
        except BaseException:
            pool.release(connection)  # a failed send has closed it already
            raise

        def read() -> Any:
            try:
                return connection.read_response()
            finally:
                pool.release(connection)

        return read


def sender_of(client: Any) -> DirectRedis | PooledSender | None:
    """What sends a command now and reads its reply later: our socket, else redis-py's pool,
    else nothing (a cluster client: run at once)."""
    return DirectRedis.of(client) or PooledSender.of(client)


class _Replies(asyncio.Protocol):
    """One asyncio connection: commands written at once, replies matched to them in order."""

    def __init__(self, reader: hiredis.Reader) -> None:
        self.reader = reader
        self.pending: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.broken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                future = self.pending.popleft()  # a caller that gave up still takes its reply
                if not future.done():
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError):
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        while self.pending:
            future = self.pending.popleft()
            if not future.done():
                future.set_exception(redis.ConnectionError("the connection to Redis was lost"))

    def send(self, command: tuple[Arg, ...]) -> asyncio.Future[Any]:
        if self.broken or self.transport is None or self.transport.is_closing():
            raise redis.ConnectionError("the connection to Redis was closed")
        future = asyncio.get_running_loop().create_future()
        self.transport.write(pack(command))
        self.pending.append(future)
        return future

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()  # connection_lost fails what is pending
        self.broken = True


class AsyncDirectRedis:
    """The webhook's commands on one pipelined connection of its event loop: each write goes out
    at once, each caller waits on a future answered in the order Redis replies. (One
    connection serves a burst: Redis runs commands one at a time whatever the connections.)"""

    def __init__(self, options: dict[str, Any]) -> None:
        self._options = options
        self._replies: _Replies | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    @classmethod
    def of(cls, client: Any) -> AsyncDirectRedis | None:
        """As DirectRedis.of, for redis.asyncio's client."""
        if not isinstance(client, aioredis.Redis):
            return None
        options = _plain_tcp(client, (aioredis.ConnectionPool, aioredis.BlockingConnectionPool))
        return _shared(client, lambda: cls(options) if options is not None else None)

    async def call(self, *command: Arg) -> Any:
        replies = self._replies
        if replies is None or replies.broken or self._loop is not asyncio.get_running_loop():
            replies = await self._connect()
        future = replies.send(command)
        try:
            async with asyncio.timeout(self._options.get("socket_timeout")):
                reply = await future
        except TimeoutError as exc:
            replies.close()  # what comes late would answer the next caller
            raise redis.TimeoutError("Redis did not answer in time") from exc
        if isinstance(reply, hiredis.ReplyError):
            raise _error(reply)
        return reply

    async def _connect(self) -> _Replies:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._lock, self._replies = loop, asyncio.Lock(), None
        assert self._lock is not None
        async with self._lock:  # one connection, however many callers find none
            if self._replies is not None and not self._replies.broken:
                return self._replies
            host, port = _address(self._options)
            try:
                async with asyncio.timeout(self._options.get("socket_connect_timeout")):
                    _, replies = await loop.create_connection(
                        lambda: _Replies(_reader(self._options)), host, port
                    )
                    for setup in _setup(self._options):
                        reply = await replies.send(setup)
                        if isinstance(reply, hiredis.ReplyError):
                            replies.close()
                            raise _refused(reply)
            except (OSError, TimeoutError) as exc:
                raise redis.ConnectionError(f"connecting to Redis at {host}:{port}: {exc}") from exc
            self._replies = replies
            return replies

    async def psubscribe(
        self, pattern: str, on_message: Callable[[bytes | str, bytes | str], None]
    ) -> Subscription:
        """A connection of its own subscribed to `pattern`: each message's channel and data are
        handed to `on_message` as they are read, with no task in between."""
        loop = asyncio.get_running_loop()
        host, port = _address(self._options)
        setup = _setup(self._options)
        subscription: Subscription | None = None
        try:
            async with asyncio.timeout(self._options.get("socket_connect_timeout")):
                _, subscription = await loop.create_connection(
                    lambda: Subscription(_reader(self._options), len(setup), on_message),
                    host,
                    port,
                )
            for command in [*setup, ("PSUBSCRIBE", pattern)]:
                subscription.write(command)
            async with asyncio.timeout(self._options.get("socket_timeout")):
                await subscription.confirmed
        except BaseException as exc:
            if subscription is not None:
                subscription.close()
            if isinstance(exc, OSError | TimeoutError):
                raise redis.ConnectionError(f"subscribing at {host}:{port}: {exc}") from exc
            raise
        return subscription


class Subscription(asyncio.Protocol):
    """A subscribed connection (RESP2): messages to a callback, its end to `closed`."""

    def __init__(
        self,
        reader: hiredis.Reader,
        setup_replies: int,
        on_message: Callable[[bytes | str, bytes | str], None],
    ) -> None:
        loop = asyncio.get_running_loop()
        self.reader = reader
        self._setup_left = setup_replies
        self._on_message = on_message
        self.confirmed: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.heard = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def write(self, command: tuple[Arg, ...]) -> None:
        if self.transport is not None:
            self.transport.write(pack(command))

    def data_received(self, data: bytes) -> None:
        self.heard = time.monotonic()
        try:
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                if isinstance(reply, hiredis.ReplyError):  # AUTH, SELECT or PSUBSCRIBE refused
                    raise _error(reply)
                if self._setup_left:
                    self._setup_left -= 1
                    continue
                kind = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
                if kind == "pmessage":
                    self._deliver(reply[2], reply[3])
                elif kind == "psubscribe" and not self.confirmed.done():
                    self.confirmed.set_result(None)
        except (hiredis.ProtocolError, redis.RedisError, IndexError, TypeError) as exc:
            if not self.confirmed.done():
                self.confirmed.set_exception(redis.ConnectionError(str(exc)))
            self.close()

    def _deliver(self, channel: bytes | str, data: bytes | str) -> None:
        try:
            self._on_message(channel, data)
        except Exception:  # one message's trouble must not end the subscription
            log.exception("a subscribed message could not be handled")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.confirmed.done():
            self.confirmed.set_exception(redis.ConnectionError("the subscription was refused"))
        if not self.closed.done():
            self.closed.set_result(None)

    async def held(self, interval: float) -> None:
        """Until the connection ends: a PING every `interval`; with nothing heard for half an
        interval more (a half-open connection hears nothing), it is closed."""
        while not self.closed.done():
            await asyncio.wait([self.closed], timeout=interval)
            if self.closed.done():
                return
            if time.monotonic() - self.heard > 1.5 * interval:
                self.close()
                return
            self.write(("PING",))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
