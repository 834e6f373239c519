"""A recording read for POST /metrics/analysis: one service's requests over a range, from the
points recorded for it (analysis/sources/recording.py, `Recording.side_of`)."""

from __future__ import annotations

from typing import Any

from analysis.sources.recording import Recording


def entry(selector: str, t: float, ok: float, errors: float, **more: Any) -> dict[str, Any]:
    return {
        "service": more.get("service", "order"),
        "namespace": more.get("namespace", "shop"),
        "selector": selector,
        "window_seconds": more.get("window", 300.0),
        "time": t,
        "requests_by_status": {"200": ok, "500": errors},
        "latency_buckets": {"0.1": ok, "+Inf": ok + errors},
    }


RECORDING = Recording(
    [
        entry("canary", 1000, 90, 10),
        entry("canary", 1060, 180, 20),
        entry("stable", 1060, 1000, 0),
        entry("stable", 1060, 500, 5, namespace="other"),
        entry("canary", 1060, 999, 999, service="search"),
    ]
)


def test_one_selector_is_its_latest_point_at_or_before_the_end():
    assert RECORDING.side_of("order", "shop", "canary", 1030, 300).requests_by_status == {
        "200": 90.0, "500": 10.0,
    }  # fmt: skip
    assert RECORDING.side_of("order", "shop", "canary", 1060, 300).total == 200


def test_without_a_selector_or_namespace_every_matching_series_is_counted():
    side = RECORDING.side_of("order", "shop", None, 1060, 300)
    assert side.requests_by_status == {"200": 1180.0, "500": 20.0}
    assert side.latency_buckets == ((0.1, 1180.0), (float("inf"), 1200.0))
    assert RECORDING.side_of("order", None, "stable", 1060, 300).total == 1505


def test_another_range_reads_the_recorded_window_as_the_same_rates():
    assert RECORDING.side_of("order", "shop", "canary", 1060, 60).requests_by_status == {
        "200": 36.0, "500": 4.0,
    }  # fmt: skip


def test_no_point_within_its_window_is_no_data():
    assert not RECORDING.side_of("order", "shop", "canary", 999, 300).has_data  # before
    assert not RECORDING.side_of("order", "shop", "canary", 1360, 300).has_data  # too old
    assert not RECORDING.side_of("cart", None, None, 1060, 300).has_data
    assert not RECORDING.side_of("order", "shop", "nobody", 1060, 300).has_data
