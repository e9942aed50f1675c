"""Where a cross-entropy training step's time goes on a GPU (issue 3's shape by default):
the fused kernel alone, the whole forward + backward through fusedmlp's functional call, eager
PyTorch, and a copy of the same bytes (the floor: the fused step reads the logits once and writes
the gradient once). Each timed by triton.testing.do_bench (L2 flushed, medians). Prints JSON.

    python bench/gpu_ce_probe.py [--shape N C dtype] [--kernel-only]

--kernel-only launches the CUDA kernel a few times and times nothing: the program the kit's
`ce_ncu` stage runs under Nsight Compute.
"""

import argparse
import json

import torch
import torch.nn.functional as F
from triton.testing import do_bench

import fusedmlp


def _inputs(N: int, C: int, dtype: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return torch.randn(N, C, device="cuda", dtype=getattr(torch, dtype)), torch.randint(0, C, (N,), device="cuda")


def _kernel(x: torch.Tensor, t: torch.Tensor):
    return torch.ops.fusedmlp.cross_entropy_fwd(x, t, None, -100, 0.0, None, True)


def main(N: int = 8192, C: int = 32000, dtype: str = "bfloat16") -> dict:
    x, t = _inputs(N, C, dtype)
    logits_bytes = x.numel() * x.element_size()
    copy_dst = torch.empty_like(x)
    one = torch.ones(1, device="cuda", dtype=x.dtype)
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
        "cuda kernel alone (cross_entropy_fwd, loss + grad)": do_bench(lambda: _kernel(x, t)),
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


def kernel_only(N: int, C: int, dtype: str) -> None:
    x, t = _inputs(N, C, dtype)
    for _ in range(3):
        _kernel(x, t)
    torch.cuda.synchronize()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, default=["8192", "32000", "bfloat16"], metavar=("N", "C", "DTYPE"))
    parser.add_argument("--kernel-only", action="store_true")
    args = parser.parse_args()
    N, C, dtype = int(args.shape[0]), int(args.shape[1]), args.shape[2]
    if args.kernel_only:
        kernel_only(N, C, dtype)
    else:
        print(json.dumps(main(N, C, dtype), indent=1))
