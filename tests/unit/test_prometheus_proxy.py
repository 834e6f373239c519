"""Which proxy the Prometheus client goes through (analysis/sources/prometheus_http.py): the
environment's HTTP(S)_PROXY (urllib3's ProxyManager), except for hosts NO_PROXY names by suffix
or by network, which are reached directly (the keep-alive pool of sockets). A URL that would
break the request line is refused when the client is made."""

from __future__ import annotations

import pytest
import urllib3

from analysis.sources.prometheus import PrometheusConfig
from analysis.sources.prometheus_http import DirectPool, PrometheusHTTP, ProxiedPool

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def pool_for(url: str) -> DirectPool | ProxiedPool:
    return PrometheusHTTP(PrometheusConfig(url=url)).transport


def proxied(url: str) -> bool:
    pool = pool_for(url)
    assert isinstance(pool, DirectPool | ProxiedPool), pool
    return isinstance(pool, ProxiedPool)


def environment(monkeypatch, **values: str) -> None:
    """Only these proxy variables, whatever the machine running the tests has."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_the_environments_proxy_is_used(monkeypatch):
    environment(monkeypatch, HTTP_PROXY="http://user:secret@proxy.example:3128")
    pool = pool_for("http://10.1.2.3:9090")
    assert isinstance(pool, ProxiedPool)
    manager = pool.manager
    assert isinstance(manager, urllib3.ProxyManager)
    assert manager.proxy is not None and manager.proxy.host == "proxy.example"
    assert manager.proxy_headers.get("proxy-authorization", "").startswith("Basic ")


def test_no_proxy_by_network_and_by_suffix(monkeypatch):
    environment(
        monkeypatch,
        HTTP_PROXY="http://proxy.example:3128",
        NO_PROXY="10.0.0.0/8, .svc.cluster.local",
    )
    for url in ("http://10.1.2.3:9090", "http://prometheus.monitoring.svc.cluster.local:9090"):
        assert not proxied(url), url
    assert proxied("http://192.168.1.5:9090")


def test_no_proxy_configured_means_a_direct_pool(monkeypatch):
    for name in (
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    pool = pool_for("http://10.1.2.3:9090")
    assert isinstance(pool, DirectPool)
    assert (pool.host, pool.port) == ("10.1.2.3", 9090)


@pytest.mark.parametrize(
    "url", ["http://10.1.2.3:9090/prom etheus", "http://10.1.2.3:9090/a\r\nX-Injected: 1"]
)
def test_a_direct_url_that_would_break_the_request_line_is_refused(monkeypatch, url):
    environment(monkeypatch)
    with pytest.raises(ValueError, match=r"Prometheus URL .*spaces or control characters"):
        pool_for(url)
