"""Small cases for compute-sanitizer memcheck (run by bench/gpu_check.sh): every fused CUDA
and Triton kernel once, forward and backward, on odd shapes where out-of-bounds bugs live."""

import torch

import fusedmlp
from fusedmlp.functional import linear, linear_relu

for backend in ("cuda", "triton"):
    for dtype in (torch.float32, torch.bfloat16):
        for M, K, N in ((1, 1, 1), (7, 13, 5), (33, 65, 17)):
            x = torch.randn(M, K, device="cuda", dtype=dtype, requires_grad=True)
            w = torch.randn(N, K, device="cuda", dtype=dtype, requires_grad=True)
            b = torch.randn(N, device="cuda", dtype=dtype, requires_grad=True)
            linear_relu(x, w, b, backend=backend).sum().backward()
            linear(x.t().contiguous().t(), w, None, backend=backend).sum().backward()
torch.cuda.synchronize()
print("sanitizer cases ran:", fusedmlp.available_backends("cuda"))
