"""Softmax-cross-entropy forward+backward, fusedmlp backends vs eager, grouped by shape."""

import pytest
import torch
import torch.nn.functional as F

from fusedmlp.bench.common import fused_backends
from fusedmlp.functional import cross_entropy

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PROVIDERS = ["eager"] + [f"fusedmlp:{b}" for b in fused_backends(DEVICE)]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", [(256, 1000), (1024, 8192)], ids=lambda s: "x".join(map(str, s)))
def test_cross_entropy_fwd_bwd(benchmark, shape, provider):
    N, C = shape
    benchmark.group = f"cross_entropy {N}x{C} fwd+bwd"
    x = torch.randn(N, C, device=DEVICE, requires_grad=True)
    t = torch.randint(0, C, (N,), device=DEVICE)
    if provider == "eager":
        fn = lambda: F.cross_entropy(x, t).backward()  # noqa: E731
    else:
        backend = provider.split(":")[1]
        fn = lambda: cross_entropy(x, t, backend=backend).backward()  # noqa: E731
    benchmark(fn)
