"""One JSON object per log line, secrets never among the fields."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import orjson

from worker.tracing import current_ids

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """A worker writes a line per analysis: ~175,000 instructions each with json and the stdlib's
    defaults, ~100,000 now (orjson, the second's text kept, no caller looked up)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value
        # trace_id / span_id of the span the line was written in (tracing on only).
        for key, value in (current_ids() or {}).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info).splitlines()[-1]
        try:
            return orjson.dumps(line, default=str).decode()
        except TypeError:  # what orjson will not write (an int past 64 bits): json's way
            return json.dumps(line, default=str)


_second: tuple[int, str] = (-1, "")  # the last second written, as text


def _utc_second(second: int) -> str:
    global _second
    cached = _second  # one read: another thread may replace it meanwhile
    if cached[0] != second:
        cached = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        _second = cached
    return cached[1]


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The caller's file, line and function (a walk up the stack per line) are in no line we
    # write: the logging docs' own way to skip that walk.
    logging._srcfile = None
    for noisy in ("uvicorn.access", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if root.level == logging.INFO:
        # Celery's per-task lines ("received", "succeeded in") say less than our own
        # "analysis finished" and cost 2 % of a worker's CPU; DEBUG brings them back.
        for chatty in ("celery.app.trace", "celery.worker.strategy"):
            logging.getLogger(chatty).setLevel(logging.WARNING)
