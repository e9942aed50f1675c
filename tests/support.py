"""Helpers for the tests: which (backend, device) pairs to run, and tolerances."""

from __future__ import annotations

import pytest
import torch

from fusedmlp import _backend

# Every (backend, device) pair that can exist. Pairs that cannot run in this process are
# skipped with the reason fusedmlp itself gives, so a missing build is visible in the report.
_PAIRS = [
    ("cpu", "cpu"),
    ("torch", "cpu"),
    ("triton", "cpu"),
    ("cuda", "cuda"),
    ("triton", "cuda"),
    ("torch", "cuda"),
]


def backend_device_params():
    return [
        pytest.param(backend, device, id=f"{backend}-{device}", marks=[pytest.mark.gpu] if device == "cuda" else [])
        for backend, device in _PAIRS
    ]


def require(backend: str, device: str) -> None:
    """Skips the calling test when `backend` cannot run on `device` here, saying why."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reason = _backend._unavailable_reason(backend, device)
    if reason is not None:
        pytest.skip(reason)


def close_to_reference(
    actual: torch.Tensor, reference: torch.Tensor, torch_same_dtype: torch.Tensor, floor: float = 1e-3
) -> None:
    """The flash-attention rule: against a higher-precision reference (fp32 for fp16/bf16, fp64
    for fp32), our error is at most twice torch's own error in the same dtype, plus a floor."""
    assert actual.shape == reference.shape and actual.dtype == torch_same_dtype.dtype
    ours = (actual.to(reference.dtype) - reference).abs().max().item() if actual.numel() else 0.0
    theirs = (torch_same_dtype.to(reference.dtype) - reference).abs().max().item() if actual.numel() else 0.0
    assert ours <= 2 * theirs + floor, f"max error {ours:.3e} > 2 x torch's {theirs:.3e} + {floor:.0e}"
