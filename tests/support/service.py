"""Our own processes for integration tests: the webhook under uvicorn and Celery workers.

Both are the real `rollout-analyzer serve` / `rollout-analyzer worker` commands, configured only
through ROLLOUT_ANALYZER_* environment variables, as in a cluster.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.procs import ManagedProcess, free_port, wait_for

ENTRY = [sys.executable, "-m", "cli"]


def service_env(
    redis_url: str,
    *,
    prometheus_url: str | None = None,
    recording: str | None = None,
    key_prefix: str = "ra:",
    queue: str = "rollout-analyzer",
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_ANALYZER_")}
    env.update(
        {
            "ROLLOUT_ANALYZER_REDIS_URL": redis_url,
            "ROLLOUT_ANALYZER_KEY_PREFIX": key_prefix,
            "ROLLOUT_ANALYZER_QUEUE": queue,
            "ROLLOUT_ANALYZER_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if prometheus_url:
        env["ROLLOUT_ANALYZER_PROMETHEUS_URL"] = prometheus_url
    if recording:
        env["ROLLOUT_ANALYZER_RECORDING"] = recording
    env.update(extra or {})
    return env


class EnvProcess(ManagedProcess):
    def __init__(self, name: str, env: dict[str, str], work_dir: Path | None = None) -> None:
        super().__init__(name, work_dir)
        self.env = env

    def _spawn_env(self, argv: list[str]) -> None:
        saved = dict(os.environ)
        try:
            os.environ.clear()
            os.environ.update(self.env)
            self._spawn(argv)
        finally:
            os.environ.clear()
            os.environ.update(saved)


class Webhook(EnvProcess):
    def __init__(self, env: dict[str, str], work_dir: Path | None = None, port: int | None = None):
        super().__init__("webhook", env, work_dir)
        self.port = port or free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Webhook:
        self._spawn_env([*ENTRY, "serve", "--host", "127.0.0.1", "--port", str(self.port)])

        def up() -> bool:
            self._check_alive()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, f"webhook on {self.url}")
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


class Worker(EnvProcess):
    def __init__(
        self,
        env: dict[str, str],
        work_dir: Path | None = None,
        *,
        pool: str = "threads",
        concurrency: int = 2,
        name: str = "worker",
        queues: str = "all",
        wrapper: list[str] | None = None,
    ) -> None:
        super().__init__(name, env, work_dir)
        self.pool = pool
        self.concurrency = concurrency
        self.queues = queues
        self.wrapper = wrapper or []  # a command the worker runs under, e.g. valgrind's

    def start(self, timeout: float = 30.0) -> Worker:
        argv = [*self.wrapper, *ENTRY, "worker", f"--pool={self.pool}"]
        argv.append(f"--concurrency={self.concurrency}")
        argv.append(f"--queues={self.queues}")
        self._spawn_env([*argv, f"--hostname={self.name}-{free_port()}@%h"])

        def ready() -> bool:
            self._check_alive()
            return "ready." in self.log_path.read_text(errors="replace")

        wait_for(ready, timeout, f"{self.name} to be ready")
        return self

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def served_demo(work_dir: Path) -> Iterator[tuple[str, str]]:
    """`rollout-analyzer demo` on its embedded defaults (none of our environment): its base URL
    and what it printed before serving."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLOUT_ANALYZER_")}
    log = work_dir / "demo.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*ENTRY, "demo", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    try:
        wait_for(lambda: "Serving" in log.read_text(), 60, "the demo to print its verdicts")
        yield f"http://127.0.0.1:{port}", log.read_text()
    finally:
        process.terminate()
        process.wait(15)
