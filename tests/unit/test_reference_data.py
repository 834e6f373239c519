"""The reference copies in tests/data: intact (checksums in its README) and, when ../shared is
beside the clone, identical to their originals, so the copies cannot drift unnoticed."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

from tests.support.reference_data import DATA_DIR, PROVIDER_CASES, SCHEMAS_DIR, origin_dir

README = DATA_DIR / "README.md"
# A README row: | `relative/path` | source | version | `sha256` |
_ROW = re.compile(r"^\| `(?P<path>[^`]+)` \|.*\| `(?P<sha256>[0-9a-f]{64})` \|$", re.MULTILINE)


def _copies() -> list[str]:
    return sorted(
        str(path.relative_to(DATA_DIR))
        for path in DATA_DIR.rglob("*")
        if path.is_file() and path != README
    )


def _listed() -> dict[str, str]:
    return {m["path"]: m["sha256"] for m in _ROW.finditer(README.read_text())}


def test_the_suite_has_its_reference_files() -> None:
    assert PROVIDER_CASES.is_file()
    assert len(list(SCHEMAS_DIR.glob("*.crd.yaml"))) >= 7


def test_every_copy_is_listed_in_the_readme_with_its_checksum() -> None:
    listed = _listed()
    assert sorted(listed) == _copies()
    for relative, sha256 in listed.items():
        actual = hashlib.sha256((DATA_DIR / relative).read_bytes()).hexdigest()
        assert actual == sha256, f"{relative} changed: update tests/data/README.md or restore it"


def test_copies_match_the_shared_originals(record_property: Callable[[str, object], None]) -> None:
    origin = origin_dir()
    if not origin.is_dir():
        # Not a skip: a bare clone has nothing to compare with, and says so.
        record_property(
            "summary", f"no {origin}: tests/data not compared with its originals (checksums only)"
        )
        return
    drifted = [
        relative
        for relative in _copies()
        if not (origin / relative).is_file()
        or (origin / relative).read_bytes() != (DATA_DIR / relative).read_bytes()
    ]
    assert not drifted, f"copies differ from {origin}; copy them again: {drifted}"
    # A schema added to the originals is one the copies lack.
    originals = {str(p.relative_to(origin)) for p in (origin / "schemas").glob("*.crd.yaml")}
    assert originals <= set(_copies()), f"not copied yet: {sorted(originals - set(_copies()))}"
