"""Linear+ReLU forward+backward, fusedmlp backends vs eager, grouped by shape."""

import pytest
import torch
import torch.nn.functional as F

from fusedmlp.bench.common import fused_backends
from fusedmlp.functional import linear_relu

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PROVIDERS = ["eager"] + [f"fusedmlp:{b}" for b in fused_backends(DEVICE)]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", [(32, 50, 30), (256, 784, 1024)], ids=lambda s: "x".join(map(str, s)))
def test_linear_relu_fwd_bwd(benchmark, shape, provider):
    M, K, N = shape
    benchmark.group = f"linear_relu {M}x{K}->{N} fwd+bwd"
    x = torch.randn(M, K, device=DEVICE, requires_grad=True)
    w = torch.randn(N, K, device=DEVICE, requires_grad=True)
    b = torch.randn(N, device=DEVICE, requires_grad=True)
    if provider == "eager":
        fn = lambda: F.relu(F.linear(x, w, b)).sum().backward()  # noqa: E731
    else:
        backend = provider.split(":")[1]
        fn = lambda: linear_relu(x, w, b, backend=backend).sum().backward()  # noqa: E731
    benchmark(fn)
