"""Prometheus-style durations ("5m", "1h30m") and RFC 3339 / relative times."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"^(?:(\d{1,6})(ms|s|m|h|d|w|y))+$")
_PART = re.compile(r"(\d{1,6})(ms|s|m|h|d|w|y)")


def parse_duration(text: str) -> float:
    """Seconds of a Prometheus duration; raises ValueError naming the problem."""
    if not isinstance(text, str) or not _DURATION.match(text):
        raise ValueError(f"{text!r} is not a Prometheus duration such as 30s, 5m or 1h30m")
    seconds = sum(int(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
    if seconds <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return float(seconds)


def format_duration(seconds: float) -> str:
    """The shortest exact Prometheus spelling of whole seconds (PromQL ranges need one)."""
    whole = round(seconds)
    if whole <= 0 or abs(whole - seconds) > 1e-9:
        raise ValueError(f"{seconds} s is not a whole, positive number of seconds")
    parts = []
    for unit in ("d", "h", "m", "s"):
        size = int(_UNIT_SECONDS[unit])
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts)


_RELATIVE = re.compile(r"^-(\d{1,9}(?:ms|s|m|h|d|w|y)(?:\d{1,9}(?:ms|s|m|h|d|w|y))*)$")


def parse_time(text: str, *, now: float | None = None) -> float:
    """Unix seconds from RFC 3339, a unix timestamp, `now`, or a relative `-2h`."""
    reference = datetime.now(UTC).timestamp() if now is None else now
    value = text.strip()
    if value == "now":
        return reference
    relative = _RELATIVE.match(value)
    if relative:
        return reference - parse_duration(relative.group(1))
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an RFC 3339 time, a unix timestamp, 'now' or '-2h'"
        ) from exc
    if parsed.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; add Z or an offset such as +02:00")
    return parsed.timestamp()


def format_time(ts: float) -> str:
    """RFC 3339 in UTC with millisecond precision."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
