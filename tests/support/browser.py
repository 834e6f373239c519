"""Headless Chromium (Debian's `chromium`) driven over its DevTools protocol.

One browser per test module; each `visit` opens a fresh tab, records every request the page
made and every console message, exception and CSP report, and can save a screenshot. The
websocket client is `websocket-client` (already installed with the `kubernetes` client).
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import websocket

from tests.support.procs import ManagedProcess, wait_for

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    raise FileNotFoundError("chromium is not installed (make system-deps installs it)")


@dataclass
class PageVisit:
    """What one page load did, as a person and as the network saw it."""

    url: str
    status: int | None = None
    text: str = ""  # document.body.innerText: what a person reads
    html: str = ""
    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def outside_loopback(self) -> list[str]:
        """Requests to anything but this machine (data: URLs never leave the page)."""
        outside = []
        for url in self.requests:
            parts = urlsplit(url)
            if parts.scheme in ("data", "about", "chrome-error", "file"):
                continue
            if parts.hostname not in LOOPBACK:
                outside.append(url)
        return outside


class Browser(ManagedProcess):
    def __init__(self, work_dir: Path | None = None) -> None:
        super().__init__("chromium", work_dir)
        self.profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=self.work_dir))
        self.port: int | None = None
        self._ids = itertools.count(1)

    def start(self, timeout: float = 30.0) -> Browser:
        argv = [chromium_path(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"]
        self._spawn(argv)
        active = self.profile / "DevToolsActivePort"

        def listening() -> bool:
            self._check_alive()
            return active.exists() and bool(active.read_text().strip())

        wait_for(listening, timeout, "chromium's DevTools port")
        self.port = int(active.read_text().splitlines()[0])
        return self

    def visit(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        screenshot: Path | None = None,
        width: int = 1280,
        height: int = 900,
        javascript: bool = True,
        timeout: float = 15.0,
    ) -> PageVisit:
        tab = httpx.put(f"http://127.0.0.1:{self.port}/json/new?about:blank", timeout=5).json()
        ws = websocket.create_connection(tab["webSocketDebuggerUrl"], timeout=timeout)
        visit = PageVisit(url)
        try:
            session = _Session(ws, self._ids, visit)
            session.call("Page.enable")
            session.call("Network.enable")
            session.call("Runtime.enable")
            session.call("Log.enable")
            session.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            if headers:
                session.call("Network.setExtraHTTPHeaders", {"headers": headers})
            if not javascript:
                session.call("Emulation.setScriptExecutionDisabled", {"value": True})
            session.call("Page.navigate", {"url": url})
            session.wait_event("Page.loadEventFired", timeout)
            # A moment for late console messages and subresource requests to arrive.
            session.drain(0.2)
            visit.text = session.evaluate("document.body ? document.body.innerText : ''")
            visit.html = session.evaluate("document.documentElement.outerHTML")
            if screenshot is not None:
                full = session.call("Page.getLayoutMetrics")["cssContentSize"]
                shot = session.call(
                    "Page.captureScreenshot",
                    {
                        "format": "png",
                        "captureBeyondViewport": True,
                        "clip": {
                            "x": 0,
                            "y": 0,
                            "width": width,
                            "height": min(full["height"], 4000),
                            "scale": 1,
                        },
                    },
                )
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
        finally:
            ws.close()
            httpx.get(f"http://127.0.0.1:{self.port}/json/close/{tab['id']}", timeout=5)
        return visit

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        shutil.rmtree(self.profile, ignore_errors=True)


class _Session:
    """Calls and events on one tab's websocket; events are recorded into the visit."""

    def __init__(self, ws: websocket.WebSocket, ids: Any, visit: PageVisit) -> None:
        self.ws = ws
        self.ids = ids
        self.visit = visit
        self.seen: list[str] = []

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        while True:
            message = self._receive()
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    def evaluate(self, expression: str) -> str:
        answer = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return str(answer.get("result", {}).get("value", ""))

    def wait_event(self, method: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while method not in self.seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout:g}s for {self.visit.url}")
            self._receive()

    def drain(self, seconds: float) -> None:
        previous = self.ws.gettimeout()
        self.ws.settimeout(seconds)
        try:
            while True:
                self._receive()
        except websocket.WebSocketTimeoutException:
            pass
        finally:
            self.ws.settimeout(previous)

    def _receive(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.ws.recv())
        method = message.get("method")
        if method:
            self.seen.append(method)
            self._record(method, message.get("params", {}))
        return message

    def _record(self, method: str, params: dict[str, Any]) -> None:
        visit = self.visit
        if method == "Network.requestWillBeSent":
            visit.requests.append(params["request"]["url"])
        elif method == "Network.responseReceived" and params.get("type") == "Document":
            response = params["response"]
            if response["url"] == visit.url:
                visit.status = int(response["status"])
                visit.headers = {k.lower(): v for k, v in response["headers"].items()}
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            visit.console_errors.append(json.dumps(params.get("args"))[:500])
        elif method == "Runtime.exceptionThrown":
            visit.console_errors.append(json.dumps(params.get("exceptionDetails"))[:500])
        elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
            # CSP violations, failed loads and mixed content arrive here.
            entry = params["entry"]
            visit.console_errors.append(f"{entry.get('source')}: {entry.get('text')}"[:500])
