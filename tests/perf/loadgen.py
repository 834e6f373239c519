"""Many concurrent HTTP/1.1 calls from one process, at a cost low enough not to skew the bench.

httpx's AsyncClient spent more CPU managing 500 pooled connections than the webhook spent
answering them (its first answer arrived 1.6 s after the start, the webhook's last in 5.6 s, the
client's in 14.8 s). Argo opens one connection per AnalysisRun anyway: so does this, on bare
asyncio streams.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

Result = tuple[float, int | str, str]  # (seconds, 200 / "503 store" / "timeout" / "error:…", id)


def refused(status: int, answer: bytes) -> int | str:
    """A refusal named by the field its error answer gives (`503 store`, `503 analysis`), so a
    bench's error count says what failed; the bare status where the body names none."""
    try:
        field = json.loads(answer).get("field")
    except (ValueError, AttributeError):
        return status
    return f"{status} {field}" if isinstance(field, str) else status


async def post_json(
    host: str,
    port: int,
    path: str,
    body: dict[str, Any],
    timeout: float,
    sizes: list[int] | None = None,
) -> Result:
    """One call on a connection of its own; `sizes` (if given) gets each 200 answer's length."""
    payload = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode() + payload
    began = time.perf_counter()

    async def exchange() -> tuple[int | str, str]:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers = dict(
                (k.strip().lower(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:])
            )
            answer = await reader.readexactly(int(headers.get("content-length", "0")))
            named = status if status == 200 else refused(status, answer)
            if sizes is not None and status == 200:
                sizes.append(len(answer))
            return named, headers.get("x-analysis-id", "")
        finally:
            writer.close()

    try:
        status, analysis_id = await asyncio.wait_for(exchange(), timeout)
    except TimeoutError:
        return time.perf_counter() - began, "timeout", ""
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
        return time.perf_counter() - began, f"error:{type(exc).__name__}", ""
    return time.perf_counter() - began, status, analysis_id


async def post_all(
    url: str, path: str, bodies: list[dict[str, Any]], timeout: float
) -> list[Result]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    return await asyncio.gather(*(post_json(host, port, path, b, timeout) for b in bodies))
