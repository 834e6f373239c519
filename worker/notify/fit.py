"""Fitting text into a chat service's size limits without breaking characters or markup."""

from __future__ import annotations

TRUNCATION_MARKER = "\n\n…(truncated)"


def truncate_utf8(text: str, max_bytes: int, marker: str = TRUNCATION_MARKER) -> str:
    """Cut `text` to at most `max_bytes` of UTF-8, at a line break when one is near.

    Never splits a multi-byte character, and drops a dangling backslash so the marker is
    not swallowed by an escape.
    """
    if len(text.encode("utf-8")) <= max_bytes:
        return text
    budget = max_bytes - len(marker.encode("utf-8"))
    if budget <= 0:
        return marker.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
    head = text.encode("utf-8")[:budget].decode("utf-8", "ignore")
    line_break = head.rfind("\n")
    if line_break >= len(head) // 2:
        head = head[:line_break]
    head = head.rstrip()
    while head.endswith("\\"):
        head = head[:-1]
    return head + marker


def fit_lines(lines: list[str], max_chars: int, joiner: str = "\n") -> str:
    """Join whole lines while they fit, then say how many were left out."""
    kept: list[str] = []
    used = 0
    for index, line in enumerate(lines):
        extra = len(line) + (len(joiner) if kept else 0)
        if used + extra > max_chars - 40:
            kept.append(f"…and {len(lines) - index} more")
            break
        kept.append(line)
        used += extra
    return joiner.join(kept)
