"""Benchmarks as a library: machine limits, FLOP counts, export cache, side-by-side runner, memory runs,
targets, plots and tables (``run``), token-level decode speed (``decode``) and prefill with the last-token
program (``prefill``). ``scripts/bench*.py`` are their command lines. Importing this package starts nothing and
imports no numerical library."""
