"""Who may read the report pages.

Any one of, when configured: the API token or the read-only UI token, as a bearer token or as
the password of HTTP Basic auth (what a browser asks for by itself when it gets a 401); or a
non-empty header set by the operator's auth proxy (`ROLLOUT_ANALYZER_UI_AUTH_HEADER`). With
none configured the pages are as open as /v1 is without a token. The UI token and the proxy
header open /ui only: /v1 keeps asking for the API token.
"""

from __future__ import annotations

import base64
import binascii
import hmac

from starlette.requests import Request

from worker.settings import Settings

REALM = 'Basic realm="rollout-analyzer", charset="UTF-8"'


class UiAuth:
    def __init__(self, settings: Settings) -> None:
        tokens = [settings.api_token, settings.ui_token]
        self.tokens = [t.get_secret_value().encode() for t in tokens if t is not None]
        self.header = (settings.ui_auth_header or "").strip().lower() or None

    @property
    def open(self) -> bool:
        return not self.tokens and self.header is None

    def allows(self, request: Request) -> bool:
        if self.open:
            return True
        if self.header is not None and request.headers.get(self.header, "").strip():
            return True
        given = _credential(request.headers.get("authorization", ""))
        # Compare against every token (no early exit) so timing tells nothing about which.
        matched = False
        for token in self.tokens:
            matched |= given is not None and hmac.compare_digest(given, token)
        return matched


def _credential(header: str) -> bytes | None:
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value.encode()
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        _, sep, password = decoded.partition(b":")
        return password if sep else None
    return None
