"""Linear(+ReLU) as registered operators, one per backend, and the dispatch among them.

- ``torch.ops.fusedmlp.linear_relu_fwd`` / ``_bwd``: C++ kernels (CPU and CUDA dispatch keys).
- ``torch.ops.fusedmlp.linear_relu_fwd_triton`` / ``_bwd_triton``: Triton kernels.
- ``linear_relu_*_torch``: the plain-PyTorch reference, built from ATen ops.

All share one signature (see csrc/fusedmlp.cpp) and one fake.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from fusedmlp._backend import HAS_EXTENSION, HAS_TRITON
from fusedmlp.ops._checks import checkers
from fusedmlp.ops._triton_registration import define_triton_op


def _check_linear_relu_args(input: Tensor, weight: Tensor, bias: Optional[Tensor], eager: bool = False) -> None:
    check, _ = checkers(eager)
    check(input.dim() == 2, lambda: f"linear_relu: expected a 2-D input, got {input.dim()}-D")
    check(weight.dim() == 2, lambda: f"linear_relu: expected a 2-D weight, got {weight.dim()}-D")
    check(
        input.shape[1] == weight.shape[1],
        lambda: (
            f"linear_relu: mat1 and mat2 shapes cannot be multiplied "
            f"({input.shape[0]}x{input.shape[1]} and {weight.shape[1]}x{weight.shape[0]})"
        ),
    )
    check(
        input.dtype == weight.dtype,
        lambda: f"linear_relu: expected input and weight to have the same dtype, got {input.dtype} and {weight.dtype}",
    )
    check(input.dtype.is_floating_point, lambda: f"linear_relu: expected a floating dtype, got {input.dtype}")
    check(
        input.device == weight.device,
        lambda: f"linear_relu: expected all tensors on the same device, found {input.device} and {weight.device}",
    )
    if bias is not None:
        check(
            bias.dim() == 1 and bias.shape[0] == weight.shape[0],
            lambda: f"linear_relu: expected bias of shape [{weight.shape[0]}], got {list(bias.shape)}",
        )
        check(bias.dtype == weight.dtype, lambda: f"linear_relu: expected bias dtype {weight.dtype}")
        check(bias.device == weight.device, lambda: "linear_relu: expected all tensors on the same device")


def _linear_relu_fwd_fake(input: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> Tensor:
    _check_linear_relu_args(input, weight, bias)
    return input.new_empty((input.shape[0], weight.shape[0]))


def _check_linear_relu_bwd_args(
    grad_output: Tensor, input: Tensor, weight: Tensor, output: Tensor, eager: bool = False
) -> None:
    check, _ = checkers(eager)
    _check_linear_relu_args(input, weight, None, eager)
    check(
        grad_output.shape == (input.shape[0], weight.shape[0]),
        lambda: (
            f"linear_relu_bwd: expected grad_output of shape {[input.shape[0], weight.shape[0]]}, "
            f"got {list(grad_output.shape)}"
        ),
    )
    check(output.shape == grad_output.shape, lambda: "linear_relu_bwd: output and grad_output shapes differ")


def _linear_relu_bwd_fake(
    grad_output: Tensor, input: Tensor, weight: Tensor, output: Tensor, relu: bool, output_mask: Sequence[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    _check_linear_relu_bwd_args(grad_output, input, weight, output)
    grad_input = input.new_empty(input.shape) if output_mask[0] else input.new_empty(0)
    grad_weight = input.new_empty(weight.shape) if output_mask[1] else input.new_empty(0)
    grad_bias = input.new_empty(weight.shape[0]) if output_mask[2] else input.new_empty(0)
    return grad_input, grad_weight, grad_bias


if HAS_EXTENSION:
    torch.library.register_fake("fusedmlp::linear_relu_fwd")(_linear_relu_fwd_fake)
    torch.library.register_fake("fusedmlp::linear_relu_bwd")(_linear_relu_bwd_fake)
    torch.library.register_fake("fusedmlp::linear_relu")(_linear_relu_fwd_fake)


if HAS_TRITON:

    @define_triton_op(
        "linear_relu_fwd_triton",
        "(Tensor input, Tensor weight, Tensor? bias, bool relu) -> Tensor",
        _linear_relu_fwd_fake,
    )
    def linear_relu_fwd_triton(input: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> Tensor:
        from fusedmlp.triton_kernels import linear_relu as kernels

        _check_linear_relu_args(input, weight, bias, eager=True)
        return kernels.linear_relu_fwd_triton(input, weight, bias, relu)

    @define_triton_op(
        "linear_relu_bwd_triton",
        "(Tensor grad_output, Tensor input, Tensor weight, Tensor output, bool relu, bool[3] output_mask) "
        "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)",
        _linear_relu_bwd_fake,
    )
    def linear_relu_bwd_triton(
        grad_output: Tensor, input: Tensor, weight: Tensor, output: Tensor, relu: bool, output_mask: list[bool]
    ) -> tuple[Tensor, Tensor, Tensor]:
        from fusedmlp.triton_kernels import linear_relu as kernels

        _check_linear_relu_bwd_args(grad_output, input, weight, output, eager=True)
        return kernels.linear_relu_bwd_triton(grad_output, input, weight, output, relu, output_mask)


def linear_relu_fwd_torch(input: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> Tensor:
    out = torch.addmm(bias, input, weight.t()) if bias is not None else torch.mm(input, weight.t())
    return torch.relu(out) if relu else out


def linear_relu_bwd_torch(
    grad_output: Tensor, input: Tensor, weight: Tensor, output: Tensor, relu: bool, output_mask: Sequence[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    grad_pre = torch.ops.aten.threshold_backward(grad_output, output, 0) if relu else grad_output
    grad_input = torch.mm(grad_pre, weight) if output_mask[0] else input.new_empty(0)
    grad_weight = torch.mm(grad_pre.t(), input) if output_mask[1] else input.new_empty(0)
    grad_bias = grad_pre.sum(0) if output_mask[2] else input.new_empty(0)
    return grad_input, grad_weight, grad_bias


def linear_relu_fwd(input: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool, backend: str) -> Tensor:
    """act(input @ weight.T + bias) for a 2-D input on a resolved (concrete) backend."""
    if backend in ("cpu", "cuda"):
        return torch.ops.fusedmlp.linear_relu_fwd(input, weight, bias, relu)
    if backend == "triton":
        return torch.ops.fusedmlp.linear_relu_fwd_triton(input, weight, bias, relu)
    return linear_relu_fwd_torch(input, weight, bias, relu)


def linear_relu_bwd(
    grad_output: Tensor,
    input: Tensor,
    weight: Tensor,
    output: Tensor,
    relu: bool,
    output_mask: Sequence[bool],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_input, grad_weight, grad_bias); entries not asked for by output_mask are empty."""
    if backend in ("cpu", "cuda"):
        return torch.ops.fusedmlp.linear_relu_bwd(grad_output, input, weight, output, relu, output_mask)
    if backend == "triton":
        return torch.ops.fusedmlp.linear_relu_bwd_triton(grad_output, input, weight, output, relu, output_mask)
    return linear_relu_bwd_torch(grad_output, input, weight, output, relu, output_mask)
