"""The body limit (webhooks/limits.py), driven through the ASGI protocol: oversized, slow and
malformed bodies are refused with the field named before the application sees anything; a body
within the limit reaches it whole, in one message."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from webhooks.limits import BodyLimit

LIMIT = 1000


class App:
    """The application behind the limit: records what reached it and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        if scope["type"] == "http":
            message = await receive()
            self.bodies.append(message.get("body", b""))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


class Client:
    """One request: the messages the server would deliver, and what was sent back."""

    def __init__(self, chunks: list[bytes], *, hang_after: bool = False) -> None:
        self.incoming = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks)
        ]
        if hang_after:  # the client stops sending mid-body
            self.incoming[-1]["more_body"] = True
        self.hang_after = hang_after
        self.received = 0
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        if self.received < len(self.incoming):
            self.received += 1
            return self.incoming[self.received - 1]
        if self.hang_after:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        starts = [m for m in self.sent if m["type"] == "http.response.start"]
        return starts[0]["status"] if starts else None

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent if "body" in m))


def call(
    client: Client,
    *,
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    kind: str = "http",
    timeout: float = 5.0,
) -> App:
    app = App()
    scope = {"type": kind, "method": method, "headers": headers or []}
    asyncio.run(BodyLimit(app, LIMIT, timeout)(scope, client.receive, client.send))
    return app


def test_a_body_within_the_limit_reaches_the_app_whole():
    client = Client([b'{"a":', b" 1", b"}"])
    app = call(client, headers=[(b"content-length", b"8")])
    assert app.bodies == [b'{"a": 1}']
    assert client.status == 200


@pytest.mark.parametrize("method", ["GET", "DELETE", "HEAD"])
def test_requests_without_a_body_pass_untouched(method):
    client = Client([b"x" * (LIMIT + 1)])
    app = call(client, method=method)
    assert app.calls == 1 and client.status == 200
    assert client.received == 1  # the app read it, not the limit


def test_non_http_scopes_pass_untouched():
    app = call(Client([]), kind="lifespan")
    assert app.calls == 1


def test_a_declared_length_over_the_limit_is_413_before_reading():
    client = Client([b"x" * 10])
    app = call(client, headers=[(b"content-length", str(LIMIT + 1).encode())])
    assert client.status == 413 and client.body["field"] == "body"
    assert f"larger than {LIMIT} bytes" in client.body["message"]
    assert app.calls == 0 and client.received == 0


def test_a_declared_length_that_is_not_a_number_is_400():
    client = Client([b"{}"])
    app = call(client, headers=[(b"content-length", b"12abc")])
    assert client.status == 400 and client.body["field"] == "content-length"
    assert app.calls == 0


def test_a_stream_without_length_is_cut_off_as_soon_as_it_is_too_large():
    chunks = [b"x" * 400] * 10  # 4000 bytes, 4x the limit
    client = Client(chunks)
    app = call(client)
    assert client.status == 413 and client.body["field"] == "body"
    assert app.calls == 0
    assert client.received == 3  # stopped at the chunk that crossed the limit


def test_a_body_that_does_not_arrive_in_time_is_408():
    client = Client([b'{"a":'], hang_after=True)
    app = call(client, timeout=0.2)
    assert client.status == 408 and client.body["field"] == "body"
    assert "0.2 s" in client.body["message"]
    assert app.calls == 0


def test_a_client_that_goes_away_mid_body_gets_nothing_and_the_app_sees_nothing():
    client = Client([b'{"a":'])
    client.incoming[-1]["more_body"] = True  # then a disconnect
    app = call(client)
    assert client.sent == [] and app.calls == 0


def test_the_refusal_closes_the_connection():
    client = Client([b"x" * (LIMIT + 1)])
    call(client)
    start = next(m for m in client.sent if m["type"] == "http.response.start")
    assert (b"connection", b"close") in start["headers"]
    assert (b"content-type", b"application/json") in start["headers"]
