"""Session-wide real components: one redis-server and one Prometheus holding every scenario.

Both are started lazily (only sessions that use them pay), stopped in the fixture finalizers, and
swept by tests/support/procs.py's atexit hook if a finalizer never runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.procs import PrometheusServer, RedisServer, start_with_scenarios
from tests.support.redis_cluster import RedisClusterNodes
from tests.support.scenarios import DATA_END, DATA_START, SCENARIOS

# Printed in the terminal summary: startup costs measured in this session, and the lines tests
# leave for it (`record_property("summary", line)`: what they measured). Output of a fixture or
# test is captured, and under pytest-xdist (`make test`) it is a worker process': a test's lines
# travel in its report, a worker's startup costs in its output at its end.
_STARTUP_SECONDS: dict[str, float] = {}
_SUMMARY: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":  # its properties, those of the call included
        _SUMMARY.extend(str(value) for key, value in report.user_properties if key == "summary")


def pytest_sessionfinish(session: pytest.Session) -> None:
    output = getattr(session.config, "workeroutput", None)  # an xdist worker's, to the controller
    if output is not None:
        output["startup_seconds"] = dict(_STARTUP_SECONDS)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: the controller hears a worker end
def pytest_testnodedown(node: Any, error: object) -> None:
    started = getattr(node, "workeroutput", {}).get("startup_seconds", {})
    for what, seconds in started.items():
        _STARTUP_SECONDS[f"{what} ({node.gateway.id})"] = seconds


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for line in _SUMMARY:
        terminalreporter.write_line(line)
    for what, seconds in _STARTUP_SECONDS.items():
        terminalreporter.write_line(f"{what}: {seconds:.2f}s")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    began = time.perf_counter()
    server = RedisServer(work_dir=tmp_path_factory.mktemp("redis")).start()
    _STARTUP_SECONDS["redis_server fixture: start"] = time.perf_counter() - began
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_flushed(redis_server: RedisServer) -> RedisServer:
    """The session redis, emptied before the test (and restarted if a test stopped it)."""
    import redis

    if not redis_server.running:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """A real Redis Cluster (3 masters, 1 replica each), started once for the session."""
    began = time.perf_counter()
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("redis-cluster")).start()
    _STARTUP_SECONDS["redis_cluster fixture: 6 nodes + cluster create"] = (
        time.perf_counter() - began
    )
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    """Prometheus with every scenario of tests/support/scenarios.py backfilled.

    `.scenarios` maps name -> Scenario; `.data_start`/`.data_end` bound the data (epoch s).
    """
    began = time.perf_counter()
    server = start_with_scenarios(SCENARIOS, DATA_START, DATA_END, tmp_path_factory.mktemp("prom"))
    _STARTUP_SECONDS["prometheus fixture: render + backfill + start"] = time.perf_counter() - began
    try:
        yield server
    finally:
        server.kill()
