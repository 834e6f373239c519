"""constraints.txt (the versions `make test` and the image install) agrees with pyproject.toml's
ranges, and the suite runs on it."""

from __future__ import annotations

import importlib.metadata
import tomllib

from packaging.requirements import Requirement
from packaging.version import Version

from tests.support.lockfile import LOCK, OWN, REPO, normalize, read


def requirements() -> list[Requirement]:
    """Every requirement pyproject.toml states: the dependencies and each extra's."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    texts = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        texts += extra
    return [r for r in map(Requirement, texts) if normalize(r.name) != OWN]


def test_every_line_of_the_lock_is_one_exact_version():
    for raw in LOCK.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and name.strip() == name and Version(version), raw


def test_every_requirement_is_locked_inside_its_range():
    pins = read(LOCK.read_text())
    outside = {
        r.name: (str(r.specifier), pins.get(normalize(r.name)))
        for r in requirements()
        if normalize(r.name) not in pins
        or not r.specifier.contains(pins[normalize(r.name)], prereleases=True)
    }
    assert not outside, f"run `make lock`: these are missing or outside pyproject's range {outside}"


def test_the_suite_runs_on_the_locked_versions():
    installed = {
        normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()
    }
    pins = read(LOCK.read_text())
    differ = {n: (v, installed[n]) for n, v in pins.items() if n in installed and installed[n] != v}
    assert not differ, f"installed differs from constraints.txt (locked, installed): {differ}"
    missing = [r.name for r in requirements() if normalize(r.name) not in installed]
    assert not missing, f"not installed: {missing}"
