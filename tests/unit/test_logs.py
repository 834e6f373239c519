"""The log line (worker/logs.py): one JSON object, its time to the millisecond in UTC, the
record's extra fields and nothing of logging's own, a line even for values JSON has no type for."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator

import pytest

from worker.logs import JsonFormatter, setup_logging


def record(created: float, **extra: object) -> logging.LogRecord:
    fields = {"name": "rollout_analyzer.worker", "msg": "analysis %s", "args": ("finished",)}
    made = logging.makeLogRecord({**fields, "levelno": 20, "levelname": "INFO"})
    made.created = created
    made.msecs = int((created - int(created)) * 1000) + 0.0
    made.__dict__.update(extra)
    return made


def test_a_line_is_one_json_object_with_the_extras_and_nothing_of_logging():
    line = JsonFormatter().format(record(1700000000.5, analysis_id="a1", verdict="pass"))
    assert "\n" not in line
    assert json.loads(line) == {
        "time": "2023-11-14T22:13:20.500Z",
        "level": "info",
        "logger": "rollout_analyzer.worker",
        "message": "analysis finished",
        "analysis_id": "a1",
        "verdict": "pass",
    }


def test_each_line_has_its_own_second_and_millisecond():
    formatter = JsonFormatter()
    times = [1700000000.5, 1700000000.999, 1700000001.25, 1700000000.125, 1800000000.0]
    read = [json.loads(formatter.format(record(t)))["time"] for t in times]
    assert read == [
        "2023-11-14T22:13:20.500Z",
        "2023-11-14T22:13:20.999Z",
        "2023-11-14T22:13:21.250Z",
        "2023-11-14T22:13:20.125Z",  # back a second: not the kept one
        "2027-01-15T08:00:00.000Z",
    ]


def test_values_json_has_no_type_for_still_make_a_line():
    class Thing:
        def __str__(self) -> str:
            return "a thing"

    line = JsonFormatter().format(record(1700000000.0, big=2**70, thing=Thing(), ratio=0.25))
    fields = json.loads(line)
    assert (fields["big"], fields["thing"], fields["ratio"]) == (2**70, "a thing", 0.25)


def test_an_exception_is_its_last_line():
    try:
        raise ValueError("the spec has no window")
    except ValueError:
        failed = record(1700000000.0)
        failed.exc_info = sys.exc_info()
    fields = json.loads(JsonFormatter().format(failed))
    assert fields["error"] == "ValueError: the spec has no window"
    assert "exc_info" not in fields and "exc_text" not in fields


@pytest.fixture
def restored_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_logged_line_through_setup_logging(restored_root, capsys):
    setup_logging("INFO")
    logging.getLogger("rollout_analyzer.worker").info(
        "analysis finished", extra={"analysis_id": "a2", "duration_seconds": 0.0123}
    )
    logging.getLogger("rollout_analyzer.worker").debug("not at INFO")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    fields = json.loads(lines[0])
    assert fields["message"] == "analysis finished" and fields["level"] == "info"
    assert (fields["analysis_id"], fields["duration_seconds"]) == ("a2", 0.0123)
    for field in ("pathname", "lineno", "funcName", "thread", "process", "msg", "args"):
        assert field not in fields
