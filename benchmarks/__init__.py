"""Benchmarks; figures are recorded in benchmarks/RESULTS.md with their commands."""
