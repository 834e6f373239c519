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


# A bound by size as well as by count: an answer carries its sequence's last poll summaries
# (~14 KB each once full), so 10,000 of them would be ~140 MB. Past this, the oldest go first,
# and a repeat of theirs is answered from Redis instead (the same answer, one round trip more).
MAX_BYTES = 32 * 1024 * 1024


class RecentAnswers:
    def __init__(self, max_entries: int = 10_000, max_bytes: int = MAX_BYTES) -> None:
        self._entries: OrderedDict[bytes, Answer] = OrderedDict()
        self._max = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0  # the keys and bodies held

    def get(self, key: bytes) -> Answer | None:
        answer = self._entries.get(key)
        if answer is None:
            return None
        if answer.expires <= time.monotonic():
            self._drop(key)
            return None
        return answer

    def put(self, key: bytes, answer: Answer) -> None:
        if key in self._entries:
            self._drop(key)
        self._entries[key] = answer
        self._bytes += len(key) + len(answer.body)
        while len(self._entries) > self._max or self._bytes > self._max_bytes:
            self._drop_oldest()
        # The oldest first: drop those past their window, so memory follows the polls of the
        # last reuse window, not every rollout ever answered (a soak: 2,000 rollouts polling
        # every 30 s held 2,000 answers for a 15 s window; the webhook's RSS grew with them).
        now = time.monotonic()
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.expires > now:
                break
            self._drop_oldest()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def _drop(self, key: bytes) -> None:
        self._bytes -= len(key) + len(self._entries.pop(key).body)

    def _drop_oldest(self) -> None:
        key, answer = self._entries.popitem(last=False)
        self._bytes -= len(key) + len(answer.body)
