"""Benchmarks that print numbers (they assert nothing): run from the checkout root, e.g. `python -m benchmarks.bench_cache`."""
