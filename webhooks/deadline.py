"""Steps before the wait, bound by the answer's deadline and never cut short.

Each step before the wait has a timeout of its own (the pool's, a reply's, a retry's, the
enqueue's, an undo's), and several faults at once could add them up past Argo's timeout.
Cancelling a step at a deadline is no answer: a claim without its task, or a failed enqueue
without its undo, would hold every poll of that canary until the claim expired. So a step runs
as a task of its own: the request waits for it until its deadline and then answers 503, and
the step runs to its end meanwhile (the next poll finds what it made). What a step that lost
its request leaves behind is handed to a callback (the webhook: a waiter to forget).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("rollout_analyzer.webhook")
T = TypeVar("T")


class Late(Exception):
    """The step was still running at the deadline; it goes on without its request."""


class Outliving:
    """The steps that outlived their requests, held until they end."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    async def within(
        self,
        work: Coroutine[Any, Any, T],
        seconds: float,
        left: Callable[[T], None],
    ) -> T:
        """`work`'s result, or Late after `seconds`; `left(result)` is called for a result that
        came after its request stopped waiting."""
        task = asyncio.ensure_future(work)
        try:
            await asyncio.wait((task,), timeout=max(0.0, seconds))
        except BaseException:  # the request itself was cancelled: the step goes on alone
            self._adopt(task, left)
            raise
        if task.done():
            return task.result()
        self._adopt(task, left)
        raise Late

    def _adopt(self, task: asyncio.Task[T], left: Callable[[T], None]) -> None:
        self._running.add(task)

        def ended(done: asyncio.Task[T]) -> None:
            self._running.discard(done)
            if done.cancelled():
                return
            failure = done.exception()
            if failure is not None:
                log.warning("a late step failed", extra={"error": str(failure)[:200]})
                return
            left(done.result())

        task.add_done_callback(ended)

    def __len__(self) -> int:
        return len(self._running)

    async def drain(self, seconds: float) -> None:
        """At shutdown: let the running steps end (a claim gets its task, or its undo)."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=seconds)
