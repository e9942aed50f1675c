"""Functional interface, mirroring ``torch.nn.functional``."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from fusedmlp._backend import resolve_backend
from fusedmlp.autograd.linear_relu import LinearReLUFunction

__all__ = ["linear", "linear_relu"]


def _linear(input: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool, backend: str) -> Tensor:
    backend = resolve_backend(backend, input.device)
    if input.dim() == 0:
        raise RuntimeError("linear: expected an input with at least 1 dimension, got a 0-D tensor")
    if weight.dim() != 2:
        raise RuntimeError(f"linear: expected a 2-D weight [out_features, in_features], got {weight.dim()}-D")
    # Like F.linear: any leading batch dims (or none, for a 1-D input) fold into the GEMM's M.
    batch_shape = input.shape[:-1]
    input2d = input.reshape(batch_shape.numel(), input.shape[-1])
    out = LinearReLUFunction.apply(input2d, weight, bias, relu, backend)
    return out.reshape(*batch_shape, weight.shape[0])


def linear_relu(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """``relu(F.linear(input, weight, bias))`` as one fused op: bias and ReLU are applied in the
    GEMM epilogue, and backward folds the ReLU mask and the bias gradient into the gradient GEMMs."""
    return _linear(input, weight, bias, True, backend)


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """``F.linear(input, weight, bias)`` through fusedmlp's kernels (for output layers)."""
    return _linear(input, weight, bias, False, backend)


