"""A report is JSON-safe (no NaN, no infinities, lists not tuples), whichever way it is copied."""

from __future__ import annotations

import dataclasses
import datetime
import math
from typing import Any

import pytest

import analysis.report as report_module
from analysis.judge import judge
from analysis.observation import Observation, SideCounts
from analysis.policy import Policy
from analysis.report import clean, json_safe, report
from analysis.request import AnalysisSpec
from tests.unit.test_judge import side


@dataclasses.dataclass(frozen=True)
class Point:
    x: float


class Label(str):
    pass


VALUES: list[Any] = [
    {"a": (1, 2.5, math.nan), "b": [math.inf, -math.inf, -0.0, True, None, "≤ α"], "c": {}},
    [(), [(1, (2, (math.nan,)))], 5e-324, 1.7976931348623157e308],
    {3: "an int key", 2.5: "a float key", None: "a None key", False: "a bool key"},
    {"big": 2**70, "small": -(2**63)},
    {"subclass": Label("x"), "dataclass": Point(math.nan), "date": datetime.date(2026, 12, 1)},
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_the_fast_copy_is_the_slow_one(value: Any) -> None:
    # repr: NaN != NaN, 1 == 1.0 == True and "x" == Label("x") would hide a changed type.
    assert repr(json_safe(value)) == repr(clean(value))


def spec(**kw: Any) -> AnalysisSpec:
    fields: dict[str, Any] = {
        "service": "checkout",
        "namespace": "shop",
        "canary": "checkout-canary",
        "baseline": "checkout-stable",
        "policy": Policy(),
        "window_seconds": 300.0,
        "end": 1_764_600_000.0,
        "rollout": "checkout",
        "revision": "7",
        "overrides": {},
        "traffic": {"weights": (10, 90), "big": 2**70},  # a caller's dict: anything JSON reads
    }
    return AnalysisSpec(**{**fields, **kw})


def judged(canary: SideCounts, baseline: SideCounts) -> tuple[Observation, Any]:
    observation = Observation(1_764_600_000.0, 300.0, canary, baseline)
    return observation, judge(observation, Policy())


def walk(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in walk(v)]
    if isinstance(value, list):
        return [leaf for v in value for leaf in walk(v)]
    return [value]


@pytest.mark.parametrize(
    ("canary", "baseline", "sequence"),
    [
        (side(5000, 5), side(15000, 15), None),
        # No data on either side: NaN ratios and quantiles everywhere.
        (SideCounts(), SideCounts(), None),
        (side(5000, 500, median=0.2), SideCounts(), {"id": "s", "history": [(1, math.nan)]}),
    ],
)
def test_reports_are_json_safe_and_copied_as_clean_copies_them(
    canary: SideCounts,
    baseline: SideCounts,
    sequence: dict[str, Any] | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    observation, judgement = judged(canary, baseline)
    if sequence is not None:
        sequence = {**sequence, "started_at": observation.time - 600}
    body = report(spec(), observation, judgement, sequence)
    for leaf in walk(body):
        assert not isinstance(leaf, tuple)
        assert not (isinstance(leaf, float) and not math.isfinite(leaf))

    raw: list[Any] = []

    def keep(value: Any) -> Any:
        raw.append(value)
        return value

    monkeypatch.setattr(report_module, "json_safe", keep)
    report(spec(), observation, judgement, sequence)
    assert repr(body) == repr(clean(raw[0]))
