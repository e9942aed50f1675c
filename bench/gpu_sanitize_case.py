"""Small cases for compute-sanitizer memcheck (run by bench/gpu_check.sh, once per part so
that a timeout in one does not lose the other):

- `kernels`: every fused CUDA and Triton kernel once, forward and backward, on odd shapes where
  out-of-bounds bugs live (Linear+ReLU including split weight gradients, the whole-network MLP
  kernels, cross-entropy including split rows, SGD);
- `providers`: two training steps of every benchmark provider but torch.compile (a provider
  once corrupted memory during the GPU benchmark).
"""

import sys

import torch
from fusedmlp.triton_kernels import linear_relu as triton_linear_relu

import fusedmlp
from fusedmlp.bench.mlp import make_step, providers
from fusedmlp.functional import linear, linear_relu

# Under memcheck every autotune candidate would be compiled and benchmarked at every shape: keep
# one tile per dtype family (the smallest), so each launch compiles and times one config.
for tuner, name in (
    (triton_linear_relu._linear_relu_fwd, "_linear_relu_fwd_kernel"),
    (triton_linear_relu._linear_relu_bwd_dx, "_linear_relu_bwd_dx_kernel"),
    (triton_linear_relu._linear_relu_bwd_dw_db, "_linear_relu_bwd_dw_db_kernel"),
    (triton_linear_relu._linear_relu_bwd_dw_db_split, "_linear_relu_bwd_dw_db_split_kernel"),
):
    keep = {
        triton_linear_relu._config_key(triton_linear_relu.gpu_configs(name, dtype)[-1])
        for dtype in (torch.float32, torch.float16)
    }
    tuner.configs = [c for c in tuner.configs if triton_linear_relu._config_key(c) in keep]


def kernel_cases():
    for backend in ("cuda", "triton"):
        for dtype in (torch.float32, torch.bfloat16):
            for M, K, N in ((1, 1, 1), (7, 13, 5), (33, 65, 17)):
                x = torch.randn(M, K, device="cuda", dtype=dtype, requires_grad=True)
                w = torch.randn(N, K, device="cuda", dtype=dtype, requires_grad=True)
                b = torch.randn(N, device="cuda", dtype=dtype, requires_grad=True)
                linear_relu(x, w, b, backend=backend).sum().backward()
                linear(x.t().contiguous().t(), w, None, backend=backend).sum().backward()
            # A tall batch of a narrow layer: the weight gradient's reduction is split across blocks.
            x = torch.randn(5000, 50, device="cuda", dtype=dtype, requires_grad=True)
            w = torch.randn(30, 50, device="cuda", dtype=dtype, requires_grad=True)
            b = torch.randn(30, device="cuda", dtype=dtype, requires_grad=True)
            linear_relu(x, w, b, backend=backend).sum().backward()
        for dtype in (torch.float32, torch.float16):
            # The fully fused whole-network kernels: odd widths (padding), a batch that is not a
            # tile multiple, and one that takes several tiles per persistent program.
            for widths, batch in (((2, 30, 20, 2), 3), ((50, 30, 20, 3), 333), ((7, 128, 1), 1000)):
                model = fusedmlp.FusedMLP(
                    widths[0], widths[-1], widths[1:-1], backend=backend, device="cuda", dtype=dtype
                )
                assert model.path().startswith("network:"), model.path()
                x = torch.randn(batch, widths[0], device="cuda", dtype=dtype, requires_grad=True)
                model(x).sum().backward()
            # Cross-entropy, one row per warp / in registers / per block (C = 3001 is no multiple
            # of the vector), rows split across blocks/programs; backward with a scale of 1 (the
            # in-place scaling exits) and of 2; 9000 rows: the "mean" denominator and the reduction
            # take two launches each (per-block partial sums, then their sum).
            for N, C in ((5, 7), (3, 3000), (3, 3001), (2, 20000), (9000, 3)):
                logits = torch.randn(N, C, device="cuda", dtype=dtype, requires_grad=True)
                target = torch.randint(0, C, (N,), device="cuda")
                for scale in (1.0, 2.0):
                    loss = fusedmlp.functional.cross_entropy(logits, target, backend=backend, label_smoothing=0.1)
                    (loss * scale).backward()
        params = [torch.randn(n, device="cuda", requires_grad=True) for n in (1, 7, 1000, 4099)]
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer = fusedmlp.FusedSGD(params, lr=0.1, momentum=0.9, weight_decay=0.01, backend=backend)
        for _ in range(2):
            optimizer.step()


def provider_steps():
    for provider in providers(torch.device("cuda")):
        if provider != "torch.compile":
            step, _ = make_step(provider, (50, 30, 20, 3), 333, "cuda")
            for _ in range(2):
                step()


part = sys.argv[1] if len(sys.argv) > 1 else "kernels"
{"kernels": kernel_cases, "providers": provider_steps}[part]()
torch.cuda.synchronize()
print(f"sanitizer cases ran ({part}):", fusedmlp.available_backends("cuda"))
