"""The benchmark behind `make bench` / `python -m fusedmlp.bench` (see bench/README.md).

Each op has a module here with a ``run_<op>_bench(quick, device)`` function that checks
correctness, times every provider side by side and returns result rows; ``__main__`` runs them,
prints the table and writes ``bench/results/<device>.json`` and ``.png``.
"""
