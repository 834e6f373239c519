"""The Prometheus HTTP API over one urllib3 pool: what a PromQL round trip costs us, kept small.

Why not prometheus-api-client on requests: with our ~1.7 KB analysis query it cost ~2 ms of CPU
per call (requests' per-call proxy lookup in the environment, and the long query percent-encoded
character by character into the URL), this ~0.8 ms (tests/perf: `make bench`, row 2). Queries are
POSTed as a form, as Prometheus' own Go client does, falling back to GET where a server or proxy
answers 405/501. Proxies come from the environment once (HTTP(S)_PROXY, NO_PROXY). Tracing hooks
in through `observe_requests` (worker/tracing.py), so analysis/ stays free of OpenTelemetry.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, urlsplit

import urllib3

if TYPE_CHECKING:
    from analysis.sources.prometheus import PrometheusConfig

# (method, url, query, headers to send: a hook may add its own) → a context around the call,
# yielding a function told the answer's status code.
RequestObserver = Callable[
    [str, str, str, dict[str, str]], AbstractContextManager[Callable[[int], None]]
]


@contextmanager
def _unobserved(method: str, url: str, query: str, headers: dict[str, str]) -> Iterator[Any]:
    yield lambda status: None


_observer: RequestObserver = _unobserved


def observe_requests(observer: RequestObserver | None) -> None:
    """Wrap every Prometheus request of this process (None: stop)."""
    global _observer
    _observer = observer or _unobserved


class PrometheusHTTPError(Exception):
    """A non-200 answer, with its status code."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(f"HTTP {status_code}: {body[:300].decode('utf-8', 'replace')}")
        self.status_code = status_code


class PrometheusAPIError(Exception):
    """A 200 whose body is not Prometheus' `{"status": "success", "data": ...}`."""


TransportError = urllib3.exceptions.HTTPError  # connection refused, reset, timed out ...
TLSError = urllib3.exceptions.SSLError  # a certificate problem: retrying does not heal it

FORM = "application/x-www-form-urlencoded"
POOL_SIZE = 16  # a worker's threads share one pool per Prometheus


class PrometheusHTTP:
    def __init__(self, config: PrometheusConfig) -> None:
        self.base = config.url.rstrip("/")
        self.headers = {"Accept": "application/json"}
        if config.token:
            self.headers["Authorization"] = f"Bearer {config.token}"
        elif config.username:
            basic = urllib3.util.make_headers(
                basic_auth=f"{config.username}:{config.password or ''}"
            )
            self.headers.update(basic)
        self.post = True  # until the server says it takes GET only
        self.pool = _pool(self.base, config)

    def query(self, path: str, fields: dict[str, Any], timeout: float) -> Any:
        """`data.result` of a query endpoint; raises PrometheusHTTPError, PrometheusAPIError,
        TLSError or TransportError."""
        url = f"{self.base}{path}"
        form = {k: str(v) for k, v in fields.items()}
        status, body = self._send(url, form, timeout)
        if status in (405, 501) and self.post:
            self.post = False  # a proxy that forbids POST: GET from now on
            status, body = self._send(url, form, timeout)
        if status != 200:
            raise PrometheusHTTPError(status, body)
        try:
            payload = json.loads(body)
            if payload.get("status") != "success":
                raise ValueError(f"status {payload.get('status')!r}")
            return payload["data"]["result"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PrometheusAPIError(f"unexpected answer from {path}: {exc}") from exc

    def _send(self, url: str, form: dict[str, str], timeout: float) -> tuple[int, bytes]:
        method = "POST" if self.post else "GET"
        headers = dict(self.headers)
        with _observer(method, url, form.get("query", ""), headers) as answered:
            limit = urllib3.Timeout(connect=timeout, read=timeout)
            if self.post:
                headers["Content-Type"] = FORM
                body = "&".join(f"{k}={_quote(k, v)}" for k, v in form.items()).encode()
                response = self.pool.request(
                    "POST", url, body=body, headers=headers, timeout=limit, retries=False
                )
            else:
                response = self.pool.request(
                    "GET", url, fields=form, headers=headers, timeout=limit, retries=False
                )
            answered(response.status)
            return response.status, response.data


# A canary's query is the same at every poll; percent-encoding 1.7 KB in Python is not free.
_quoted_query = lru_cache(maxsize=4096)(quote_plus)


def _quote(name: str, value: str) -> str:
    return _quoted_query(value) if name == "query" else quote_plus(value)


def _pool(base: str, config: PrometheusConfig) -> urllib3.PoolManager:
    parts = urlsplit(base)
    tls: dict[str, Any] = {}
    if parts.scheme == "https":
        tls["ssl_context"] = config.ssl_context()
        if config.insecure:
            tls.update(cert_reqs=ssl.CERT_NONE, assert_hostname=False)
    proxy = _proxy_for(parts.scheme, parts.hostname or "")
    if proxy:
        auth = urlsplit(proxy)
        headers = None
        if auth.username:
            credentials = f"{auth.username}:{auth.password or ''}"
            headers = urllib3.util.make_headers(proxy_basic_auth=credentials)
        return urllib3.ProxyManager(proxy, proxy_headers=headers, maxsize=POOL_SIZE, **tls)
    return urllib3.PoolManager(maxsize=POOL_SIZE, **tls)


def _proxy_for(scheme: str, host: str) -> str | None:
    """The environment's proxy for this Prometheus, read once (requests read it per call)."""
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(host) or _in_no_proxy_network(host):
        return None
    return proxy


def _in_no_proxy_network(host: str) -> bool:
    """NO_PROXY entries in CIDR notation (10.0.0.0/8: common in clusters), which requests
    honoured and urllib's own check does not."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    entries = os.environ.get("no_proxy") or os.environ.get("NO_PROXY") or ""
    for entry in (e.strip() for e in entries.split(",")):
        if "/" not in entry:
            continue
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False
