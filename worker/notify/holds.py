"""A chat service's "wait N seconds" (Retry-After), kept per target in this process.

A service that answers 429 with Retry-After refuses every message to it until then, not only
the one it answered. Before, each queued message to that target still sent its own request
into the same wait: in a burst of events, hundreds of 429s, each costing a request, its
answer and a re-schedule while analyses wait for the CPU (`tests/perf/chat_outage.py`). Now a
message whose target is held waits out the hold as that 429 would have made it wait, without
the request. Kept in memory, not Redis: no round trip per message; each worker process sends
about one request per hold.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

# Messages deferred by a hold come due over this share of it after it ends, not all at once:
# the first one finds out whether the service is back, and a new hold stops the rest.
SPREAD = 0.2


class TargetHolds:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def hold(self, target: str, seconds: float) -> None:
        """The target asked for `seconds` of quiet; a longer hold already there stays."""
        until = self.clock() + seconds
        with self._lock:
            if target not in self._until or until > self._until[target]:
                self._until[target] = until

    def wait_for(self, target: str) -> float:
        """Seconds until a message to `target` may be sent (0: now), spread (SPREAD)."""
        with self._lock:
            until = self._until.get(target)
            if until is None:
                return 0.0
            left = until - self.clock()
            if left <= 0:
                del self._until[target]
                return 0.0
        return left * (1 + random.uniform(0, SPREAD))
