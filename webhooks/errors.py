"""The one shape of every error answer: `{"error", "field", "message"}`, naming the field."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

RETRY_AFTER_SECONDS = "5"


def error(status: int, field: str, message: str, **extra: Any) -> JSONResponse:
    body = {"error": f"{field}: {message}", "field": field, "message": message, **extra}
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if status == 503 else None
    return JSONResponse(body, status_code=status, headers=headers)
