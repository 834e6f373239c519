"""A recording: the vectors Prometheus returned, saved as JSON, replayed without Prometheus.

Format (`rollout-analyzer/recording@1`): a list of entries, each one side of one service at one
time over one window: {service, namespace, selector, window_seconds, time, requests_by_status,
latency_buckets}. `rollout-analyzer record` writes it; the demo ships one.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from analysis.observation import Observation, SideCounts
from analysis.request import AnalysisSpec
from analysis.sources import SourceError

FORMAT = "rollout-analyzer/recording@1"

_Key = tuple[str, str | None, str, float]


class Recording:
    def __init__(self, entries: Iterable[dict[str, Any]], description: str = "") -> None:
        self.description = description
        self._series: dict[_Key, list[tuple[float, SideCounts]]] = {}
        for entry in entries:
            key = (
                str(entry["service"]),
                entry.get("namespace"),
                str(entry["selector"]),
                float(entry["window_seconds"]),
            )
            self._series.setdefault(key, []).append(
                (float(entry["time"]), SideCounts.from_json(entry))
            )
        for points in self._series.values():
            points.sort(key=lambda p: p[0])

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot read recording {path}: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SourceError(f"{path} is not a {FORMAT} file")
        return cls(data.get("entries", []), str(data.get("description", "")))

    def add(self, spec: AnalysisSpec, observation: Observation) -> None:
        sides = ((spec.canary, observation.canary), (spec.baseline, observation.baseline))
        for selector, side in sides:
            if side.has_data:
                key = (spec.service, spec.namespace, selector, observation.window_seconds)
                self._series.setdefault(key, []).append((observation.time, side))
                self._series[key].sort(key=lambda p: p[0])

    def to_json(self) -> dict[str, Any]:
        entries = [
            {
                "service": service,
                "namespace": namespace,
                "selector": selector,
                "window_seconds": window,
                "time": ts,
                **side.to_json(),
            }
            for (service, namespace, selector, window), points in sorted(
                self._series.items(), key=lambda kv: tuple(str(x) for x in kv[0])
            )
            for ts, side in points
        ]
        return {"format": FORMAT, "description": self.description, "entries": entries}

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")

    def side_at(
        self, spec: AnalysisSpec, selector: str, end: float, seconds: float | None = None
    ) -> SideCounts:
        """The latest point over `seconds` (default: the spec's window) at or before `end`, if it
        is younger than that span; else no data."""
        span = spec.window_seconds if seconds is None else seconds
        points = self._series.get((spec.service, spec.namespace, selector, span), [])
        return _latest(points, end, span) or SideCounts()

    def side_of(
        self,
        service: str,
        namespace: str | None,
        selector: str | None,
        end: float,
        seconds: float,
    ) -> SideCounts:
        """One service's requests over `seconds` up to `end`, all its selectors (pods) counted
        unless one is named, any namespace unless one is named: the latest point of each
        series at or before `end`, from its window of `seconds` if recorded, else from the
        closest window read as the same rates. No point younger than its window: no data."""
        found = SideCounts()
        windows: dict[tuple[str | None, str], list[float]] = {}
        for svc, ns, sel, window in self._series:
            if svc == service and namespace in (None, ns) and selector in (None, sel):
                windows.setdefault((ns, sel), []).append(window)
        for (ns, sel), spans in windows.items():
            span = min(spans, key=lambda w: (abs(w - seconds), -w))
            side = _latest(self._series[(service, ns, sel, span)], end, span)
            if side is not None:
                found = found.plus(scaled(side, seconds / span))
        return found

    def has_span(self, spec: AnalysisSpec, seconds: float) -> bool:
        return any(
            (spec.service, spec.namespace, selector, seconds) in self._series
            for selector in (spec.canary, spec.baseline)
        )

    def times(self, spec: AnalysisSpec) -> list[float]:
        found: set[float] = set()
        for selector in (spec.canary, spec.baseline):
            key = (spec.service, spec.namespace, selector, spec.window_seconds)
            found.update(t for t, _ in self._series.get(key, []))
        return sorted(found)

    def services(self) -> list[tuple[str, str | None, str, float]]:
        return sorted(self._series, key=lambda k: tuple(str(x) for x in k))


def _latest(points: list[tuple[float, SideCounts]], end: float, span: float) -> SideCounts | None:
    """The latest point at or before `end`, if younger than `span`."""
    i = bisect.bisect_right([t for t, _ in points], end + 1e-6)
    if i == 0 or end - points[i - 1][0] >= span:
        return None
    return points[i - 1][1]


def scaled(side: SideCounts, factor: float) -> SideCounts:
    if factor == 1:
        return side
    statuses = {code: round(n * factor) for code, n in side.requests_by_status.items()}
    buckets = tuple((le, float(round(n * factor))) for le, n in side.latency_buckets)
    return SideCounts({k: float(v) for k, v in statuses.items()}, buckets)


class RecordingSource:
    name = "recording"

    def __init__(self, recording: Recording) -> None:
        self.recording = recording

    @classmethod
    def from_file(cls, path: str | Path) -> RecordingSource:
        return cls(Recording.load(path))

    def one_side(self, labels: dict[str, str], end: float, seconds: float) -> SideCounts:
        """What POST /metrics/analysis reads (`service`, `namespace`, `rollout` labels)."""
        return self.recording.side_of(
            labels["service"], labels.get("namespace"), labels.get("rollout"), end, seconds
        )

    def latest_time(self, spec: AnalysisSpec, now: float) -> float:
        times = self.recording.times(spec)
        return times[-1] if times else now

    def observe(
        self,
        spec: AnalysisSpec,
        end: float,
        deadline: float | None = None,
        seconds: float | None = None,
    ) -> Observation:
        """The recorded counts over `seconds` when the recording holds that span (`record` keeps
        windows and intervals); otherwise its window read as the same rates over `seconds`."""
        span = spec.window_seconds if seconds is None else seconds
        if self.recording.has_span(spec, span):
            canary = self.recording.side_at(spec, spec.canary, end, span)
            baseline = self.recording.side_at(spec, spec.baseline, end, span)
        else:
            factor = span / spec.window_seconds
            canary = scaled(self.recording.side_at(spec, spec.canary, end), factor)
            baseline = scaled(self.recording.side_at(spec, spec.baseline, end), factor)
        return Observation(end, span, canary, baseline, (), 0, self.name)

    def observe_range(
        self,
        spec: AnalysisSpec,
        start: float,
        end: float,
        step: float,
        seconds: float | None = None,
    ) -> list[Observation]:
        steps = round((end - start) / step) + 1
        return [self.observe(spec, start + i * step, seconds=seconds) for i in range(steps)]
