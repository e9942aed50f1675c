"""LinearReLUFunction: autograd for act(input @ weight.T + bias), act = ReLU or identity.

The same save/backward logic is also registered as the autograd formula of the forward
operators themselves (``torch.library.register_autograd``), so ``torch.ops.fusedmlp.*`` are
differentiable when called directly and ``torch.library.opcheck`` can verify them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fusedmlp._backend import HAS_EXTENSION, HAS_TRITON, below_autograd
from fusedmlp.ops import linear_relu as ops


def _setup_context(ctx, input: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool, output: Tensor) -> None:
    # For ReLU, output > 0 is the mask, so the pre-activation is never kept (the output is
    # alive anyway as the next layer's input). Without ReLU the output is not needed at all.
    ctx.relu = relu
    ctx.has_bias = bias is not None
    if relu:
        ctx.save_for_backward(input, weight, output)
    else:
        ctx.save_for_backward(input, weight)


def _backward(ctx, grad_output: Tensor, backend: str):
    if ctx.relu:
        input, weight, output = ctx.saved_tensors
    else:
        # The kernels never read `output` without ReLU; grad_output has its shape and dtype.
        (input, weight), output = ctx.saved_tensors, grad_output
    needs_input, needs_weight, needs_bias = ctx.needs_input_grad[:3]
    output_mask = [needs_input, needs_weight, needs_bias and ctx.has_bias]
    grad_input, grad_weight, grad_bias = ops.linear_relu_bwd(
        grad_output, input, weight, output, ctx.relu, output_mask, backend
    )
    return (
        grad_input if output_mask[0] else None,
        grad_weight if output_mask[1] else None,
        grad_bias if output_mask[2] else None,
    )


class LinearReLUFunction(torch.autograd.Function):
    """``apply(input2d, weight, bias, relu, backend)`` with a concrete backend name. Backward is
    one registered op that applies the ReLU mask, reduces the bias gradient and runs the two
    gradient GEMMs. Double backward is not supported and raises."""

    # forward takes ctx (no separate setup_context): Function.apply then skips binding the
    # arguments through inspect.signature, which cost more than the kernel on small layers.
    @staticmethod
    def forward(ctx, input: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool, backend: str) -> Tensor:
        with below_autograd():
            output = ops.linear_relu_fwd(input, weight, bias, relu, backend)
        ctx.backend = backend
        _setup_context(ctx, input, weight, bias, relu, output)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        return *_backward(ctx, grad_output, ctx.backend), None, None


def _register_operator_autograd(op_name: str, backend_of) -> None:
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, *inputs, output)

    def backward(ctx, grad_output):
        return *_backward(ctx, grad_output, backend_of(grad_output)), None

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)


if HAS_EXTENSION:  # one C++ operator serves the "cpu" and "cuda" backends
    _register_operator_autograd("fusedmlp::linear_relu_fwd", lambda grad: grad.device.type)
if HAS_TRITON:
    _register_operator_autograd("fusedmlp::linear_relu_fwd_triton", lambda grad: "triton")
