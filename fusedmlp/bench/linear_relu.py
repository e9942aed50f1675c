"""Linear+ReLU forward and forward+backward: fusedmlp's backends vs eager and torch.compile.

Floor: 2MKN flop forward, 6MKN forward+backward; the layer is GEMM-bound once M, K, N are in
the hundreds, so the epilogue fusion can only win the bias/ReLU passes (5-15% at best).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fusedmlp.bench.common import check_close, compiled, fused_backends
from fusedmlp.bench.timing import time_providers
from fusedmlp.functional import linear_relu


def _cases(device: torch.device, quick: bool):
    if device.type == "cuda":
        return [(32, 50, 30, torch.float32), (256, 784, 1024, torch.float32), (4096, 4096, 4096, torch.bfloat16)]
    cases = [(32, 50, 30, torch.float32), (256, 784, 1024, torch.float32)]
    return cases if quick else cases + [(1024, 1024, 1024, torch.float32)]


def _eager(x, w, b):
    return F.relu(F.linear(x, w, b))


def _bench_case(M: int, K: int, N: int, dtype: torch.dtype, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    x = torch.randn(M, K, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(N, K, device=device, dtype=dtype) / K**0.5).requires_grad_(True)
    b = torch.randn(N, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(M, N, device=device, dtype=dtype)

    compiled_fn, compile_s = compiled(_eager, (x, w, b))
    forwards = {"eager": _eager, "torch.compile": compiled_fn}
    for backend in fused_backends(device):
        forwards[f"fusedmlp:{backend}"] = lambda x, w, b, backend=backend: linear_relu(x, w, b, backend=backend)

    def fwd_bwd(fn):
        x.grad = w.grad = b.grad = None
        out = fn(x, w, b)
        out.backward(grad)
        return out, x.grad, w.grad, b.grad

    reference = fwd_bwd(_eager)
    for name, fn in forwards.items():
        check_close(name, fwd_bwd(fn), reference, dtype)

    with torch.no_grad():
        fwd_times = time_providers({n: (lambda fn=fn: fn(x, w, b)) for n, fn in forwards.items()}, device)
    fwd_bwd_times = time_providers({n: (lambda fn=fn: fwd_bwd(fn)) for n, fn in forwards.items()}, device)
    flop = 2 * M * K * N
    rows = []
    for phase, times, phase_flop in (("fwd", fwd_times, flop), ("fwd+bwd", fwd_bwd_times, 3 * flop)):
        for provider, t in times.items():
            rows.append(
                {
                    "op": "linear_relu",
                    "case": f"{M}x{K}->{N} {str(dtype).removeprefix('torch.')} {phase}",
                    "provider": provider,
                    **t,
                    "tflops": phase_flop / (t["median_ms"] * 1e-3) / 1e12,
                    **({"compile_s": compile_s} if provider == "torch.compile" else {}),
                }
            )
    return rows


def run_linear_relu_bench(quick: bool = True, device: str | torch.device = "cpu") -> list[dict]:
    device = torch.device(device)
    return [row for M, K, N, dtype in _cases(device, quick) for row in _bench_case(M, K, N, dtype, device)]
