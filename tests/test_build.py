"""The build and the package without a GPU: CUDA kernels compiled in and registered,
spill-free by construction, importable without the extension, no stray top-level modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from fusedmlp import _backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_OPS = ["linear_relu_fwd", "linear_relu_bwd", "cross_entropy_fwd", "cross_entropy_fwd_inplace", "fused_sgd_"]
# The whole-network MLP ops have a CPU kernel only so far; on GPUs FusedMLP runs layer by layer.
CPU_OPS = CUDA_OPS + ["mlp_fwd", "mlp_bwd"]


def _cuda_build_expected() -> bool:
    return (
        shutil.which("nvcc") is not None
        and torch.version.cuda is not None
        and os.environ.get("FUSEDMLP_BUILD_CUDA", "auto") != "0"
    )


@pytest.mark.parametrize("op", CPU_OPS)
def test_cpu_kernels_registered(op):
    assert _backend.HAS_EXTENSION, _backend._EXTENSION_ERROR
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedmlp::{op}", "CPU")


@pytest.mark.parametrize("op", CUDA_OPS)
def test_cuda_kernels_registered(op):
    if not _cuda_build_expected():
        pytest.skip("no nvcc or no CUDA build of torch here, so the CUDA kernels are not built")
    assert _backend.HAS_CUDA_KERNELS, "nvcc is present but fusedmlp._C was built without CUDA kernels"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedmlp::{op}", "CUDA")


def test_ptxas_rejects_spills():
    """Every CUDA kernel built into fusedmlp._C compiled with ptxas --warn-on-spills
    --warning-as-error, so a kernel that spills registers fails the build instead of shipping."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        source = f.read()
    assert 'PTXAS_FLAGS = "-Xptxas=--warn-on-spills,--warning-as-error"' in source
    assert "PTXAS_FLAGS]" in source  # passed to nvcc


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd="/",  # away from the source tree, so only the installed package is importable
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_import_without_extension_says_how_to_fix():
    code = (
        "import sys; sys.modules['fusedmlp._C'] = None\n"  # makes `from fusedmlp import _C` fail
        "import torch, fusedmlp\n"
        "backends = fusedmlp.available_backends('cpu')\n"
        "assert 'cpu' not in backends and backends[0] == 'torch', backends\n"
        "x = torch.randn(2, 3); w = torch.randn(4, 3)\n"
        "assert fusedmlp.functional.linear_relu(x, w, backend='auto').shape == (2, 4)\n"
        "try:\n"
        "    fusedmlp.functional.linear_relu(x, w, backend='cpu')\n"
        "except RuntimeError as e:\n"
        "    assert 'failed to import' in str(e) and 'pip install' in str(e), str(e)\n"
        "else:\n"
        "    raise SystemExit('backend=cpu ran without the extension')\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_no_top_level_triton_kernels_module():
    result = _run_python(
        "import importlib.util, fusedmlp.triton_kernels\n"
        "assert importlib.util.find_spec('triton_kernels') is None\n"
        "print(fusedmlp.triton_kernels.__name__)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fusedmlp.triton_kernels"
