"""Benchmarks: one module per piece, each with a ``run_<piece>_bench(quick) -> rows`` function."""
