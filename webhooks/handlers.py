"""Error answers for what FastAPI itself refuses: every one in our `{error, field, message}`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from webhooks.auth import Unauthorized
from webhooks.errors import error


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("request",), "msg": "invalid"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        return error(422, ".".join(loc) or "request", str(first.get("msg", "invalid")))

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_: Request, __: Exception) -> JSONResponse:
        response = error(401, "authorization", "a valid bearer token is required")
        response.headers["WWW-Authenticate"] = "Bearer"
        return response
