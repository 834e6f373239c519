"""The Prometheus HTTP API: what a PromQL round trip costs us, kept small.

Why not prometheus-api-client on requests: with our ~1.7 KB analysis query it cost ~2 ms of CPU
per call (requests' per-call proxy lookup in the environment, and the long query percent-encoded
character by character into the URL). Queries are POSTed as a form, as Prometheus' own Go client
does, falling back to GET where a server or proxy answers 405/501.

The direct route (no proxy: the usual case, Prometheus in the cluster) is a small keep-alive pool
of sockets, shared by a worker's threads: a request's head and body go out in one send, and the
answer is parsed by httptools (llhttp in C, uvicorn's parser, a dependency already). It was
`http.client` until the eighteenth pass (docs/performance.md): that sent head and body apart and
read the status line and each header in Python, the headers through the email package, a cold
path run once per analysis; the worker's instructions per fresh analysis went 6.69 -> 6.36 M.
Before, urllib3's PoolManager had cost 0.63-0.69 ms of CPU per query against 0.37-0.43 ms on
http.client (URL parsing, header dicts, Timeout and response objects, a poll of the reused
socket). Nothing checks
an idle connection before reuse: one the server closed meanwhile fails at once (broken pipe,
reset, EOF; SSLEOFError over TLS) and the request is sent once more, at once, on a fresh
connection (a query is idempotent). Through a proxy (HTTP(S)_PROXY, NO_PROXY, read from the
environment once) urllib3's ProxyManager stays: CONNECT tunnels and proxy auth.
Tracing hooks in through `observe_requests` (worker/tracing.py), so analysis/ stays free of
OpenTelemetry.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, urlsplit

import httptools
import orjson
import urllib3

if TYPE_CHECKING:
    from analysis.sources.prometheus import PrometheusConfig

# (method, url, query, headers to send: a hook may add its own) → a context around the call,
# yielding a function told the answer's status code.
RequestObserver = Callable[
    [str, str, str, dict[str, str]], AbstractContextManager[Callable[[int], None]]
]


@contextmanager
def _unobserved(method: str, url: str, query: str, headers: dict[str, str]) -> Iterator[Any]:
    yield lambda status: None


_observer: RequestObserver = _unobserved


def observe_requests(observer: RequestObserver | None) -> None:
    """Wrap every Prometheus request of this process (None: stop)."""
    global _observer
    _observer = observer or _unobserved


class PrometheusHTTPError(Exception):
    """A non-200 answer, with its status code."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(f"HTTP {status_code}: {body[:300].decode('utf-8', 'replace')}")
        self.status_code = status_code


class PrometheusAPIError(Exception):
    """A 200 whose body is not Prometheus' `{"status": "success", "data": ...}`."""


class TransportError(Exception):
    """No answer: connection refused, reset or timed out, a broken answer (any OSError or
    http.client.HTTPException of the transport). Worth another attempt."""


class PrometheusConnectionError(TransportError):
    """No connection could be made at all (refused, unreachable, name unknown, connect timeout)."""


class TLSError(TransportError):
    """A TLS failure, a certificate problem above all: retrying does not heal it."""


FORM = "application/x-www-form-urlencoded"
POOL_SIZE = 16  # idle connections kept per Prometheus; a worker's threads share them


class PrometheusHTTP:
    def __init__(self, config: PrometheusConfig) -> None:
        self.base = config.url.rstrip("/")
        # identity: as http.client said; without it a server may answer gzipped
        self.headers = {"Accept": "application/json", "Accept-Encoding": "identity"}
        if config.token:
            self.headers["Authorization"] = f"Bearer {config.token}"
        elif config.username:
            basic = urllib3.util.make_headers(
                basic_auth=f"{config.username}:{config.password or ''}"
            )
            self.headers.update(basic)
        for name, value in self.headers.items():
            if any(c in value for c in "\r\n\0"):  # it would end the header, start another
                raise ValueError(f"Prometheus {name} header: a line break or NUL in the secret")
        self.post = True  # until the server says it takes GET only
        self.transport = _transport(self.base, config)

    def query(
        self, path: str, fields: dict[str, Any], timeout: float, ahead: Sent | None = None
    ) -> Any:
        """`data.result` of a query endpoint, from the answer to `ahead` (this very query, sent
        before: `send_ahead`) where it has one; raises PrometheusHTTPError, PrometheusAPIError,
        TLSError or TransportError."""
        url = f"{self.base}{path}"
        form = {k: str(v) for k, v in fields.items()}
        answer = ahead.answer(timeout) if ahead is not None else None
        status, body = answer if answer is not None else self._send(url, form, timeout)
        if status in (405, 501) and self.post:
            self.post = False  # a proxy that forbids POST: GET from now on
            status, body = self._send(url, form, timeout)
        if status != 200:
            raise PrometheusHTTPError(status, body)
        try:
            payload = orjson.loads(body)  # C: a few times json's speed, on the verdict's path
            if payload.get("status") != "success":
                raise ValueError(f"status {payload.get('status')!r}")
            return payload["data"]["result"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PrometheusAPIError(f"unexpected answer from {path}: {exc}") from exc

    def send_ahead(self, path: str, fields: dict[str, Any]) -> Sent | None:
        """The query sent now, its answer read later by `query(..., ahead=)`; None where it
        cannot go without waiting (no idle connection), through a proxy, as a GET, or with a
        request hook installed (a trace's span belongs to the task, not to who sent ahead)."""
        hooked = _observer is not _unobserved
        if hooked or not (self.post and isinstance(self.transport, DirectPool)):
            return None
        encoded = "&".join(f"{k}={_quote(k, str(v))}" for k, v in fields.items())
        headers = {**self.headers, "Content-Type": FORM}
        return self.transport.send_ahead("POST", f"{self.base}{path}", encoded.encode(), headers)

    def _send(self, url: str, form: dict[str, str], timeout: float) -> tuple[int, bytes]:
        method = "POST" if self.post else "GET"
        headers = dict(self.headers)
        with _observer(method, url, form.get("query", ""), headers) as answered:
            encoded = "&".join(f"{k}={_quote(k, v)}" for k, v in form.items())
            if self.post:
                headers["Content-Type"] = FORM
                status, data = self.transport.send("POST", url, encoded.encode(), headers, timeout)
            else:
                get = f"{url}?{encoded}" if encoded else url
                status, data = self.transport.send("GET", get, None, headers, timeout)
            answered(status)
            return status, data


# A canary's query is the same at every poll; percent-encoding 1.7 KB in Python is not free.
_quoted_query = lru_cache(maxsize=4096)(quote_plus)


def _quote(name: str, value: str) -> str:
    return _quoted_query(value) if name == "query" else quote_plus(value)


def _transport(base: str, config: PrometheusConfig) -> DirectPool | ProxiedPool:
    parts = urlsplit(base)
    context = config.ssl_context() if parts.scheme == "https" else None
    proxy = _proxy_for(parts.scheme, parts.hostname or "")
    if proxy:
        return ProxiedPool(proxy, context, insecure=config.insecure)
    return DirectPool(base, context)


class _ClosedWhileIdle(Exception):
    """A reused connection that the server had closed: the request never reached it."""


class _Answer:
    """httptools' callbacks for one response: its body, and whether it has ended."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.headers_done = False
        self.framed = False  # a length or chunks say where the body ends, not the close
        self.complete = False
        self.keep_alive = False
        self.parser: httptools.HttpResponseParser | None = None  # set once made with this

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self.framed = True

    def on_headers_complete(self) -> None:
        self.headers_done = True
        # llhttp knows it here (version, Connection); after the message it has been reset.
        self.keep_alive = self.parser is not None and self.parser.should_keep_alive()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class Sent:
    """A request sent ahead on a pooled connection (`DirectPool.send_ahead`): its answer is
    read once, by whoever takes it; `close` drops it unread."""

    def __init__(self, pool: DirectPool, sock: socket.socket) -> None:
        self.pool = pool
        self.sock = sock
        self.at = time.monotonic()
        self.answered = False  # whether `answer` read an answer

    def answer(self, timeout: float) -> tuple[int, bytes] | None:
        """(status, body); None when the connection had been closed by the server before the
        request reached it (send the request again). Raises TransportError or TLSError."""
        try:
            answer = self.pool._read(self.sock, timeout, reused=True)
        except _ClosedWhileIdle:
            return None
        self.answered = True
        return answer

    def close(self) -> None:
        self.sock.close()


class DirectPool:
    """Keep-alive HTTP/1.1 connections to one Prometheus, shared by a worker's threads.

    A request goes out in one send (http.client sent head and body apart) and its answer is
    parsed by httptools (llhttp, in C; uvicorn's parser, already ours): http.client read the
    status line and each header in Python and parsed the headers with the email package, a
    cold path run once per analysis. Idle sockets wait in a list used as a LIFO (append and pop
    are atomic: no lock), so the most recently used, the least likely to have been closed by
    the server, goes out first.
    """

    def __init__(self, base: str, context: ssl.SSLContext | None) -> None:
        parts = urlsplit(base)
        if any(c in base for c in _UNSAFE_IN_URL):
            raise ValueError(f"Prometheus URL {base!r}: spaces or control characters")
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if context is not None else 80)
        self.host_header = parts.netloc.rpartition("@")[2]
        self.prefix_length = len(f"{parts.scheme}://{parts.netloc}")  # url[n:]: path and query
        self.context = context
        self.size = POOL_SIZE
        self._idle: list[socket.socket] = []

    @property
    def idle(self) -> int:
        return len(self._idle)

    def send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        request = self._request(method, url[self.prefix_length :] or "/", body, headers)
        try:
            sock = self._idle.pop()
        except IndexError:
            pass
        else:
            try:
                return self._exchange(sock, request, timeout, reused=True)
            except _ClosedWhileIdle:
                pass  # once more, at once, on a fresh connection
        return self._exchange(self._connect(timeout), request, timeout, reused=False)

    def _request(
        self, method: str, target: str, body: bytes | None, headers: dict[str, str]
    ) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        lines.extend(f"{name}: {value}" for name, value in headers.items())
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        head = "\r\n".join(lines)
        breaks = len(lines) - 1  # the joins' own: a header must not start another
        if head.count("\r") != breaks or head.count("\n") != breaks or "\0" in head:
            raise ValueError("a Prometheus request header holds a line break or NUL")
        return (head + "\r\n\r\n").encode("latin-1") + (body or b"")

    def _connect(self, timeout: float) -> socket.socket:
        try:
            sock = socket.create_connection((self.host, self.port), timeout)
        except OSError as exc:
            where = f"{self.host}:{self.port}"
            raise PrometheusConnectionError(
                f"cannot connect to {where}: {_described(exc)}"
            ) from exc
        with suppress(OSError):  # as http.client: the request in one segment, no Nagle wait
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.context is None:
            return sock
        try:
            return self.context.wrap_socket(sock, server_hostname=self.host)  # the handshake
        except ssl.SSLError as exc:
            sock.close()
            raise TLSError(_described(exc)) from exc
        except OSError as exc:
            sock.close()
            raise PrometheusConnectionError(
                f"cannot connect to {self.host}:{self.port}: {_described(exc)}"
            ) from exc

    def send_ahead(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str]
    ) -> Sent | None:
        """The request sent on an idle connection, its answer left for `Sent.answer`; None
        when no connection is idle or the send would wait: the caller (Celery's event loop,
        worker/ahead.py) must never block on a connect or a full buffer."""
        request = self._request(method, url[self.prefix_length :] or "/", body, headers)
        try:
            sock = self._idle.pop()
        except IndexError:
            return None
        try:
            sock.setblocking(False)
            whole = sock.send(request) == len(request)
        except OSError:  # closed by the server while idle, a TLS socket wanting to read first
            whole = False
        if not whole:
            sock.close()
            return None
        return Sent(self, sock)

    def _exchange(
        self, sock: socket.socket, request: bytes, timeout: float, reused: bool
    ) -> tuple[int, bytes]:
        try:
            sock.settimeout(timeout)
            sock.sendall(request)
        except BaseException as exc:
            self._failed(sock, exc, reused)
            raise
        return self._read(sock, timeout, reused)

    def _read(self, sock: socket.socket, timeout: float, reused: bool) -> tuple[int, bytes]:
        answer = _Answer()
        parser = answer.parser = httptools.HttpResponseParser(answer)
        try:
            sock.settimeout(timeout)
            while not answer.complete:
                data = sock.recv(_READ_SIZE)
                if not data:
                    if answer.headers_done and not answer.framed:
                        break  # a body that ends with the connection
                    raise _ended_early(answer)
                parser.feed_data(data)
        except BaseException as exc:
            self._failed(sock, exc, reused)
            raise
        finally:
            answer.parser = None  # no cycle left for the garbage collector
        if answer.complete and answer.keep_alive:
            self._give_back(sock)
        else:
            sock.close()
        return parser.get_status_code(), b"".join(answer.chunks)

    @staticmethod
    def _failed(sock: socket.socket, exc: BaseException, reused: bool) -> None:
        """A failed send or read: its socket closed (never back into the pool in an unknown
        state), the failure raised as ours; anything else goes on as it was."""
        sock.close()
        if reused and _closed_by_server(exc):
            raise _ClosedWhileIdle from exc
        if isinstance(exc, ssl.SSLError):
            raise TLSError(_described(exc)) from exc
        if isinstance(exc, OSError | httptools.HttpParserError):
            raise TransportError(_described(exc)) from exc

    def _give_back(self, sock: socket.socket) -> None:
        # Lock-free and still bounded: whoever appends and then sees more than `size` idle takes
        # the oldest out, so once returns settle at most `size` are kept.
        self._idle.append(sock)
        if len(self._idle) > self.size:
            with suppress(IndexError):  # another thread took it meanwhile
                self._idle.pop(0).close()


_READ_SIZE = 65536
_UNSAFE_IN_URL = frozenset(" \t\r\n\0")


def _ended_early(answer: _Answer) -> ConnectionError:
    if not answer.headers_done and not answer.chunks:
        # Nothing of an answer: what a connection the server closed while idle gives.
        return ConnectionResetError("the server closed the connection without an answer")
    return ConnectionError("the server closed the connection in the middle of its answer")


def _closed_by_server(exc: BaseException) -> bool:
    """What a request on a connection the server closed while it was idle fails with: the send
    (broken pipe, reset) or the first read (EOF before any answer, `_ended_early`; reset)."""
    if isinstance(exc, BrokenPipeError | ConnectionResetError | ConnectionAbortedError):
        return True
    return isinstance(exc, ssl.SSLEOFError)  # the TLS flavour of the same EOF


def _described(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class ProxiedPool:
    """Through the environment's proxy: urllib3's ProxyManager (CONNECT tunnels, proxy auth)."""

    def __init__(self, proxy: str, context: ssl.SSLContext | None, insecure: bool) -> None:
        tls: dict[str, Any] = {}
        if context is not None:
            tls["ssl_context"] = context
            if insecure:
                tls.update(cert_reqs=ssl.CERT_NONE, assert_hostname=False)
        auth = urlsplit(proxy)
        headers = None
        if auth.username:
            credentials = f"{auth.username}:{auth.password or ''}"
            headers = urllib3.util.make_headers(proxy_basic_auth=credentials)
        self.manager = urllib3.ProxyManager(proxy, proxy_headers=headers, maxsize=POOL_SIZE, **tls)

    def send(
        self, method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        limit = urllib3.Timeout(connect=timeout, read=timeout)
        try:
            response = self.manager.request(
                method, url, body=body, headers=headers, timeout=limit, retries=False
            )
        except (urllib3.exceptions.SSLError, ssl.SSLError) as exc:
            raise TLSError(_described(exc)) from exc
        except urllib3.exceptions.NewConnectionError as exc:
            raise PrometheusConnectionError(_described(exc)) from exc
        except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as exc:
            raise TransportError(_described(exc)) from exc
        return response.status, response.data


def _proxy_for(scheme: str, host: str) -> str | None:
    """The environment's proxy for this Prometheus, read once (requests read it per call)."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(host) or _in_no_proxy_network(host):
        return None
    return proxy


def _in_no_proxy_network(host: str) -> bool:
    """NO_PROXY entries in CIDR notation (10.0.0.0/8: common in clusters), which requests
    honoured and urllib's own check does not."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    entries = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    for entry in (e.strip() for e in entries.split(",")):
        if "/" not in entry:
            continue
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False
