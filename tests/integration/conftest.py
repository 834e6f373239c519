"""A running rollout-analyzer (webhook + Celery workers) on the session's Redis and Prometheus."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.procs import wait_for
from tests.support.service import Webhook, Worker, service_env

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Stack:
    webhook: Webhook
    workers: list[Worker]
    env: dict[str, str]
    work_dir: Path
    extra_workers: list[Worker] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.webhook.url

    def client(self, timeout: float = 15.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=AUTH, timeout=timeout)

    def add_worker(self, name: str) -> Worker:
        worker = Worker(self.env, self.work_dir, name=name).start()
        self.extra_workers.append(worker)
        return worker

    def stop(self) -> None:
        stop_all([self])


def stop_all(stacks: list[Stack]) -> None:
    """Every process of every stack told to stop at once, then waited for."""
    procs = [p for stack in stacks for p in (stack.webhook, *stack.workers, *stack.extra_workers)]
    for proc in procs:
        proc.begin_stop()
    for proc in procs:
        proc.stop()


def start_stack(
    redis_url: str,
    work_dir: Path,
    name: str,
    *,
    prometheus_url: str | None = None,
    recording: str | None = None,
    workers: int = 2,
    settings: dict[str, str] | None = None,
) -> Stack:
    env = service_env(
        redis_url,
        prometheus_url=prometheus_url,
        recording=recording,
        key_prefix=f"ra:{name}:",
        queue=f"ra-{name}",
        extra={"ROLLOUT_ANALYZER_API_TOKEN": TOKEN, **(settings or {})},
    )
    started = [Worker(env, work_dir, name=f"w{i}").start() for i in range(workers)]
    webhook = Webhook(env, work_dir).start()
    stack = Stack(webhook, started, env, work_dir)
    if workers:
        wait_for(
            lambda: httpx.get(f"{webhook.url}/readyz", timeout=2).status_code == 200,
            20,
            "readyz to report a live worker",
        )
    return stack


@contextmanager
def split_stacks(
    state_url: str,
    broker_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    prefix: str = "",
    settings: dict[str, str] | None = None,
) -> Iterator[Callable[..., Stack]]:
    """A factory of stacks whose state lives at `state_url` and whose Celery queue is the plain
    Redis at `broker_url` (the split a Redis Cluster needs); stopped on exit."""
    stacks: list[Stack] = []

    def make(name: str, *, settings: dict[str, str] | None = None, **kwargs: Any) -> Stack:
        split = {"ROLLOUT_ANALYZER_BROKER_URL": broker_url, **common, **(settings or {})}
        work_dir = tmp_path_factory.mktemp(name)
        stack = start_stack(state_url, work_dir, prefix + name, settings=split, **kwargs)
        stacks.append(stack)
        return stack

    common = settings or {}
    try:
        yield make
    finally:
        stop_all(stacks)


@pytest.fixture(scope="module")
def stack_factory(
    redis_server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(name: str, **kwargs) -> Stack:
        stack = start_stack(redis_server.url, tmp_path_factory.mktemp(name), name, **kwargs)
        stacks.append(stack)
        return stack

    yield make
    stop_all(stacks)
