"""MLPFunction: autograd for the whole MLP (Linear, ReLU, ..., Linear) as one node.

One forward op runs every layer and one backward op runs every layer's gradient, so a
training step costs one autograd node for the network instead of one (or two) per layer.

For backends whose kernels are C++ (``fusedmlp._backend.CPP_AUTOGRAD_BACKENDS``) the same node exists in
C++: ``torch.ops.fusedmlp.mlp`` (csrc/autograd/mlp.cpp), whose backward never enters Python.
For a tiny network that is most of the step's time, so :func:`mlp` picks it there.

Unlike the Linear+ReLU ops, ``torch.ops.fusedmlp.mlp_fwd`` has no operator-level autograd
formula (``torch.library.register_autograd``): that formula is a Python kernel on the
Autograd dispatch key, and it runs on every call of the op, even inside this Function's
forward where autograd is off; for a tiny MLP it cost more than the op's three GEMMs. The op
is differentiated through MLPFunction only.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fusedmlp._backend import CPP_AUTOGRAD_BACKENDS
from fusedmlp.ops import mlp as ops


def _backward(
    grad_output: Tensor,
    input: Tensor,
    weights: Sequence[Tensor],
    activations: Sequence[Tensor],
    needs_input: bool,
    needs_weights: Sequence[bool],
    needs_biases: Sequence[bool],
    backend: str,
) -> tuple[Optional[Tensor], list[Optional[Tensor]], list[Optional[Tensor]]]:
    grad_input, grad_weights, grad_biases = ops.mlp_bwd(
        grad_output, input, weights, activations, needs_input, needs_weights, needs_biases, backend
    )
    return (
        grad_input if needs_input else None,
        [g if wanted else None for g, wanted in zip(grad_weights, needs_weights)],
        [g if wanted else None for g, wanted in zip(grad_biases, needs_biases)],
    )


def mlp(input: Tensor, weights: Sequence[Tensor], biases: Sequence[Optional[Tensor]], backend: str) -> Tensor:
    """The differentiable whole MLP for a 2-D input on a backend in ``ops.NETWORK_BACKENDS``:
    the C++ autograd op where the kernels are C++, MLPFunction otherwise. `biases` holds one
    tensor per weight, or Nones (``bias=False``)."""
    if backend in CPP_AUTOGRAD_BACKENDS:
        return torch.ops.fusedmlp.mlp(input, weights, biases if biases[0] is not None else [])
    params = [t for pair in zip(weights, biases) for t in pair]
    return MLPFunction.apply(input, backend, *params)


class MLPFunction(torch.autograd.Function):
    """``apply(input2d, backend, w0, b0, w1, b1, ...)``: the MLP's output for a 2-D input, with
    ReLU after every layer but the last, on a backend in ``fusedmlp.ops.mlp.NETWORK_BACKENDS``.
    The biases are all tensors or all None (``bias=False``). Saves the input, the weights and the
    hidden ReLU outputs (which double as the ReLU masks); double backward is not supported and
    raises."""

    @staticmethod
    def forward(ctx, input: Tensor, backend: str, *params: Optional[Tensor]) -> Tensor:
        weights, biases = list(params[0::2]), list(params[1::2])
        has_bias = biases[0] is not None if biases else False
        if len(weights) != len(biases) or any((b is not None) != has_bias for b in biases):
            raise ValueError("MLPFunction: expected (weight, bias) pairs with every bias a tensor or every bias None")
        output, activations = ops.mlp_fwd(input, weights, biases if has_bias else [], backend)
        ctx.backend = backend
        ctx.has_bias = has_bias
        ctx.save_for_backward(input, *weights, *activations)
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        saved = ctx.saved_tensors
        layers = (len(saved) + 1) // 2  # input, L weights, L - 1 activations
        input, weights, activations = saved[0], saved[1 : 1 + layers], saved[1 + layers :]
        needs = ctx.needs_input_grad
        needs_weights = [needs[2 + 2 * i] for i in range(layers)]
        needs_biases = [needs[3 + 2 * i] for i in range(layers)] if ctx.has_bias else []
        grad_input, grad_weights, grad_biases = _backward(
            grad_output, input, weights, activations, needs[0], needs_weights, needs_biases, ctx.backend
        )
        grad_biases = grad_biases or [None] * layers
        grad_params = [g for pair in zip(grad_weights, grad_biases) for g in pair]
        return grad_input, None, *grad_params
