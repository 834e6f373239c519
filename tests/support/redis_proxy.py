"""A Redis (RESP) proxy in front of a real redis-server that loses replies after Redis ran the
command: the connection drops where the reply should come, as when a socket times out or a
connection resets mid-call. redis-py then retries the same command on a new connection (its
default: ConnectionError and TimeoutError, 10 times), so Redis runs it a second time. That is
the case every script and write of ours must survive: the second run must answer what the
first did and change nothing more.

One command at a time per connection: read a command, forward it, read its whole reply. At the
end of a batch (one command, or a whole pipeline: nothing more sent yet) pass the last reply on
or drop the connection. A (P)SUBSCRIBE turns the connection into a plain pipe.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

# Commands that change data (ours and redis-py's): a lost reply of one of these is a write that
# happened although the caller was told it failed.
WRITES = frozenset(
    b"EVAL EVALSHA SET SETEX SETNX GETSET DEL UNLINK EXPIRE PEXPIRE HSET HSETNX HDEL HINCRBY "
    b"INCR INCRBY DECR LPUSH RPUSH LREM LTRIM ZADD ZREM ZREMRANGEBYSCORE ZREMRANGEBYRANK SADD "
    b"SREM PUBLISH EXEC".split()
)
SUBSCRIBING = frozenset({b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"})


class _Stream:
    """Buffered reads of whole RESP frames, keeping the raw bytes to pass on."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        self.buffer += chunk

    def _line(self, at: int) -> tuple[bytes, int]:
        while (end := self.buffer.find(b"\r\n", at)) < 0:
            self._fill()
        return self.buffer[at:end], end + 2

    def _exact(self, at: int, size: int) -> int:
        while len(self.buffer) < at + size:
            self._fill()
        return at + size

    def _frame(self, at: int) -> int:
        """The offset just past the RESP2/RESP3 frame that starts at `at`."""
        line, at_next = self._line(at)
        kind, rest = line[:1], line[1:]
        if kind in (b"+", b"-", b":", b"_", b",", b"#", b"("):
            return at_next
        if kind in (b"$", b"!", b"="):
            size = int(rest)
            return at_next if size < 0 else self._exact(at_next, size + 2)
        if kind in (b"*", b"~", b">", b"%", b"|"):
            count = int(rest)
            count = count * 2 if kind in (b"%", b"|") else count
            for _ in range(max(0, count)):
                at_next = self._frame(at_next)
            if kind == b"|":  # an attribute precedes the reply it annotates
                at_next = self._frame(at_next)
            return at_next
        return at_next  # an inline command: one line

    def take_frame(self) -> bytes:
        if not self.buffer:
            self._fill()
        end = self._frame(0)
        frame, self.buffer = self.buffer[:end], self.buffer[end:]
        return frame


def command_name(frame: bytes) -> bytes:
    if not frame.startswith(b"*"):
        return frame.split(b" ", 1)[0].strip().upper()
    parts = frame.split(b"\r\n")
    return parts[2].upper() if len(parts) > 2 else b""


def label(frame: bytes) -> str:
    """The command's name; a script's with its SHA1 (EVALSHA:<sha>, EVAL:<sha>)."""
    name = command_name(frame)
    if name not in (b"EVAL", b"EVALSHA") or not frame.startswith(b"*"):
        return name.decode()
    # *N, $len, name, $len, the script or its SHA1: read by length (a script holds newlines).
    at = frame.index(b"\r\n", frame.index(b"\r\n", frame.index(b"\r\n") + 2) + 2) + 2
    size_end = frame.index(b"\r\n", at)
    size = int(frame[at + 1 : size_end])
    body = frame[size_end + 2 : size_end + 2 + size]
    if name == b"EVAL":
        return f"EVAL:{hashlib.sha1(body, usedforsecurity=False).hexdigest()}"
    return f"EVALSHA:{body.decode().lower()}"


class LossyRedisProxy:
    """`lose(batch)` decides, per batch of commands (one command, or a pipeline) whose last reply
    is not an error, whether to lose that reply. The default loses it for the first sending of
    each distinct batch with a write in it (a retry sends the same bytes, so it goes through):
    every write runs twice."""

    def __init__(self, upstream_port: int, lose: Callable[[list[bytes]], bool] | None = None):
        self.upstream_port = upstream_port
        # Lost replies per batch: its writes' names joined by + (a script: EVALSHA:<sha>).
        self.lost: Counter[str] = Counter()
        self.enabled = True
        # SCRIPT LOAD answered without reaching Redis, as when a cluster client loads a script
        # on the masters it knew and a fail-over sends the next call to a promoted replica.
        self.script_loads_elsewhere = False
        self._seen: set[bytes] = set()
        # A batch's reply held back until the event returned for it is set (or 2 s passed):
        # what the caller does before it reads a reply shows in what happens meanwhile.
        self.hold: Callable[[list[bytes]], threading.Event | None] = lambda _batch: None
        self.held: list[tuple[str, bool]] = []  # (the batch's writes, released by its event)
        # Until then (monotonic) Redis is out of reach: connections close, nothing is passed on.
        self.down_until = 0.0
        self._lock = threading.Lock()
        self._lose = lose or self._first_of_each_write
        self._server = socket.create_server(("127.0.0.1", 0))
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._open: set[socket.socket] = set()

    @property
    def port(self) -> int:
        return int(self._server.getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _first_of_each_write(self, batch: list[bytes]) -> bool:
        if not any(command_name(c) in WRITES for c in batch):
            return False
        key = b"".join(batch)  # a retry sends the same bytes: it goes through
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
            return True

    def __enter__(self) -> LossyRedisProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *_: object) -> None:
        self._closed = True
        self._server.close()
        with self._lock:
            for sock in list(self._open):
                _close(sock)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._spawn(self._serve, client)

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._open.update((client, upstream))
        commands, replies = _Stream(client), _Stream(upstream)
        batch: list[bytes] = []  # a pipeline (or MULTI ... EXEC) arrives as one batch
        try:
            while True:
                command = commands.take_frame()
                if time.monotonic() < self.down_until:
                    return  # never reached Redis: the caller sees a dropped connection
                if self.script_loads_elsewhere and _is_script_load(command):
                    client.sendall(_script_load_reply(command))  # answered, never loaded here
                    continue
                batch.append(command)
                upstream.sendall(command)
                if command_name(command) in SUBSCRIBING:  # pushed messages follow, unasked
                    self._pipe(client, upstream, commands.buffer, replies.buffer)
                    return
                reply = replies.take_frame()
                if commands.buffer:  # more of the batch to come: its replies go on as usual
                    client.sendall(reply)
                    continue
                # The batch is over: all of it ran. Lose its last reply, or pass it on.
                sent, batch = batch, []
                ok = not reply.startswith((b"-", b"!"))
                if self.enabled and ok and self._lose(sent):
                    named = "+".join(label(c) for c in sent if command_name(c) in WRITES)
                    with self._lock:
                        self.lost[named] += 1
                    return  # the caller hears only a dropped connection
                event = self.hold(sent)
                if event is not None:
                    released = event.wait(2)
                    with self._lock:
                        self.held.append(("+".join(label(c) for c in sent), released))
                client.sendall(reply)
        except (ConnectionError, OSError):
            return
        finally:
            for sock in (client, upstream):
                _close(sock)
            with self._lock:
                self._open.difference_update((client, upstream))

    def _pipe(self, client: socket.socket, upstream: socket.socket, early: bytes, back: bytes):
        """Both ways as they come (a subscribed connection)."""
        if early:
            upstream.sendall(early)
        if back:
            client.sendall(back)

        def copy(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
            except OSError:
                return
            finally:
                _close(src)
                _close(dst)

        self._spawn(copy, upstream, client)
        copy(client, upstream)


def _is_script_load(frame: bytes) -> bool:
    parts = frame.split(b"\r\n", 5)
    return command_name(frame) == b"SCRIPT" and len(parts) > 4 and parts[4].upper() == b"LOAD"


def _script_load_reply(frame: bytes) -> bytes:
    """The SHA1 Redis would have answered (the frame's last bulk string is the script)."""
    head = frame.index(b"\r\n", frame.index(b"\r\n", frame.index(b"\r\n") + 2) + 2) + 2
    head = frame.index(b"\r\n", head) + 2  # past the subcommand's length line
    head = frame.index(b"\r\n", head) + 2  # past LOAD
    size_end = frame.index(b"\r\n", head)
    body = frame[size_end + 2 : size_end + 2 + int(frame[head + 1 : size_end])]
    sha = hashlib.sha1(body, usedforsecurity=False).hexdigest().encode()
    return b"$40\r\n" + sha + b"\r\n"


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
