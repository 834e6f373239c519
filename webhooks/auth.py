"""Bearer-token authentication of the API routes (compared in constant time)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request

from worker.settings import Settings


class Unauthorized(Exception):
    pass


def bearer_token(settings: Settings) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency: no token configured lets everyone in."""

    async def authorized(request: Request) -> None:
        if settings.api_token is None:
            return
        expected = f"Bearer {settings.api_token.get_secret_value()}".encode()
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            raise Unauthorized

    return authorized
