"""Reject oversized bodies before the application sees them (ASGI middleware).

The body is read here, at most `max_bytes` of it, then handed on; chunked bodies without a
Content-Length are counted as they arrive, so a large stream is cut off early, not buffered.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

Scope = dict[str, Any]


class BodyLimit:
    def __init__(self, app: Any, max_bytes: int, timeout_seconds: float = 5.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await reject(scope, send, 400, "content-length", "is not a number")
                return
            if int(declared) > self.max_bytes:
                await reject(scope, send, 413, "body", f"is larger than {self.max_bytes} bytes")
                return
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_seconds
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                # asyncio.timeout, not wait_for: no task per read (a loop turn per request).
                async with asyncio.timeout(max(remaining, 0.001)):
                    message = await receive()
            except TimeoutError:
                await reject(
                    scope, send, 408, "body", f"not received within {self.timeout_seconds:g} s"
                )
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await reject(scope, send, 413, "body", f"is larger than {self.max_bytes} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            message: dict[str, Any] = await receive()
            return message

        await self.app(scope, replay, send)


async def reject(scope: Scope, send: Any, status: int, field: str, message: str) -> None:
    body = json.dumps(
        {"error": f"{field}: {message}", "field": field, "message": message},
        separators=(",", ":"),  # the same bytes as every other error answer (webhooks/errors.py)
    )
    # What the request log line says about it (webhooks/app.py's Observe writes that line).
    scope.setdefault("state", {})["log"] = {"rejected": f"{field}: {message}"}
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body.encode()})
