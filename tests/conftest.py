"""Session-wide real components: one redis-server and one Prometheus holding every scenario.

Both are started lazily (only sessions that use them pay), stopped in the fixture finalizers, and
swept by tests/support/procs.py's atexit hook if a finalizer never runs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.procs import PrometheusServer, RedisServer, start_with_scenarios
from tests.support.redis_cluster import RedisClusterNodes
from tests.support.scenarios import DATA_END, DATA_START, SCENARIOS

# Startup costs measured in this session, printed in the terminal summary (fixture output is
# captured, so printing from the fixture itself would be lost).
_STARTUP_SECONDS: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
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
