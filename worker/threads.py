"""The worker's helper thread (lease renewals) starts on first use."""

from __future__ import annotations

import threading
from collections.abc import Callable


def running(
    thread: threading.Thread | None, target: Callable[[], None], name: str
) -> threading.Thread:
    """`thread` while it is alive, else a new daemon thread running `target`, started."""
    if thread is not None and thread.is_alive():
        return thread
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
