"""Functional interface, mirroring ``torch.nn.functional``."""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
from torch import Tensor

from fusedmlp import _autocast
from fusedmlp._backend import CPP_AUTOGRAD_BACKENDS, resolve_backend
from fusedmlp.autograd.cross_entropy import REDUCTIONS, CrossEntropyFunction
from fusedmlp.autograd.linear_relu import LinearReLUFunction
from fusedmlp.ops.cross_entropy import check_targets_in_range

__all__ = ["cross_entropy", "linear", "linear_relu"]

# FUSEDMLP_VALIDATE_TARGETS=1 turns on the GPU target-range check for every call (read once,
# at import, so it costs nothing per call and stays constant under torch.compile).
VALIDATE_TARGETS = os.environ.get("FUSEDMLP_VALIDATE_TARGETS", "0") == "1"


def _linear(input: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool, backend: str) -> Tensor:
    dtype = _autocast.lower_precision_dtype(input)
    if dtype is not None:  # as torch.autocast runs F.linear (fusedmlp/_autocast.py)
        device_type = input.device.type
        with _autocast.disabled(device_type):
            cast = (_autocast.cast(t, dtype, device_type) for t in (input, weight, bias))
            return _linear(*cast, relu, backend)
    backend = resolve_backend(backend, input.device)
    if input.dim() == 0:
        raise RuntimeError("linear: expected an input with at least 1 dimension, got a 0-D tensor")
    if weight.dim() != 2:
        raise RuntimeError(f"linear: expected a 2-D weight [out_features, in_features], got {weight.dim()}-D")
    # Like F.linear: any leading batch dims (or none, for a 1-D input) fold into the GEMM's M.
    # A 2-D input goes in as it is: a reshape would add a view node to the autograd graph.
    batched = input.dim() == 2
    input2d = input if batched else input.reshape(input.shape[:-1].numel(), input.shape[-1])
    if backend in CPP_AUTOGRAD_BACKENDS:
        # The same graph as LinearReLUFunction, built in C++ (no Python on the way back).
        out = torch.ops.fusedmlp.linear_relu(input2d, weight, bias, relu)
    else:
        out = LinearReLUFunction.apply(input2d, weight, bias, relu, backend)
    return out if batched else out.reshape(*input.shape[:-1], weight.shape[0])


def linear_relu(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """``relu(F.linear(input, weight, bias))`` as one fused op: bias and ReLU are applied in the
    GEMM epilogue, and backward folds the ReLU mask and the bias gradient into the gradient GEMMs."""
    return _linear(input, weight, bias, True, backend)


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, *, backend: str = "auto") -> Tensor:
    """``F.linear(input, weight, bias)`` through fusedmlp's kernels (for output layers)."""
    return _linear(input, weight, bias, False, backend)


def _cross_entropy_rows(input: Tensor, target: Tensor) -> tuple[Tensor, Tensor, tuple[int, ...], bool]:
    """(logits [M, C], target rows, the unreduced loss shape, whether targets are
    probabilities), with torch's shape rules: input (C), (N, C) or (N, C, d1, ...); the
    target holds probabilities exactly when its shape equals the input's."""
    if input.dim() == 0:
        raise RuntimeError("cross_entropy: expected an input with at least 1 dimension, got a 0-D tensor")
    probabilities = target.shape == input.shape
    if probabilities:
        if not target.dtype.is_floating_point:
            raise RuntimeError(
                f"Expected floating point type for target with class probabilities, got {_dtype_name(target.dtype)}"
            )
    elif target.dtype not in (torch.int64, torch.uint8):
        raise RuntimeError(f"expected target dtype to be Long or Byte, but got {_dtype_name(target.dtype)}")
    num_classes = input.shape[0] if input.dim() == 1 else input.shape[1]
    if input.dim() == 1:  # one sample without a batch dimension
        if not probabilities:
            if target.dim() > 1:
                raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
            if target.dim() == 1 and target.shape[0] != 1:
                raise ValueError(f"For 1D input, 1D target must have size 1, but got target size: {target.shape[0]}")
        return input.reshape(1, -1), target.reshape(1, -1) if probabilities else target.reshape(1), (), probabilities
    loss_shape = (input.shape[0], *input.shape[2:])
    if not probabilities:
        if input.dim() == 2:
            if target.dim() > 1:
                raise RuntimeError("0D or 1D target tensor expected, multi-target not supported")
            batch = target.shape[0] if target.dim() == 1 else 0
            if batch != input.shape[0]:
                raise ValueError(f"Expected input batch_size ({input.shape[0]}) to match target batch_size ({batch}).")
        elif tuple(target.shape) != loss_shape:
            raise RuntimeError(f"Expected target size {list(loss_shape)}, got {list(target.shape)}")
    # Classes last, then rows: (N, C, d1, ...) -> (N, d1, ..., C) -> [M, C]. A copy only when
    # there are spatial dims.
    if input.dim() > 2:
        input = input.movedim(1, -1)
        if probabilities:
            target = target.movedim(1, -1)
    if input.dim() == 2 and target.dim() == (2 if probabilities else 1):
        # Already rows: a reshape would only add a view node to the autograd graph.
        return input, target, loss_shape, probabilities
    rows = math.prod(loss_shape)
    logits = input.reshape(rows, num_classes)
    target = target.reshape(rows, num_classes) if probabilities else target.reshape(rows)
    return logits, target, loss_shape, probabilities


def _dtype_name(dtype: torch.dtype) -> str:
    """torch's C++ spelling of a dtype in error messages (Long, Int, Float, ...)."""
    return {
        torch.int64: "Long",
        torch.int32: "Int",
        torch.int16: "Short",
        torch.int8: "Char",
        torch.uint8: "Byte",
        torch.bool: "Bool",
        torch.float32: "Float",
        torch.float64: "Double",
        torch.float16: "Half",
        torch.bfloat16: "BFloat16",
    }.get(dtype, str(dtype))


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    backend: str = "auto",
    inplace_backward: bool = False,
    validate: bool = False,
) -> Tensor:
    """``F.cross_entropy`` as one fused kernel: loss and logits gradient are computed together
    in forward (fp32 accumulation; an online softmax on GPU) and backward only scales the
    gradient, so the only logits-sized tensor kept for backward is that gradient.

    Same arguments, shapes, reductions and results as ``torch.nn.functional.cross_entropy``
    (``size_average``/``reduce`` are not accepted). Extra keyword-only arguments:

    - ``backend``: "auto", "cpu", "cuda", "triton" or "torch" (see ``available_backends``).
    - ``inplace_backward``: write the gradient into ``input``'s buffer instead of a new
      tensor (for very large vocabularies, where one more logits-sized tensor matters).
      ``input`` is overwritten by the forward (so it must not be needed afterwards, must be
      a contiguous [N, C] or (C,) tensor) and the graph can be backpropagated only once.
      Under ``torch.autocast`` a float16/bfloat16 ``input`` is first cast to float32, as
      torch casts it for this loss, and the gradient is written into that copy.
    - ``validate``: check class-index targets against [0, C) on GPU too, raising IndexError
      like torch on CPU (reads the targets on the host: a sync). CPU always validates.
      ``FUSEDMLP_VALIDATE_TARGETS=1`` in the environment turns it on for every call.
    """
    dtype = _autocast.float32_if_autocast(input)
    if dtype is not None:  # as torch.autocast runs F.cross_entropy (fusedmlp/_autocast.py)
        device_type = input.device.type
        with _autocast.disabled(device_type):
            input, target, weight = (_autocast.cast(t, dtype, device_type) for t in (input, target, weight))
            return cross_entropy(
                input,
                target,
                weight,
                ignore_index,
                reduction,
                label_smoothing,
                backend=backend,
                inplace_backward=inplace_backward,
                validate=validate,
            )
    if reduction not in REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if label_smoothing > 1.0:
        raise RuntimeError(f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    backend = resolve_backend(backend, input.device)
    if weight is not None and weight.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            "The function 'cross_entropy' is not differentiable with respect to argument 'weight'. "
            "This input cannot have requires_grad True."
        )
    logits, rows_target, loss_shape, probabilities = _cross_entropy_rows(input, target)
    if probabilities and ignore_index != -100:
        raise RuntimeError("ignore_index is not supported for floating point target")
    if probabilities and target.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(
            "fusedmlp cross_entropy: gradients with respect to probability targets are not supported; "
            "pass target.detach(), or use torch.nn.functional.cross_entropy for that case"
        )
    if probabilities and rows_target.dtype != logits.dtype:
        rows_target = rows_target.to(logits.dtype)
    if not probabilities and rows_target.dtype != torch.int64:
        rows_target = rows_target.to(torch.int64)
    if not probabilities and (validate or VALIDATE_TARGETS) and input.device.type != "cpu":
        check_targets_in_range(rows_target, logits.shape[1], ignore_index)
    compute_grad = torch.is_grad_enabled() and input.requires_grad
    if inplace_backward:
        if input.dim() > 2 or not input.is_contiguous():
            raise RuntimeError(
                "fusedmlp cross_entropy(inplace_backward=True) needs a contiguous (C) or (N, C) input to write the "
                "gradient into"
            )
    if backend in CPP_AUTOGRAD_BACKENDS and not inplace_backward:
        # The same graph as CrossEntropyFunction, built in C++ (no Python on the way back).
        loss = torch.ops.fusedmlp.cross_entropy(logits, rows_target, weight, ignore_index, label_smoothing, reduction)
    else:
        loss = CrossEntropyFunction.apply(
            logits,
            rows_target,
            weight,
            ignore_index,
            label_smoothing,
            reduction,
            backend,
            compute_grad,
            inplace_backward,
        )
    if probabilities:
        loss = loss.to(torch.promote_types(input.dtype, target.dtype))
    return loss.reshape(loss_shape) if reduction == "none" else loss
