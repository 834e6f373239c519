"""The bench's same-run CPU reference: its work stays fixed, and its process answers per unit."""

from __future__ import annotations

import hashlib

from tests.perf.cpu_reference import DOCUMENT, NUMBERS, CpuReference, unit


def test_the_reference_work_is_the_one_past_readings_were_taken_with() -> None:
    # A reading is compared with readings of earlier runs (docs/performance.md): different work
    # would make those comparisons meaningless, so a change to it has to be deliberate.
    assert hashlib.sha256(DOCUMENT.encode()).hexdigest().startswith("063d55da9dcd1cfc")
    assert hashlib.sha256(repr(NUMBERS).encode()).hexdigest().startswith("f5e04913d60001ec")
    assert unit() == 3032


def test_the_reference_process_answers_each_unit_with_its_cpu_time_and_ends_on_close() -> None:
    reference = CpuReference()
    with reference:
        times = [reference.run_one() for _ in range(20)]
    assert reference.units == times
    # CPU time of real work: more than nothing, far less than a wall-clock second.
    assert all(0 < t < 1 for t in times)
    assert reference.process.returncode == 0
