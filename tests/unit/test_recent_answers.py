"""The webhook's memory of finished answers (webhooks/recent.py) holds the answers of the current
reuse window, not every rollout it ever answered."""

from __future__ import annotations

import time

from webhooks.recent import Answer, RecentAnswers


def answer(seconds_left: float, name: str) -> Answer:
    return Answer(time.monotonic() + seconds_left, name, "pass", b"{}")


def test_answers_past_their_window_are_dropped_as_new_ones_come():
    recent = RecentAnswers(max_entries=10_000)
    for i in range(100):
        recent.put(f"old-{i}".encode(), answer(0.05, f"old-{i}"))
    assert len(recent) == 100
    time.sleep(0.1)
    recent.put(b"new", answer(15, "new"))
    assert len(recent) == 1
    assert recent.get(b"new") is not None and recent.get(b"old-1") is None


def test_answers_still_in_their_window_are_kept_and_served():
    recent = RecentAnswers(max_entries=10_000)
    recent.put(b"a", answer(15, "a"))
    recent.put(b"b", answer(15, "b"))
    hit = recent.get(b"a")
    assert hit is not None and hit.analysis_id == "a" and len(recent) == 2


def test_the_count_stays_bounded():
    recent = RecentAnswers(max_entries=3)
    for i in range(5):
        recent.put(str(i).encode(), answer(15, str(i)))
    assert len(recent) == 3 and recent.get(b"0") is None and recent.get(b"4") is not None


def test_the_bytes_held_stay_bounded_and_counted() -> None:
    """Answers grow with their sequence's summaries: the memory is bounded by size too, the
    oldest going first; the count of bytes follows every way an answer leaves."""
    recent = RecentAnswers(max_entries=10_000, max_bytes=100)
    body = b"x" * 30
    for i in range(5):
        recent.put(str(i).encode(), Answer(time.monotonic() + 15, str(i), "pass", body))
    assert len(recent) == 3 and recent.held_bytes == 3 * 31
    assert recent.get(b"1") is None and recent.get(b"2") is not None
    recent.put(b"4", Answer(time.monotonic() + 15, "4", "pass", b"y"))  # the same key again
    assert len(recent) == 3 and recent.held_bytes == 2 * 31 + 2
    recent.put(b"big", Answer(time.monotonic() + 15, "big", "pass", b"z" * 200))
    assert len(recent) == 0 and recent.held_bytes == 0  # larger than the bound: not kept
    recent.put(b"short", answer(0.05, "short"))
    time.sleep(0.1)
    assert recent.get(b"short") is None and recent.held_bytes == 0
