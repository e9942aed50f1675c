"""Ceilings for reading GPU benchmark results: device-to-device copy bandwidth and cuBLAS
GEMM throughput, measured on the machine the benchmark runs on. Prints JSON."""

import json

import torch
from triton.testing import do_bench


def copy_bandwidth_gbps(nbytes: int = 2**30) -> float:
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9  # read + write


def gemm_tflops(n: int = 8192, dtype=torch.bfloat16) -> float:
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    ms = do_bench(lambda: a @ b)
    return 2 * n**3 / (ms * 1e-3) / 1e12


if __name__ == "__main__":
    torch.backends.cuda.matmul.allow_tf32 = False
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(),
                "copy_GBps": round(copy_bandwidth_gbps(), 1),
                "gemm_bf16_8192_TFLOPs": round(gemm_tflops(), 1),
                "gemm_fp32_4096_TFLOPs": round(gemm_tflops(4096, torch.float32), 1),
            },
            indent=1,
        )
    )
