"""Scripts that print figures (BENCHMARKS.md says how each was run); never part of the tests."""
