"""Finished answers this process gave, kept for the rest of their reuse window.

Argo polls with byte-identical requests. Within the reuse window the answer is, by definition,
the analysis already given (the claim in Redis pins it until the window ends), so an exact
repeat can be answered from memory: no validation, no Redis round trip, no re-encoding.
Only "latest window" requests are kept; one with an explicit `end` is never served from here.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    expires: float  # time.monotonic()
    analysis_id: str
    verdict: str
    body: bytes
    service: str | None = None
    rollout: str | None = None


class RecentAnswers:
    def __init__(self, max_entries: int = 10_000) -> None:
        self._entries: OrderedDict[bytes, Answer] = OrderedDict()
        self._max = max_entries

    def get(self, key: bytes) -> Answer | None:
        answer = self._entries.get(key)
        if answer is None:
            return None
        if answer.expires <= time.monotonic():
            del self._entries[key]
            return None
        return answer

    def put(self, key: bytes, answer: Answer) -> None:
        self._entries[key] = answer
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        # The oldest first: drop those past their window, so memory follows the polls of the
        # last reuse window, not every rollout ever answered (a soak: 2,000 rollouts polling
        # every 30 s held 2,000 answers for a 15 s window; the webhook's RSS grew with them).
        now = time.monotonic()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires > now:
                break
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
