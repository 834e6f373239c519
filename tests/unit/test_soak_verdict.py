"""`make soak`'s verdict on memory: the webhook's RSS grows with its answers until the sequences
are full (by design), and must be flat from then; everything else from minute 3."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tests.perf.soak import verdict


def minutes(webhook_mb: Sequence[float], worker_mb: float = 100.0) -> list[dict[str, Any]]:
    """Rows as the soak writes them: sequences fill by a tenth a minute (full at minute 10)."""
    return [
        {
            "minute": n,
            "errors": 0,
            "timeouts": 0,
            "p99_ms": 100.0,
            "seq_fill": min(1.0, n / 10),
            "polls_fill": n / 120,
            "seq_mb": 1.0 * n,
            "records_mb": 4.0 * n,
            "polls_mb": 2.0 * n,
            "redis_used_mb": 20.0 + 7.0 * n,
            "redis_overhead_mb": 10.0,
            "redis_rest_mb": 3.1,
            "rss_webhook_mb": mb,
            "rss_w0_mb": worker_mb,
        }
        for n, mb in enumerate(webhook_mb, start=1)
    ]


# The 25-minute soak of 1 December: 98 → 110 MB while the answers filled, 110-112 MB after.
FILLING_THEN_FLAT = [98, 99, 101, 102, 104, 106, 107, 108, 109, 110, 110, 111, 111, 112]


def test_growth_while_the_answers_fill_passes_when_flat_after() -> None:
    judged = verdict(minutes(FILLING_THEN_FLAT))
    assert judged["growth_last_vs_minute_3"]["rss_webhook_mb"] > 1.10  # what the old rule failed
    assert judged["sequences_full_at_minute"] == 10
    assert judged["growth_last_vs_sequences_full"]["rss_webhook_mb"] < 1.03
    assert judged["passed"]


def test_a_webhook_that_keeps_growing_after_the_answers_are_full_fails() -> None:
    leaking = [*FILLING_THEN_FLAT[:10], 114, 118, 122, 126]
    judged = verdict(minutes(leaking))
    assert judged["growth_last_vs_sequences_full"]["rss_webhook_mb"] > 1.10
    assert not judged["passed"]


def test_a_run_too_short_to_see_the_answers_full_fails_and_says_so() -> None:
    judged = verdict(minutes(FILLING_THEN_FLAT[:11]))  # full at 10, one minute after
    assert judged["growth_last_vs_sequences_full"] == {}
    assert not judged["passed"]


def test_a_worker_growing_from_minute_three_still_fails() -> None:
    rows = minutes(FILLING_THEN_FLAT)
    for row in rows:
        row["rss_w0_mb"] = 100.0 + 2.0 * row["minute"]  # +22 % from minute 3 to 14
    assert not verdict(rows)["passed"]
