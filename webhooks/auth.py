"""Bearer-token authentication of the API routes (compared in constant time)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request

from worker.settings import Settings


class Unauthorized(Exception):
    pass


def authorize(settings: Settings, request: Request) -> None:
    """Raise Unauthorized unless the request carries the token; no token configured lets
    everyone in."""
    if settings.api_token is None:
        return
    expected = f"Bearer {settings.api_token.get_secret_value()}".encode()
    given = request.headers.get("authorization", "").encode()
    if not hmac.compare_digest(given, expected):
        raise Unauthorized


def bearer_token(settings: Settings) -> Callable[[Request], Awaitable[None]]:
    """`authorize` as a FastAPI dependency."""

    async def authorized(request: Request) -> None:
        authorize(settings, request)

    return authorized
