"""CrossEntropyFunction: autograd for fused softmax-cross-entropy over rows.

Forward runs one kernel that produces the per-row loss *and* the gradient of the reduced
loss with respect to the logits (already divided by the "mean" denominator), so the
gradient is the only logits-sized tensor kept for backward, and backward is one multiply
by grad_output. In the opt-in in-place mode that gradient lives in the caller's logits
buffer, and nothing logits-sized is allocated at all.

The forward operators' own autograd formula (``torch.library.register_autograd``) scales
the same gradient, so ``torch.ops.fusedmlp.cross_entropy_fwd*`` are differentiable when
called directly and ``torch.library.opcheck`` can verify them.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fusedmlp._backend import HAS_EXTENSION, HAS_TRITON, below_autograd
from fusedmlp.ops import cross_entropy as ops

REDUCTIONS = ("none", "mean", "sum")


class CrossEntropyFunction(torch.autograd.Function):
    """``apply(logits2d, target_rows, weight, ignore_index, label_smoothing, reduction,
    backend, compute_grad, inplace_backward)``: logits [N, C]; target [N] class indices or
    [N, C] probabilities; a concrete backend. Returns the reduced loss (0-d) or, for
    reduction="none", the per-row loss [N], in the logits' dtype. Double backward is not
    supported and raises."""

    @staticmethod
    def forward(
        ctx,
        logits: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        ignore_index: int,
        label_smoothing: float,
        reduction: str,
        backend: str,
        compute_grad: bool,
        inplace_backward: bool,
    ) -> Tensor:
        acc = ops.acc_dtype(logits.dtype)
        denominator, grad_scale = (
            ops.mean_denominator(target, weight, ignore_index, logits.shape[1], acc, backend)
            if reduction == "mean"
            else (None, None)
        )
        with below_autograd():
            if inplace_backward:
                loss_rows = ops.cross_entropy_fwd_inplace(
                    logits, target, weight, ignore_index, label_smoothing, grad_scale, backend
                )
                grad = logits
            else:
                loss_rows, grad = ops.cross_entropy_fwd(
                    logits, target, weight, ignore_index, label_smoothing, grad_scale, compute_grad, backend
                )
        loss = ops.reduce_loss(loss_rows, reduction, denominator, logits.dtype, backend)
        ctx.reduction = reduction
        ctx.backend = backend
        ctx.inplace_backward = inplace_backward
        ctx.backward_done = False
        if compute_grad or inplace_backward:
            ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        if ctx.inplace_backward and ctx.backward_done:
            raise RuntimeError(
                "fusedmlp cross_entropy(inplace_backward=True): the gradient was written into the logits buffer and "
                "has been handed out by the first backward; a second backward (retain_graph=True) is not possible. "
                "Use inplace_backward=False to backpropagate more than once."
            )
        (grad,) = ctx.saved_tensors
        if ctx.inplace_backward:
            ctx.backward_done = True
        if _is_one_on_cpu(grad_output):
            # loss.backward() on CPU: the saved gradient is the answer, so skip a logits-sized
            # allocation and pass. Autograd never writes into incoming gradients, and
            # AccumulateGrad copies a gradient that is still saved here (retain_graph=True)
            # instead of adopting it, so later backwards still see the saved values.
            return grad, None, None, None, None, None, None, None, None
        scale = grad_output.to(grad.dtype)
        # Once the graph is freed after this backward (or in the in-place mode, which allows one
        # backward) the saved gradient is handed out, scaled in place; for a scalar loss only
        # when grad_output is not 1, read on the device, so loss.backward() on a GPU skips a
        # logits-sized read and write. (Traced by torch.compile: a plain multiply.)
        in_place = ctx.inplace_backward or _graph_freed_after_backward()
        if in_place and ctx.reduction != "none" and not torch.compiler.is_compiling():
            ops.scale_grad_unless_one_(grad, scale.reshape(1), ctx.backend)
            return grad, None, None, None, None, None, None, None, None
        scale = scale[:, None] if ctx.reduction == "none" else scale.reshape(())
        grad_logits = grad.mul_(scale) if in_place else grad * scale
        return grad_logits, None, None, None, None, None, None, None, None


def _graph_freed_after_backward() -> bool:
    """Whether the running backward frees the graph (no retain_graph), so saved tensors are
    not read again. Under torch.compile the traced backward keeps the out-of-place multiply."""
    return not torch.compiler.is_compiling() and not torch._C._autograd._get_current_graph_task_keep_graph()


def _is_one_on_cpu(grad_output: Tensor) -> bool:
    """Whether a CPU grad_output is the scalar 1 (reading a CPU value is no device sync;
    under torch.compile, or for a fake or other tensor subclass whose value cannot be read,
    the multiply is kept)."""
    return (
        type(grad_output) is Tensor
        and grad_output.device.type == "cpu"
        and grad_output.numel() == 1
        and grad_output.dim() == 0
        and not torch.compiler.is_compiling()
        and bool(grad_output == 1)
    )


def _register_operator_autograd(op_name: str) -> None:
    """d(loss_i)/d(logits_i) = grad_logits_i / grad_scale; the loss is the only
    differentiable output (grad_logits is a result, not a function to differentiate)."""

    def setup_context(ctx, inputs, output):
        logits, target, weight, ignore_index, label_smoothing, grad_scale, compute_grad = inputs
        ctx.compute_grad = compute_grad
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1], grad_scale)

    def backward(ctx, grad_loss, _grad_of_grad_logits):
        if not ctx.compute_grad:
            raise RuntimeError(f"{op_name}: called with compute_grad=False, so it has no gradient to give")
        grad, grad_scale = ctx.saved_tensors
        scaled = grad * grad_loss.to(grad.dtype)[:, None]
        if grad_scale is not None:
            scaled = scaled / grad_scale.to(grad.dtype)
        return scaled, None, None, None, None, None, None

    torch.library.register_autograd(op_name, backward, setup_context=setup_context)


if HAS_EXTENSION:
    _register_operator_autograd("fusedmlp::cross_entropy_fwd")
if HAS_TRITON:
    _register_operator_autograd("fusedmlp::cross_entropy_fwd_triton")
