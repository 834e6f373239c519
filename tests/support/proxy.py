"""An HTTP proxy in front of a real server that can delay, fail or drop answers on demand."""

from __future__ import annotations

import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Faults:
    delay_seconds: float = 0.0
    status: int | None = None  # answer this status instead of forwarding
    body: bytes | None = None  # answer 200 with this body instead of forwarding
    # Rewrite the upstream's answer (e.g. drop series: partial data).
    transform: Callable[[bytes], bytes] | None = None
    refuse_post: bool = False  # answer 405 to a POST, as some read-only proxies do


class FaultyProxy:
    """`tls`: serve HTTPS with this server context (a TLS endpoint in front of the upstream)."""

    def __init__(self, upstream: str, tls: ssl.SSLContext | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.faults = Faults()
        # Each request as path?parameters, whether sent in the URL (GET) or as a form (POST).
        self.requests: list[str] = []
        self.methods: list[str] = []
        self.headers: list[dict[str, str]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: object) -> None:
                pass

            def do_GET(self) -> None:
                self._forward(None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self._forward(self.rfile.read(length))

            def _forward(self, body: bytes | None) -> None:
                form = (
                    body.decode()
                    if body
                    and self.headers.get("Content-Type", "").startswith(
                        "application/x-www-form-urlencoded"
                    )
                    else ""
                )
                proxy.requests.append(f"{self.path}?{form}" if form else self.path)
                proxy.methods.append(self.command)
                proxy.headers.append(dict(self.headers.items()))
                faults = proxy.faults
                if faults.refuse_post and self.command == "POST":
                    self._answer(405, b"method not allowed")
                    return
                if faults.delay_seconds:
                    time.sleep(faults.delay_seconds)
                if faults.status is not None:
                    self._answer(faults.status, b'{"status":"error","error":"injected"}')
                    return
                if faults.body is not None:
                    self._answer(200, faults.body)
                    return
                request = urllib.request.Request(
                    proxy.upstream + self.path, data=body, method=self.command
                )
                for key in ("Content-Type", "Authorization"):
                    if self.headers.get(key):
                        request.add_header(key, self.headers[key])
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:
                        payload = answer.read()
                        if faults.transform is not None:
                            payload = faults.transform(payload)
                        self._answer(answer.status, payload)
                except urllib.error.HTTPError as exc:
                    self._answer(exc.code, exc.read())

            def _answer(self, status: int, payload: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (its timeout): exactly what some tests cause

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            # A refused handshake fails accept() with an SSLError (an OSError): the server
            # drops that connection and goes on.
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
