"""Benchmarks over exported artifacts (library code behind the scripts in ``scripts/``)."""
