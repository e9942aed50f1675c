"""FusedSGD step vs torch.optim.SGD (for-loop, foreach, fused), grouped by parameter set."""

import pytest
import torch

import fusedmlp
from fusedmlp._backend import available_backends
from fusedmlp.bench.sgd import CASES, OPTIONS

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.set_num_threads(1)  # the CPU targets are for one thread
FUSED = [b for b in available_backends(DEVICE) if b != "torch" and not (b == "triton" and DEVICE.type == "cpu")]
PROVIDERS = ["torch_for_loop", "torch_foreach", "torch_fused"] + [f"fusedmlp_{b}" for b in FUSED]


def _optimizer(provider, params):
    if provider == "torch_for_loop":
        return torch.optim.SGD(params, foreach=False, **OPTIONS)
    if provider == "torch_foreach":
        return torch.optim.SGD(params, foreach=True, **OPTIONS)
    if provider == "torch_fused":
        return torch.optim.SGD(params, fused=True, **OPTIONS)
    return fusedmlp.FusedSGD(params, backend=provider.split("_", 1)[1], **OPTIONS)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", list(CASES))
def test_sgd_step(benchmark, case, provider):
    benchmark.group = f"sgd step {case}"
    params = [torch.randn(s, device=DEVICE).requires_grad_() for s in CASES[case]]
    for p in params:
        p.grad = torch.randn_like(p)
    opt = _optimizer(provider, params)
    opt.step()  # creates the momentum buffers: time the steady state
    if DEVICE.type == "cuda":
        benchmark(lambda: (opt.step(), torch.cuda.synchronize()))
    else:
        benchmark(opt.step)
