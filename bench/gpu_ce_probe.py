"""Where a cross-entropy training step's time goes on a GPU (issue 3's shape by default):
the fused kernel alone, the whole forward + backward through fusedmlp's functional call, eager
PyTorch, and a copy of the same bytes (the floor: the fused step reads the logits once and writes
the gradient once). Each timed by triton.testing.do_bench (L2 flushed, medians). Prints JSON.

    python bench/gpu_ce_probe.py [N C dtype]
"""

import json
import sys

import torch
import torch.nn.functional as F
from triton.testing import do_bench

import fusedmlp


def main(N: int = 8192, C: int = 32000, dtype: str = "bfloat16") -> dict:
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    x = torch.randn(N, C, device="cuda", dtype=dt)
    t = torch.randint(0, C, (N,), device="cuda")
    logits_bytes = x.numel() * x.element_size()
    copy_dst = torch.empty_like(x)
    one = torch.ones(1, device="cuda", dtype=dt)
    xr = x.clone().requires_grad_()

    def step(fn):
        loss = fn(xr, t)
        loss.backward()
        xr.grad = None

    def fused(a, b):
        return fusedmlp.functional.cross_entropy(a, b, backend="cuda")

    def fused_triton(a, b):
        return fusedmlp.functional.cross_entropy(a, b, backend="triton")

    times = {
        "copy (read + write the logits' bytes)": do_bench(lambda: copy_dst.copy_(x)),
        "cuda kernel alone (cross_entropy_fwd, loss + grad)": do_bench(
            lambda: torch.ops.fusedmlp.cross_entropy_fwd(x, t, None, -100, 0.0, None, True)
        ),
        "cuda backward's scale kernel (scale 1: exits)": do_bench(
            lambda: torch.ops.fusedmlp.scale_grad_unless_one_(copy_dst, one)
        ),
        "fusedmlp:cuda fwd+bwd": do_bench(lambda: step(fused)),
        "fusedmlp:triton fwd+bwd": do_bench(lambda: step(fused_triton)),
        "eager fwd+bwd": do_bench(lambda: step(F.cross_entropy)),
    }
    gbps = {k: round(2 * logits_bytes / (ms * 1e-3) / 1e9, 1) for k, ms in times.items()}
    return {
        "shape": [N, C, dtype],
        "ms": {k: round(v, 4) for k, v in times.items()},
        "GBps_at_2x_logits": gbps,
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(main(int(args[0]), int(args[1]), args[2]) if args else main(), indent=1))
