"""Softmax-cross-entropy forward+backward: fusedmlp's backends vs eager F.cross_entropy and
torch.compile, time and the memory kept for backward.

Floor: read the logits once and write the gradient once (2 x N x C x itemsize bytes); eager
PyTorch makes about six passes (log_softmax, nll, nll backward, log_softmax backward) and
keeps the log-probabilities for backward. "saved_mb" is what autograd holds between forward
and backward (from saved-tensor hooks); "peak_mb" the GPU peak allocation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fusedmlp.bench.common import check_close, compiled, fused_backends
from fusedmlp.bench.timing import peak_memory_mb, time_providers
from fusedmlp.functional import cross_entropy


def _cases(device: torch.device, quick: bool):
    if device.type == "cuda":
        # The second is issue 3's H200 target shape (>= 80% of copy bandwidth, >= 2.5x eager).
        cases = [(4096, 8192, torch.float32), (8192, 32000, torch.bfloat16)]
        return cases if quick else cases + [(16384, 128256, torch.bfloat16)]
    return [(1024, 2048, torch.float32)] if quick else [(1024, 2048, torch.float32), (4096, 8192, torch.float32)]


def _saved_mb(fn) -> float:
    """MB of tensors autograd saves for backward during fn()."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return total / 2**20


def _bench_case(N: int, C: int, dtype: torch.dtype, device: torch.device, quick: bool) -> list[dict]:
    torch.manual_seed(0)
    x = (torch.randn(N, C, device=device) * 2).to(dtype).requires_grad_(True)
    t = torch.randint(0, C, (N,), device=device)

    compiled_fn, compile_s = compiled(F.cross_entropy, (x, t))
    losses = {"eager": F.cross_entropy, "torch.compile": compiled_fn}
    for backend in fused_backends(device):
        losses[f"fusedmlp:{backend}"] = lambda x, t, backend=backend: cross_entropy(x, t, backend=backend)

    def fwd_bwd(fn):
        x.grad = None
        loss = fn(x, t)
        loss.backward()
        return loss, x.grad

    reference = fwd_bwd(F.cross_entropy)
    for name, fn in losses.items():
        check_close(name, fwd_bwd(fn), reference, dtype)

    calls = {name: (lambda fn=fn: fwd_bwd(fn)) for name, fn in losses.items()}
    times = time_providers(calls, device, rounds=7 if quick else 11)
    traffic = 2 * N * C * x.element_size()
    return [
        {
            "op": "cross_entropy",
            "case": f"{N}x{C} {str(dtype).removeprefix('torch.')} fwd+bwd",
            "provider": provider,
            **timing,
            "gbps": traffic / (timing["median_ms"] * 1e-3) / 1e9,
            "saved_mb": _saved_mb(lambda fn=losses[provider]: fn(x, t)),
            "peak_mb": peak_memory_mb(lambda fn=losses[provider]: fwd_bwd(fn), device),
            **({"compile_s": compile_s} if provider == "torch.compile" else {}),
        }
        for provider, timing in times.items()
    ]


def run_cross_entropy_bench(quick: bool = True, device: str | torch.device = "cpu") -> list[dict]:
    device = torch.device(device)
    rows = []
    for N, C, dtype in _cases(device, quick):
        rows += _bench_case(N, C, dtype, device, quick)
    return rows
