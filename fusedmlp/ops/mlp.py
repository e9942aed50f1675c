"""The whole MLP (Linear, ReLU, ..., Linear) as one registered operator per direction.

- ``torch.ops.fusedmlp.mlp_fwd`` / ``mlp_bwd``: C++ kernels: CPU (any network) and CUDA (the
  fully fused kernel of csrc/cuda/mlp.cu, for networks of widths <= 128 and <= 8 layers).
- ``torch.ops.fusedmlp.mlp_fwd_triton`` / ``mlp_bwd_triton``: the fully fused Triton kernels
  (triton_kernels/mlp.py), same coverage.
- ``torch.ops.fusedmlp.mlp``: the differentiable forward (autograd in C++, backward = mlp_bwd).
- ``mlp_*_torch``: the plain-PyTorch reference ("torch" backend), built from ATen ops.

Both share one signature (see csrc/fusedmlp.cpp) and one fake.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from fusedmlp._backend import HAS_EXTENSION, HAS_TRITON
from fusedmlp.ops._checks import checkers
from fusedmlp.ops._triton_registration import define_triton_op

# Backends whose whole-network op takes any network.
NETWORK_BACKENDS = ("cpu", "torch")
# Backends whose whole-network op is a fully fused GPU kernel (activations kept on chip), for
# the networks it covers (see fused_kernel_uncovered_reason); FusedMLP runs the others layer
# by layer.
FUSED_KERNEL_BACKENDS = ("cuda", "triton")

# The fused kernels' limits (csrc/include/fusedmlp/mlp.h): every width padded to a tile of at
# most MAX_FUSED_WIDTH, at most MAX_FUSED_LAYERS layers.
MAX_FUSED_WIDTH = 128
MAX_FUSED_LAYERS = 8
_FUSED_KERNEL_DTYPES = {
    "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    "triton": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}


def fused_kernel_uncovered_reason(backend: str, widths: Sequence[int], dtype: torch.dtype) -> Optional[str]:
    """None when `backend`'s fused whole-network kernel covers a network of these widths
    (inputs, hidden..., outputs) and dtype; otherwise why not."""
    if backend not in FUSED_KERNEL_BACKENDS:
        return f"backend {backend!r} has no fused whole-network kernel"
    if len(widths) - 1 > MAX_FUSED_LAYERS:
        return f"the fused kernel covers at most {MAX_FUSED_LAYERS} layers, the network has {len(widths) - 1}"
    if min(widths) < 1:
        return "the fused kernel needs every width to be at least 1"
    if max(widths) > MAX_FUSED_WIDTH:
        return f"the fused kernel covers widths up to {MAX_FUSED_WIDTH}, the network has {max(widths)}"
    if dtype not in _FUSED_KERNEL_DTYPES[backend]:
        return f"the fused {backend} kernel does not support {dtype}"
    if backend == "cuda" and dtype == torch.float64 and max(widths) > 64:
        # fp64 at tile width 128 needs ~194 KB of shared memory per block in backward.
        return "the fused cuda kernel covers float64 networks up to width 64"
    return None


def _check_layer(
    i: int, input: Tensor, width: int, weight: Tensor, bias: Optional[Tensor], eager: bool = False
) -> None:
    check, _ = checkers(eager)
    check(weight.dim() == 2, lambda: f"mlp: expected weight {i} to be 2-D, got {weight.dim()}-D")
    check(
        weight.shape[1] == width,
        lambda: (
            f"mlp: layer {i}: mat1 and mat2 shapes cannot be multiplied "
            f"({input.shape[0]}x{width} and {weight.shape[1]}x{weight.shape[0]})"
        ),
    )
    check(
        weight.dtype == input.dtype,
        lambda: f"mlp: expected input and weight {i} to have the same dtype, but got {input.dtype} and {weight.dtype}",
    )
    check(
        weight.device == input.device,
        lambda: (
            f"mlp: expected all tensors to be on the same device, but found {input.device} and "
            f"{weight.device} (weight {i})"
        ),
    )
    if bias is not None:
        check(
            bias.dim() == 1 and bias.shape[0] == weight.shape[0],
            lambda: f"mlp: expected bias {i} of shape [{weight.shape[0]}], got {list(bias.shape)}",
        )
        check(bias.dtype == input.dtype, lambda: f"mlp: expected bias {i} to have dtype {input.dtype}")
        check(bias.device == input.device, lambda: "mlp: expected all tensors to be on the same device")


def _check_mlp_args(input: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], eager: bool = False) -> None:
    check, _ = checkers(eager)
    check(len(weights) > 0, lambda: "mlp: expected at least one layer, got no weights")
    check(
        len(biases) in (0, len(weights)),
        lambda: f"mlp: expected one bias per weight or none, got {len(biases)} biases for {len(weights)} weights",
    )
    check(input.dim() == 2, lambda: f"mlp: expected a 2-D input, got {input.dim()}-D")
    check(input.dtype.is_floating_point, lambda: f"mlp: expected a floating point dtype, got {input.dtype}")
    width = input.shape[1]
    for i, weight in enumerate(weights):
        _check_layer(i, input, width, weight, biases[i] if biases else None, eager)
        width = weight.shape[0]


def _mlp_fwd_fake(input: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    _check_mlp_args(input, weights, biases)
    activations = [input.new_empty((input.shape[0], w.shape[0])) for w in weights[:-1]]
    return input.new_empty((input.shape[0], weights[-1].shape[0])), activations


def _check_mlp_bwd_args(
    grad_output: Tensor,
    input: Tensor,
    weights: Sequence[Tensor],
    activations: Sequence[Tensor],
    weight_grads: Sequence[bool],
    bias_grads: Sequence[bool],
    eager: bool = False,
) -> None:
    check, _ = checkers(eager)
    _check_mlp_args(input, weights, [], eager)
    check(
        len(activations) == len(weights) - 1,
        lambda: f"mlp_bwd: expected {len(weights) - 1} activations (one per hidden layer), got {len(activations)}",
    )
    check(
        len(weight_grads) == len(weights) and len(bias_grads) in (0, len(weights)),
        lambda: f"mlp_bwd: expected {len(weights)} weight_grads and bias_grads flags (no bias_grads without biases)",
    )
    check(
        grad_output.shape == (input.shape[0], weights[-1].shape[0]),
        lambda: (
            f"mlp_bwd: expected grad_output of shape {[input.shape[0], weights[-1].shape[0]]}, "
            f"got {list(grad_output.shape)}"
        ),
    )


def _mlp_bwd_fake(
    grad_output: Tensor,
    input: Tensor,
    weights: Sequence[Tensor],
    activations: Sequence[Tensor],
    input_grad: bool,
    weight_grads: Sequence[bool],
    bias_grads: Sequence[bool],
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    _check_mlp_bwd_args(grad_output, input, weights, activations, weight_grads, bias_grads)
    grad_input = input.new_empty(input.shape) if input_grad else input.new_empty(0)
    grad_weights = [
        input.new_empty(w.shape) if wanted else input.new_empty(0) for w, wanted in zip(weights, weight_grads)
    ]
    grad_biases = [
        input.new_empty(w.shape[0]) if wanted else input.new_empty(0) for w, wanted in zip(weights, bias_grads)
    ]
    return grad_input, grad_weights, grad_biases


def _mlp_fake(input: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> Tensor:
    return _mlp_fwd_fake(input, weights, biases)[0]


if HAS_EXTENSION:
    torch.library.register_fake("fusedmlp::mlp_fwd")(_mlp_fwd_fake)
    torch.library.register_fake("fusedmlp::mlp_bwd")(_mlp_bwd_fake)
    torch.library.register_fake("fusedmlp::mlp")(_mlp_fake)

if HAS_TRITON:

    @define_triton_op(
        "mlp_fwd_triton",
        "(Tensor input, Tensor[] weights, Tensor[] biases) -> (Tensor output, Tensor[] activations)",
        _mlp_fwd_fake,
    )
    def mlp_fwd_triton(input: Tensor, weights: list[Tensor], biases: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        from fusedmlp.triton_kernels import mlp as kernels

        _check_mlp_args(input, weights, biases, eager=True)
        return kernels.mlp_fwd_triton(input, weights, biases)

    @define_triton_op(
        "mlp_bwd_triton",
        "(Tensor grad_output, Tensor input, Tensor[] weights, Tensor[] activations, bool input_grad, "
        "bool[] weight_grads, bool[] bias_grads) -> (Tensor grad_input, Tensor[] grad_weights, Tensor[] grad_biases)",
        _mlp_bwd_fake,
    )
    def mlp_bwd_triton(
        grad_output: Tensor,
        input: Tensor,
        weights: list[Tensor],
        activations: list[Tensor],
        input_grad: bool,
        weight_grads: list[bool],
        bias_grads: list[bool],
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        from fusedmlp.triton_kernels import mlp as kernels

        _check_mlp_bwd_args(grad_output, input, weights, activations, weight_grads, bias_grads, eager=True)
        return kernels.mlp_bwd_triton(grad_output, input, weights, activations, input_grad, weight_grads, bias_grads)


def mlp_fwd_torch(input: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    activations = []
    hidden = input
    for i, weight in enumerate(weights):
        out = torch.addmm(biases[i], hidden, weight.t()) if biases else torch.mm(hidden, weight.t())
        if i + 1 < len(weights):
            out = torch.relu(out)
            activations.append(out)
        hidden = out
    return hidden, activations


def mlp_bwd_torch(
    grad_output: Tensor,
    input: Tensor,
    weights: Sequence[Tensor],
    activations: Sequence[Tensor],
    input_grad: bool,
    weight_grads: Sequence[bool],
    bias_grads: Sequence[bool],
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    layers = len(weights)
    grad_weights = [input.new_empty(0) for _ in range(layers)]
    grad_biases = [input.new_empty(0) for _ in bias_grads]
    grad_input = input.new_empty(0)
    wanted_below = [input_grad] * layers  # some gradient before layer i is wanted
    for i in range(1, layers):
        wanted_below[i] = wanted_below[i - 1] or weight_grads[i - 1] or (bias_grads and bias_grads[i - 1])
    grad = grad_output
    for i in reversed(range(layers)):
        if i + 1 < layers:
            grad = torch.ops.aten.threshold_backward(grad, activations[i], 0)
        if bias_grads and bias_grads[i]:
            grad_biases[i] = grad.sum(0)
        if weight_grads[i]:
            grad_weights[i] = torch.mm(grad.t(), input if i == 0 else activations[i - 1])
        if not wanted_below[i]:
            break
        grad = torch.mm(grad, weights[i])
        if i == 0:
            grad_input = grad
    return grad_input, grad_weights, grad_biases


def mlp_fwd(
    input: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor], backend: str
) -> tuple[Tensor, list[Tensor]]:
    """(output, hidden activations) of the whole MLP for a 2-D input, on a backend in NETWORK_BACKENDS.
    `biases` holds one bias per weight, or none at all."""
    if backend in ("cpu", "cuda"):
        return torch.ops.fusedmlp.mlp_fwd(input, weights, biases)
    if backend == "triton":
        return torch.ops.fusedmlp.mlp_fwd_triton(input, weights, biases)
    if backend == "torch":
        return mlp_fwd_torch(input, weights, biases)
    raise ValueError(f"fusedmlp: expected a concrete backend (cpu, cuda, triton or torch), got {backend!r}")


def mlp_bwd(
    grad_output: Tensor,
    input: Tensor,
    weights: Sequence[Tensor],
    activations: Sequence[Tensor],
    input_grad: bool,
    weight_grads: Sequence[bool],
    bias_grads: Sequence[bool],
    backend: str,
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """(grad_input, grad_weights, grad_biases); entries not asked for are empty tensors."""
    args = (grad_output, input, weights, activations, input_grad, weight_grads, bias_grads)
    if backend in ("cpu", "cuda"):
        return torch.ops.fusedmlp.mlp_bwd(*args)
    if backend == "triton":
        return torch.ops.fusedmlp.mlp_bwd_triton(*args)
    if backend == "torch":
        return mlp_bwd_torch(*args)
    raise ValueError(f"fusedmlp: expected a concrete backend (cpu, cuda, triton or torch), got {backend!r}")
