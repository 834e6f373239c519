"""`make bench` keeps a line per run, so the host's phases can be told from our changes later."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.perf.bench import REPO, append_history, code_version


def test_each_run_adds_a_line_and_keeps_the_earlier_ones(tmp_path: Path) -> None:
    history = tmp_path / ".bench" / "history.jsonl"
    first = {"fresh": {"host": {"stolen": 0.01}, "reference_cpu_per_unit": 0.0007}, "table": []}
    second = {"table": [{"figure": "2. worker CPU", "ours": "6.4 ms", "met": False}]}
    append_history(history, first, "abc1234")
    append_history(history, second, "abc1234+changes")
    lines = [json.loads(line) for line in history.read_text().splitlines()]
    assert [line["code"] for line in lines] == ["abc1234", "abc1234+changes"]
    assert lines[0]["reference_cpu_per_unit"] == 0.0007
    assert lines[0]["host"] == {"stolen": 0.01}
    assert lines[1]["table"] == second["table"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line["at"]) for line in lines)


def test_the_code_measured_is_named_by_its_commit() -> None:
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    assert code_version().split("+")[0] == head
