"""Where to ask (Flagger's 'provider'): a live Prometheus, or a recording of one."""

from __future__ import annotations

from typing import Protocol

from analysis.observation import Observation
from analysis.request import AnalysisSpec


class SourceError(RuntimeError):
    """The data could not be read; never a reason to pass."""


class MetricsSource(Protocol):
    name: str

    def observe(
        self,
        spec: AnalysisSpec,
        end: float,
        deadline: float | None = None,
        seconds: float | None = None,
    ) -> Observation:
        """Both sides over the `seconds` (default: the spec's window) ending at `end` (unix
        seconds); `deadline` is monotonic."""
        ...

    def observe_range(
        self,
        spec: AnalysisSpec,
        start: float,
        end: float,
        step: float,
        seconds: float | None = None,
    ) -> list[Observation]:
        """One observation per `step` from `start` to `end` (for replays), each over `seconds`
        (default: the spec's window)."""
        ...

    def latest_time(self, spec: AnalysisSpec, now: float) -> float:
        """The end time "latest window" means for this source."""
        ...
