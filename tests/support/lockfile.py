"""constraints.txt: the exact versions `make test` ran on, resolved by pip from pyproject.toml.

`make lock` (this module) asks pip's resolver, without installing anything, what
`pip install -e '.[test]'` would install today, and writes every package of that resolution as
`name==version`. `make test` and the Dockerfile install with `-c constraints.txt`, so a clean
clone and an image get the versions the suite passed on, not whatever was newest that day;
pyproject.toml keeps the ranges a release may move within. tests/unit/test_lockfile.py checks
that the two agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "constraints.txt"
TARGET = ".[test]"  # the test extra includes every other extra (otlp-grpc)
OWN = "rollout-analyzer"  # the project itself: installed from the tree, never pinned

HEADER = f"""\
# The versions `make test` installs (pip install -c constraints.txt -e '{TARGET}'), and the
# Dockerfile builds with. Written by `make lock` (tests/support/lockfile.py) from pip's resolution
# of pyproject.toml on Python {{python}}; edit pyproject.toml's ranges, then run `make lock`.
"""


def resolve() -> dict[str, str]:
    """Every package pip would install for TARGET, as {normalized name: version}."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        argv = [sys.executable, "-m", "pip", "install", "--quiet", "--dry-run"]
        argv += ["--ignore-installed", "--report", str(report), "-e", TARGET]
        subprocess.run(argv, cwd=REPO, check=True)
        items = json.loads(report.read_text())["install"]
    return {
        normalize(item["metadata"]["name"]): item["metadata"]["version"]
        for item in items
        if normalize(item["metadata"]["name"]) != OWN
    }


def normalize(name: str) -> str:
    """PEP 503: the name pip and the index compare."""
    return str(canonicalize_name(name))


def render(pins: dict[str, str]) -> str:
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    return HEADER.format(python=python) + "\n".join(lines) + "\n"


def read(text: str) -> dict[str, str]:
    """`name==version` lines of a constraints file, comments and blanks skipped."""
    pins: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[normalize(name)] = version
    return pins


def main() -> int:
    LOCK.write_text(render(resolve()))
    print(f"wrote {LOCK.relative_to(REPO)}: {len(read(LOCK.read_text()))} packages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
