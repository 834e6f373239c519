"""Benchmarks (`make bench`): not part of the pass/fail test suite."""
