"""Benchmarks: one module per op with a ``run_<op>_bench(quick)`` function returning rows."""
