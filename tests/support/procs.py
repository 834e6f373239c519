"""Real redis-server and prometheus processes for tests, and promtool backfilling.

Every process runs in its own process group (so a kill reaches anything it forks) and is
registered for an `atexit` sweep; fixtures also stop them in their finalizers. Started from the
main thread, children additionally get PR_SET_PDEATHSIG=SIGKILL, so even a SIGKILLed pytest does
not leave them behind. (Not from other threads: the kernel fires that signal when the *thread*
that forked exits, which would kill a server restarted from a short-lived helper thread.)
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from tests.support.scenarios import Scenario

_PR_SET_PDEATHSIG = 1
_LIVE: set[ManagedProcess] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll `predicate` until it is true; raise TimeoutError naming `what` after `timeout` s.

    The predicate may raise to give up early (e.g. when the process it waits for has died).
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ManagedProcess:
    """One child process with its output in `log_path`; stop(), kill(), start() again."""

    def __init__(self, name: str, work_dir: Path | None) -> None:
        self.name = name
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix=f"{name}-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.work_dir / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self, argv: list[str]) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self._close_log()
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in _close_log
        main_thread = threading.current_thread() is threading.main_thread()
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.work_dir,
            start_new_session=True,
            preexec_fn=_die_with_parent if main_thread else None,
        )
        _LIVE.add(self)

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self._proc.returncode}; log tail:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal_group(self, sig: signal.Signals) -> None:
        # Only while the leader is unreaped: after that its pid (= the group id) may be reused.
        assert self._proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, sig)

    def begin_stop(self) -> None:
        """SIGTERM, not waiting: stop many at once, then `stop` each (a warm shutdown takes a
        second or two; one after the other, a module's stacks took most of a minute)."""
        if self._proc is not None and self._proc.poll() is None:
            self._signal_group(signal.SIGTERM)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (graceful), then SIGKILL if it does not exit within `timeout` s."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._proc.wait(timeout)
        self._finish()

    def kill(self) -> None:
        """SIGKILL at once: a crash, for tests of what survives one."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._signal_group(signal.SIGKILL)
            self._proc.wait(10)
        self._finish()

    def _finish(self) -> None:
        self._close_log()
        _LIVE.discard(self)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE):
        proc.kill()


class RedisServer(ManagedProcess):
    """redis-server on 127.0.0.1 without persistence; restarts keep the same port."""

    def __init__(
        self, port: int | None = None, work_dir: Path | None = None, *, appendonly: bool = False
    ) -> None:
        super().__init__("redis", work_dir)
        self.port = port or free_port()
        self._chose_port = port is None
        # AOF (fsync every second), as deploy/ runs it: queued tasks survive a restart.
        self.appendonly = appendonly

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> RedisServer:
        # A port picked by us can be taken by someone else before redis binds it: pick again,
        # but only before the first successful start (restarts must keep their port).
        attempts = 3 if self._chose_port else 1
        for attempt in range(attempts):
            self._spawn(self._argv())
            try:
                wait_for(self._pong, timeout, f"redis-server to answer PING on port {self.port}")
                self._chose_port = False
                return self
            except RuntimeError:
                self.kill()
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _argv(self) -> list[str]:
        return [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "everysec",
            "--dir",
            str(self.work_dir),
            "--daemonize",
            "no",
            "--logfile",
            "",
        ]

    def _pong(self) -> bool:
        self._check_alive()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


PROMETHEUS_CONFIG = """\
# Written by tests/support/procs.py. No scrape jobs: they would add series to the test data.
global:
  scrape_interval: 1m
  evaluation_interval: 1m
  query_log_file: {query_log}
scrape_configs: []
"""


class PrometheusServer(ManagedProcess):
    """prometheus serving a TSDB directory (e.g. filled by `backfill`) on 127.0.0.1."""

    def __init__(
        self, data_dir: Path, port: int | None = None, work_dir: Path | None = None
    ) -> None:
        super().__init__("prometheus", work_dir)
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.config_path = self.work_dir / "prometheus.yml"
        self.query_log_path = self.work_dir / "query.log"
        # What the data holds, when it came from tests.support.scenarios (see start_with_scenarios).
        self.scenarios: dict[str, Scenario] = {}
        self.data_start: float | None = None
        self.data_end: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        self.config_path.write_text(
            PROMETHEUS_CONFIG.format(query_log=json.dumps(str(self.query_log_path)))
        )
        self._spawn(
            [
                "prometheus",
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data_dir}",
                "--storage.tsdb.retention.time=100y",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ]
        )
        try:
            wait_for(self._ready, timeout, f"prometheus /-/ready on port {self.port}")
        except TimeoutError as exc:
            self.kill()
            raise TimeoutError(f"{exc}; log tail:\n{self.log_tail()}") from None
        except RuntimeError:
            self.kill()
            raise
        return self

    def _ready(self) -> bool:
        self._check_alive()
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def queries(self) -> list[str]:
        """PromQL strings Prometheus evaluated, oldest first, from its JSON query log."""
        try:
            lines = self.query_log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line)["params"]["query"])
            except (ValueError, KeyError):
                continue  # a blank or half-written last line
        return out

    def http_requests_total(self, handler: str = "/api/v1/query") -> float:
        """Prometheus' own `prometheus_http_requests_total` for `handler`, summed over codes.

        The counter is bumped inside the handler chain, before the server finishes the response,
        so a client that has read a whole response already sees it counted.
        """
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        needle = f'handler="{handler}"'
        total = 0.0
        for line in text.splitlines():
            if line.startswith("prometheus_http_requests_total{") and needle in line:
                total += float(line.rsplit(" ", 1)[1])
        return total


def backfill(openmetrics_text: str, data_dir: Path) -> None:
    """Turn OpenMetrics text into TSDB blocks in `data_dir` with promtool."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", suffix=".om", dir=data_dir.parent, prefix="backfill-", delete=False
    ) as handle:
        handle.write(openmetrics_text)
        source = Path(handle.name)
    try:
        result = subprocess.run(
            [
                "promtool",
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                "-q",
                str(source),
                str(data_dir),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
    finally:
        source.unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"promtool backfill failed ({result.returncode}): {result.stderr or result.stdout}"
        )


def start_with_scenarios(
    scenarios: list[Scenario], start: float, end: float, work_dir: Path
) -> PrometheusServer:
    """Backfill `scenarios` over [start, end] into `work_dir`/data and start Prometheus on it."""
    from tests.support.scenarios import render_openmetrics

    data_dir = Path(work_dir) / "data"
    backfill(render_openmetrics(scenarios, start, end), data_dir)
    server = PrometheusServer(data_dir, work_dir=Path(work_dir))
    server.scenarios = {scenario.name: scenario for scenario in scenarios}
    server.data_start, server.data_end = start, end
    return server.start()
