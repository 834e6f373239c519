"""A replay as a picture: success rate, a latency quantile and burn rate over time, hand-made SVG.

Canary and baseline as lines, the policy's thresholds as dashed lines, each measurement's verdict
as a coloured strip, and the measurement where Argo would have ended the analysis as a marker.
`.html` wraps the same SVG in a self-contained page. No plotting library: the picture has to
render anywhere, including a README.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from analysis.durations import parse_time

WIDTH, PANEL_HEIGHT, GAP = 900, 170, 34
LEFT, RIGHT, TOP = 78, 24, 76
STRIP = 16
CANARY, BASELINE, LIMIT = "#d9480f", "#1c7ed6", "#868e96"
VERDICT_FILL = {"pass": "#2f9e44", "fail": "#e03131", "inconclusive": "#f59f00", "error": "#862e9c"}

Series = list[float | None]


def write_plot(path: str | Path, replay: dict[str, Any]) -> None:
    target = Path(path)
    svg = render_svg(replay)
    suffix = target.suffix.lower()
    if suffix == ".svg":
        target.write_text(svg, encoding="utf-8")
    elif suffix in (".html", ".htm"):
        title = html.escape(f"replay of {replay['service']}")
        page = (
            f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{title}</title></head>"
            f"<body style='font-family:sans-serif'>\n{svg}\n</body></html>\n"
        )
        target.write_text(page, encoding="utf-8")
    else:
        raise ValueError(f"--plot {path}: write .svg or .html (PNG needs a rasteriser we lack)")


def _pick(replay: dict[str, Any], get: Callable[[dict[str, Any]], Any]) -> Series:
    out: Series = []
    for m in replay["measurements"]:
        value = get(m["report"]["metrics"])
        out.append(float(value) if isinstance(value, int | float) else None)
    return out


def render_svg(replay: dict[str, Any]) -> str:
    thresholds = replay["thresholds"]
    label = thresholds["latency_quantile"]
    times = [parse_time(m["time"]) for m in replay["measurements"]]
    panels: list[tuple[str, Series, Series, float | None, Callable[[float], str]]] = [
        (
            "success rate",
            _pick(replay, lambda m: m["success_rate"]["canary"]),
            _pick(replay, lambda m: m["success_rate"]["baseline"]),
            thresholds["slo"],
            lambda v: f"{v * 100:.2f}%",
        ),
        (
            f"{label} latency",
            _pick(replay, lambda m: m["latency_seconds"][label]["canary"]),
            _pick(replay, lambda m: m["latency_seconds"][label]["baseline"]),
            thresholds["max_latency"],
            lambda v: f"{v * 1000:.4g} ms" if v < 1 else f"{v:.3g} s",
        ),
        (
            "error-budget burn rate",
            _pick(replay, lambda m: m["error_budget"]["burn_canary"]),
            _pick(replay, lambda m: m["error_budget"]["burn_baseline"]),
            thresholds["fast_burn"],
            lambda v: f"{v:.3g}x",
        ),
    ]
    height = TOP + len(panels) * (PANEL_HEIGHT + GAP) + STRIP + 60
    t0, t1 = (times[0], times[-1]) if times else (0.0, 1.0)
    span = max(t1 - t0, 1.0)

    def x_of(ts: float) -> float:
        return LEFT + (ts - t0) / span * (WIDTH - LEFT - RIGHT)

    where = replay["service"] + (f" ({replay['namespace']})" if replay.get("namespace") else "")
    argo = replay["argo"]
    title = (
        f"replay of {where}: canary {replay['canary']} vs baseline {replay['baseline']}, "
        f"policy {replay['policy']} — Argo: {argo['phase']}"
    )
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height}' "
        f"viewBox='0 0 {WIDTH} {height}' font-family='sans-serif' font-size='11'>",
        f"<rect width='{WIDTH}' height='{height}' fill='white'/>",
        f"<text x='{LEFT}' y='22' font-size='14' font-weight='bold'>{html.escape(title)}</text>",
        _legend(LEFT, 40),
    ]
    for i, (name, canary, baseline, limit, fmt) in enumerate(panels):
        top = TOP + i * (PANEL_HEIGHT + GAP)
        min_span = 0.2 if "latency" in name else 0.0
        parts.append(_panel(name, times, canary, baseline, limit, fmt, top, x_of, min_span))
    strip_top = TOP + len(panels) * (PANEL_HEIGHT + GAP)
    parts.append(_verdict_strip(replay, times, strip_top, x_of))
    parts.append(_argo_marker(replay, times, TOP, strip_top + STRIP, x_of))
    parts.append(_time_axis(times, strip_top + STRIP + 16, x_of))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _legend(x: float, y: float) -> str:
    items = [
        (CANARY, "canary", ""),
        (BASELINE, "baseline", ""),
        (LIMIT, "threshold", " stroke-dasharray='5 3'"),
    ]
    out = []
    for i, (colour, name, dash) in enumerate(items):
        left = x + i * 110
        out.append(
            f"<line x1='{left}' y1='{y}' x2='{left + 22}' y2='{y}' stroke='{colour}' "
            f"stroke-width='2'{dash}/><text x='{left + 28}' y='{y + 4}'>{name}</text>"
        )
    for i, (verdict, colour) in enumerate(VERDICT_FILL.items()):
        left = x + 340 + i * 100
        out.append(
            f"<rect x='{left}' y='{y - 5}' width='12' height='10' fill='{colour}'/>"
            f"<text x='{left + 16}' y='{y + 4}'>{verdict}</text>"
        )
    return "\n".join(out)


def _nice_range(values: Sequence[float], min_relative_span: float) -> tuple[float, float]:
    low, high = min(values), max(values)
    # Latency noise of a fraction of a millisecond should look flat, not like a cliff.
    missing = min_relative_span * abs(high) - (high - low)
    if missing > 0:
        low, high = low - missing / 2, high + missing / 2
    if math.isclose(low, high):
        pad = abs(low) * 0.05 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.08
    # Rates and latencies are never negative: no axis below zero for them.
    return (low - pad if low - pad >= 0 or low < 0 else 0.0), high + pad


def _panel(
    name: str,
    times: list[float],
    canary: Series,
    baseline: Series,
    limit: float | None,
    fmt: Callable[[float], str],
    top: float,
    x_of: Callable[[float], float],
    min_span: float,
) -> str:
    values = [v for v in (*canary, *baseline) if v is not None and math.isfinite(v)]
    if limit is not None:
        values.append(limit)
    low, high = _nice_range(values, min_span) if values else (0.0, 1.0)

    def y_of(v: float) -> float:
        return top + PANEL_HEIGHT - (v - low) / (high - low) * PANEL_HEIGHT

    right = WIDTH - RIGHT
    out = [
        f"<text x='{LEFT}' y='{top - 6}' font-weight='bold'>{html.escape(name)}</text>",
        f"<rect x='{LEFT}' y='{top}' width='{right - LEFT}' height='{PANEL_HEIGHT}' "
        f"fill='#f8f9fa' stroke='#dee2e6'/>",
    ]
    for k in range(5):  # y grid and labels
        v = low + (high - low) * k / 4
        y = y_of(v)
        out.append(
            f"<line x1='{LEFT}' y1='{y:.1f}' x2='{right}' y2='{y:.1f}' stroke='#e9ecef'/>"
            f"<text x='{LEFT - 6}' y='{y + 4:.1f}' text-anchor='end'>{html.escape(fmt(v))}</text>"
        )
    if limit is not None:
        y = y_of(limit)
        out.append(
            f"<line x1='{LEFT}' y1='{y:.1f}' x2='{right}' y2='{y:.1f}' stroke='{LIMIT}' "
            f"stroke-width='1.5' stroke-dasharray='5 3'/>"
            f"<text x='{right - 4}' y='{y - 4:.1f}' text-anchor='end' fill='{LIMIT}'>"
            f"limit {html.escape(fmt(limit))}</text>"
        )
    for series, colour in ((baseline, BASELINE), (canary, CANARY)):
        out.append(_polyline(times, series, colour, x_of, y_of))
    return "\n".join(out)


def _polyline(
    times: list[float],
    series: Series,
    colour: str,
    x_of: Callable[[float], float],
    y_of: Callable[[float], float],
) -> str:
    # A gap in the data (no traffic) breaks the line instead of bridging it.
    runs: list[list[str]] = [[]]
    for ts, v in zip(times, series, strict=True):
        if v is None or not math.isfinite(v):
            runs.append([])
        else:
            runs[-1].append(f"{x_of(ts):.1f},{y_of(v):.1f}")
    out = []
    for run in runs:
        if len(run) == 1:
            x, y = run[0].split(",")
            out.append(f"<circle cx='{x}' cy='{y}' r='2' fill='{colour}'/>")
        elif run:
            out.append(
                f"<polyline points='{' '.join(run)}' fill='none' stroke='{colour}' "
                f"stroke-width='1.8'/>"
            )
    return "\n".join(out)


def _verdict_strip(
    replay: dict[str, Any], times: list[float], top: float, x_of: Callable[[float], float]
) -> str:
    out = [f"<text x='{LEFT - 6}' y='{top + 12}' text-anchor='end'>verdict</text>"]
    step = replay["interval_seconds"]
    for ts, m in zip(times, replay["measurements"], strict=True):
        x0, x1 = x_of(ts - step / 2), x_of(ts + step / 2)
        x0, x1 = max(x0, LEFT), min(x1, WIDTH - RIGHT)
        opacity = "1" if m["measured_by_argo"] else "0.35"
        out.append(
            f"<rect x='{x0:.1f}' y='{top}' width='{max(x1 - x0, 1):.1f}' height='{STRIP}' "
            f"fill='{VERDICT_FILL.get(m['verdict'], '#ced4da')}' opacity='{opacity}'>"
            f"<title>{html.escape(m['time'])}: {m['verdict']}</title></rect>"
        )
    return "\n".join(out)


def _argo_marker(
    replay: dict[str, Any],
    times: list[float],
    top: float,
    bottom: float,
    x_of: Callable[[float], float],
) -> str:
    ended = replay["argo"]["ended_at"]
    if not ended:
        return ""
    x = x_of(times[ended["index"]])
    text = f"Argo: {replay['argo']['phase']} at #{ended['index'] + 1}"
    anchor = "end" if x > WIDTH * 0.7 else "start"
    dx = -4 if anchor == "end" else 4
    return (
        f"<line x1='{x:.1f}' y1='{top}' x2='{x:.1f}' y2='{bottom}' stroke='black' "
        f"stroke-width='1.2' stroke-dasharray='2 2'/>"
        f"<text x='{x + dx:.1f}' y='{top + 12}' text-anchor='{anchor}' font-weight='bold'>"
        f"{html.escape(text)}</text>"
    )


def _time_axis(times: list[float], y: float, x_of: Callable[[float], float]) -> str:
    if not times:
        return ""
    from analysis.durations import format_time

    ticks = 6 if len(times) > 6 else len(times)
    out = []
    for k in range(ticks):
        ts = times[0] + (times[-1] - times[0]) * (k / max(ticks - 1, 1))
        label = format_time(ts)[11:16] + "Z"
        out.append(f"<text x='{x_of(ts):.1f}' y='{y}' text-anchor='middle'>{label}</text>")
    out.append(
        f"<text x='{LEFT}' y='{y + 18}' fill='#495057'>{format_time(times[0])[:10]} (UTC)</text>"
    )
    return "\n".join(out)
