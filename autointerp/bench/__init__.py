"""Benchmarks: modules runnable with `python -m autointerp.bench.<name>` that print their figures."""
