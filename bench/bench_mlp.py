"""pytest-benchmark: one MLP training step per provider (see fusedmlp/bench/mlp.py).

Run: python -m pytest bench/bench_mlp.py --benchmark-only
"""

import pytest
import torch

from fusedmlp.bench.mlp import CASES, make_step, providers


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("provider", providers(torch.device("cpu")))
@pytest.mark.parametrize("case", CASES, ids=[c[0].split()[1] for c in CASES])
def test_training_step(benchmark, case, provider):
    _, widths, batch = case
    step, _ = make_step(provider, widths, batch)
    for _ in range(3):  # compile and warm up outside the timing
        step()
    benchmark(step)
