"""Softmax-cross-entropy as registered operators, one per backend, and the dispatch among them.

- ``torch.ops.fusedmlp.cross_entropy_fwd`` / ``cross_entropy_fwd_inplace``: C++ kernels (CPU, CUDA).
- ``torch.ops.fusedmlp.cross_entropy``: the differentiable, reduced loss around
  ``cross_entropy_fwd`` (autograd in C++); its backward scales the saved gradient in place
  with ``torch.ops.fusedmlp.scale_grad_unless_one_`` when the graph is not retained.
- ``torch.ops.fusedmlp.cross_entropy_fwd_triton`` / ``cross_entropy_fwd_inplace_triton``: Triton.
- ``torch.ops.fusedmlp.scale_grad_unless_one_`` (C++) / ``scale_grad_unless_one_triton``: the
  backward's in-place scaling of the saved gradient, skipped on the device when the scale is 1.
- ``torch.ops.fusedmlp.cross_entropy_mean_denominator`` / ``cross_entropy_reduce`` (C++): the
  "mean" denominator before the kernel and the reduction after it, for ``cross_entropy``.
- ``cross_entropy_fwd_torch``: the plain-PyTorch reference, built from ATen ops.

Every forward op works on rows (schemas and semantics in csrc/fusedmlp.cpp): it returns the
per-row loss (unreduced, in float32 or float64) and the gradient of
``sum(loss) * grad_scale`` with respect to the logits, so backward only scales it.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fusedmlp._backend import HAS_EXTENSION, HAS_TRITON
from fusedmlp.ops._checks import checkers
from fusedmlp.ops._triton_registration import define_triton_op


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate (and return the per-row loss) in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_cross_entropy_args(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    grad_scale: Optional[Tensor],
    label_smoothing: float,
    eager: bool = False,
) -> None:
    """The checks of csrc/include/fusedmlp/cross_entropy.h, for fakes and the Python backends
    (`eager`: on real tensors only, fusedmlp/ops/_checks.py)."""
    check, check_value = checkers(eager)
    check(logits.dim() == 2, lambda: f"cross_entropy: expected logits of shape [N, C], got {logits.dim()}-D")
    check(logits.dtype.is_floating_point, lambda: f"cross_entropy: expected floating point logits, got {logits.dtype}")
    check(label_smoothing <= 1.0, lambda: f"label_smoothing must be between 0.0 and 1.0. Got: {label_smoothing}")
    N, C = logits.shape
    check(
        target.device == logits.device,
        lambda: (
            f"cross_entropy: expected all tensors to be on the same device, but found {target.device} and "
            f"{logits.device}"
        ),
    )
    if target.dim() == 1:
        check(
            target.dtype == torch.int64,
            lambda: f"expected target dtype to be Long or Byte, but got {target.dtype}",
        )
        check_value(
            target.shape[0] == N,
            lambda: f"Expected input batch_size ({N}) to match target batch_size ({target.shape[0]}).",
        )
    else:
        check(
            target.dim() == 2 and target.shape == logits.shape,
            lambda: f"Expected target size {list(logits.shape)}, got {list(target.shape)}",
        )
        check(
            target.dtype == logits.dtype,
            lambda: f"expected scalar type {logits.dtype} but found {target.dtype}",
        )
    if weight is not None:
        check(
            weight.dim() == 1 and weight.shape[0] == C,
            lambda: (
                f"weight tensor should be defined either for all {C} classes or no classes but got weight "
                f"tensor of shape: {list(weight.shape)}"
            ),
        )
        check(weight.dtype == logits.dtype, lambda: f"expected scalar type {logits.dtype} but found {weight.dtype}")
        check(
            weight.device == logits.device,
            lambda: "cross_entropy: expected all tensors to be on the same device",
        )
    if grad_scale is not None:
        check(grad_scale.numel() == 1, lambda: "cross_entropy: expected a one-element grad_scale")
        check(
            grad_scale.dtype == acc_dtype(logits.dtype),
            lambda: f"cross_entropy: expected grad_scale of dtype {acc_dtype(logits.dtype)}, got {grad_scale.dtype}",
        )


def check_targets_in_range(target: Tensor, num_classes: int, ignore_index: int) -> None:
    """IndexError for a class index outside [0, C) that is not ignore_index, as torch raises
    on CPU. Reads the targets on the host: a sync on GPU, so only run there when asked."""
    bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(bad.any()):
        first = int(target[bad][0])
        raise IndexError(f"Target {first} is out of bounds.")


def _cross_entropy_fwd_fake(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    ignore_index: int,
    label_smoothing: float,
    grad_scale: Optional[Tensor],
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    check_cross_entropy_args(logits, target, weight, grad_scale, label_smoothing)
    loss = logits.new_empty((logits.shape[0],), dtype=acc_dtype(logits.dtype))
    grad = logits.new_empty(logits.shape) if compute_grad else logits.new_empty((0,))
    return loss, grad


def _cross_entropy_fwd_inplace_fake(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    ignore_index: int,
    label_smoothing: float,
    grad_scale: Optional[Tensor],
) -> Tensor:
    check_cross_entropy_args(logits, target, weight, grad_scale, label_smoothing)
    return logits.new_empty((logits.shape[0],), dtype=acc_dtype(logits.dtype))


def _cross_entropy_fake(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    ignore_index: int,
    label_smoothing: float,
    reduction: str,
) -> Tensor:
    check_cross_entropy_args(logits, target, weight, None, label_smoothing)
    torch._check(reduction in ("none", "mean", "sum"), lambda: f"{reduction} is not a valid value for reduction")
    return logits.new_empty((logits.shape[0],) if reduction == "none" else ())


def _scale_grad_unless_one_fake(grad: Tensor, scale: Tensor, eager: bool = False) -> None:
    check, _ = checkers(eager)
    check(grad.is_contiguous(), lambda: "scale_grad_unless_one_: expected a contiguous grad")
    check(scale.numel() == 1, lambda: "scale_grad_unless_one_: expected a one-element scale")
    check(
        scale.dtype == grad.dtype and scale.device == grad.device,
        lambda: "scale_grad_unless_one_: expected scale with grad's dtype and device",
    )


def _cross_entropy_mean_denominator_fake(
    target: Tensor, weight: Optional[Tensor], ignore_index: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    torch._check(
        (target.dim() == 1 and target.dtype == torch.int64) or (target.dim() == 2 and target.dtype.is_floating_point),
        lambda: "cross_entropy_mean_denominator: expected class indices [N] (int64) or probabilities [N, C]",
    )
    torch._check(
        dtype in (torch.float32, torch.float64),
        lambda: f"cross_entropy_mean_denominator: expected dtype float32 or float64, got {dtype}",
    )
    torch._check(
        weight is None or (weight.dim() == 1 and weight.dtype.is_floating_point and weight.device == target.device),
        lambda: "cross_entropy_mean_denominator: expected a 1-D floating point weight on the targets' device",
    )
    return target.new_empty((1,), dtype=dtype), target.new_empty((1,), dtype=dtype)


def _cross_entropy_reduce_fake(loss_rows: Tensor, denominator: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    torch._check(
        loss_rows.dim() == 1 and loss_rows.dtype in (torch.float32, torch.float64),
        lambda: "cross_entropy_reduce: expected per-row losses [N] in float32 or float64",
    )
    torch._check(
        denominator is None
        or (
            denominator.numel() == 1 and denominator.dtype == loss_rows.dtype and denominator.device == loss_rows.device
        ),
        lambda: "cross_entropy_reduce: expected a one-element denominator with the losses' dtype and device",
    )
    return loss_rows.new_empty((), dtype=dtype)


if HAS_EXTENSION:
    torch.library.register_fake("fusedmlp::cross_entropy_mean_denominator")(_cross_entropy_mean_denominator_fake)
    torch.library.register_fake("fusedmlp::cross_entropy_reduce")(_cross_entropy_reduce_fake)
    torch.library.register_fake("fusedmlp::scale_grad_unless_one_")(_scale_grad_unless_one_fake)
    torch.library.register_fake("fusedmlp::cross_entropy_fwd")(_cross_entropy_fwd_fake)
    torch.library.register_fake("fusedmlp::cross_entropy_fwd_inplace")(_cross_entropy_fwd_inplace_fake)
    torch.library.register_fake("fusedmlp::cross_entropy")(_cross_entropy_fake)


if HAS_TRITON:

    @define_triton_op(
        "cross_entropy_fwd_triton",
        "(Tensor logits, Tensor target, Tensor? weight, int ignore_index, float label_smoothing, "
        "Tensor? grad_scale, bool compute_grad) -> (Tensor loss, Tensor grad_logits)",
        _cross_entropy_fwd_fake,
    )
    def cross_entropy_fwd_triton(
        logits: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        ignore_index: int,
        label_smoothing: float,
        grad_scale: Optional[Tensor],
        compute_grad: bool,
    ) -> tuple[Tensor, Tensor]:
        from fusedmlp.triton_kernels import cross_entropy as kernels

        check_cross_entropy_args(logits, target, weight, grad_scale, label_smoothing, eager=True)
        if target.dim() == 1 and target.device.type == "cpu":  # the interpreter: validate like torch on CPU
            check_targets_in_range(target, logits.shape[1], ignore_index)
        grad = torch.empty_like(logits, memory_format=torch.contiguous_format) if compute_grad else None
        loss = kernels.cross_entropy_fwd_triton(logits, target, weight, ignore_index, label_smoothing, grad_scale, grad)
        return loss, grad if grad is not None else logits.new_empty((0,))

    @define_triton_op(
        "cross_entropy_fwd_inplace_triton",
        "(Tensor(a!) logits, Tensor target, Tensor? weight, int ignore_index, float label_smoothing, "
        "Tensor? grad_scale) -> Tensor loss",
        _cross_entropy_fwd_inplace_fake,
    )
    def cross_entropy_fwd_inplace_triton(
        logits: Tensor,
        target: Tensor,
        weight: Optional[Tensor],
        ignore_index: int,
        label_smoothing: float,
        grad_scale: Optional[Tensor],
    ) -> Tensor:
        from fusedmlp.triton_kernels import cross_entropy as kernels

        check_cross_entropy_args(logits, target, weight, grad_scale, label_smoothing, eager=True)
        check, _ = checkers(eager=True)
        check(logits.is_contiguous(), lambda: "cross_entropy_fwd_inplace: needs contiguous logits [N, C]")
        if target.dim() == 1 and target.device.type == "cpu":
            check_targets_in_range(target, logits.shape[1], ignore_index)
        loss = kernels.cross_entropy_fwd_triton(
            logits, target, weight, ignore_index, label_smoothing, grad_scale, logits
        )
        torch.autograd.graph.increment_version(logits)  # the schema's (a!): see _triton_registration
        return loss

    @define_triton_op(
        "scale_grad_unless_one_triton", "(Tensor(a!) grad, Tensor scale) -> ()", _scale_grad_unless_one_fake
    )
    def scale_grad_unless_one_triton(grad: Tensor, scale: Tensor) -> None:
        from fusedmlp.triton_kernels import cross_entropy as kernels

        _scale_grad_unless_one_fake(grad, scale, eager=True)  # the checks
        kernels.scale_grad_unless_one_triton(grad, scale)
        torch.autograd.graph.increment_version(grad)


def cross_entropy_fwd_torch(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    ignore_index: int,
    label_smoothing: float,
    grad_scale: Optional[Tensor],
    compute_grad: bool,
) -> tuple[Tensor, Tensor]:
    """The reference: the same per-row loss and scaled gradient from ATen ops, in the
    accumulation dtype, written in torch's own formulation (log_softmax, then products with
    the target coefficients) so that -inf and NaN entries reach the loss the same way."""
    N, C = logits.shape
    acc = acc_dtype(logits.dtype)
    eps = max(label_smoothing, 0.0)
    if not torch.compiler.is_compiling():  # traced under compile: the functional has checked shapes
        check_cross_entropy_args(logits, target, weight, grad_scale, label_smoothing)
        if target.dim() == 1 and target.device.type == "cpu":
            check_targets_in_range(target, C, ignore_index)
    if C == 0:  # every target is ignored (checked above), or probability rows of width 0
        return logits.new_zeros((N,), dtype=acc), logits.new_empty(logits.shape if compute_grad else (0,))
    logp = torch.log_softmax(logits.to(acc), dim=1)
    w = weight.to(acc) if weight is not None else torch.ones(C, dtype=acc, device=logits.device)
    if target.dim() == 1:
        valid = target != ignore_index
        safe_target = torch.where(valid, target, 0)
        w_t = torch.where(valid, w[safe_target], 0)
        nll = -logp.gather(1, safe_target[:, None]).squeeze(1)
        loss = w_t * nll
        coef = torch.nn.functional.one_hot(safe_target, C).to(acc) * ((1 - eps) * w_t)[:, None]
        if eps > 0:
            smooth = -(logp * w).sum(1)
            loss = (1 - eps) * loss + (eps / C) * smooth
            coef = coef + (eps / C) * w
        loss = torch.where(valid, loss, 0)
    else:
        coef = w * (target.to(acc) * (1 - eps) + eps / C)
        loss = -(logp * coef).sum(1)
        valid = None
    if not compute_grad:
        return loss, logits.new_empty((0,))
    probs = logp.exp()
    grad = probs * coef.sum(1, keepdim=True) - coef
    if grad_scale is not None:
        grad = grad * grad_scale.reshape(())
    if valid is not None:
        # Ignored rows: zero, or NaN where torch's log_softmax backward gives NaN.
        grad = torch.where(valid[:, None], grad, probs * 0)
    return loss, grad.to(logits.dtype)


def cross_entropy_fwd(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    ignore_index: int,
    label_smoothing: float,
    grad_scale: Optional[Tensor],
    compute_grad: bool,
    backend: str,
) -> tuple[Tensor, Tensor]:
    """(per-row loss, gradient or empty) on a resolved (concrete) backend."""
    args = (logits, target, weight, ignore_index, label_smoothing, grad_scale, compute_grad)
    if backend in ("cpu", "cuda"):
        return torch.ops.fusedmlp.cross_entropy_fwd(*args)
    if backend == "triton":
        return torch.ops.fusedmlp.cross_entropy_fwd_triton(*args)
    return cross_entropy_fwd_torch(*args)


def mean_denominator(
    target: Tensor, weight: Optional[Tensor], ignore_index: int, num_classes: int, acc: torch.dtype, backend: str
) -> tuple[Tensor, Tensor]:
    """torch's "mean" denominator and its reciprocal (the kernels' one-element grad_scale), on
    the device (no host sync): the summed weight of the class-index targets that are not
    ignored; the number of rows for probabilities (0 when they have no classes, so that the mean
    is NaN as in torch). The cpu and cuda backends compute both in one fused op, the others in
    ATen."""
    if backend in ("cpu", "cuda"):
        return torch.ops.fusedmlp.cross_entropy_mean_denominator(target, weight, ignore_index, acc)
    if target.dim() == 2:
        rows = target.shape[0] if target.shape[1] > 0 else 0
        denominator = torch.full((), rows, dtype=acc, device=target.device)
    else:
        valid = target != ignore_index
        if weight is None:
            denominator = valid.sum().to(acc)
        else:
            # clamp only keeps the gather in bounds; out-of-range targets are rejected (CPU) or
            # validated on request (GPU) before this point
            w_t = weight.to(acc).gather(0, target.clamp(0, max(num_classes - 1, 0)))
            denominator = torch.where(valid, w_t, 0).sum()
    return denominator, torch.reciprocal(denominator).reshape(1)


def reduce_loss(
    loss_rows: Tensor, reduction: str, denominator: Optional[Tensor], dtype: torch.dtype, backend: str
) -> Tensor:
    """torch's reduction of the per-row losses (`denominator` from mean_denominator for "mean"),
    in `dtype`: one fused op on the cpu and cuda backends, ATen on the others."""
    if reduction != "none" and backend in ("cpu", "cuda"):
        return torch.ops.fusedmlp.cross_entropy_reduce(loss_rows, denominator if reduction == "mean" else None, dtype)
    if reduction == "none":
        loss = loss_rows
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        loss = loss_rows.sum() / denominator
    # Not `loss.to(dtype)` when the dtypes already match: that returns `loss` itself, and torch
    # 2.11's torch.compile then hands a Function output's gradient to the alias, so the compiled
    # graph's logits gradient came back all zeros (fixed in later torch).
    return loss if loss.dtype == dtype else loss.to(dtype)


def scale_grad_unless_one_(grad: Tensor, scale: Tensor, backend: str) -> None:
    """grad *= scale in place unless the one-element `scale` is 1, which the cpu, cuda and
    triton kernels read where it lives (no host sync); the torch reference always multiplies."""
    if backend in ("cpu", "cuda"):
        torch.ops.fusedmlp.scale_grad_unless_one_(grad, scale)
    elif backend == "triton":
        torch.ops.fusedmlp.scale_grad_unless_one_triton(grad, scale)
    else:
        grad.mul_(scale.reshape(()))


def cross_entropy_fwd_inplace(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    ignore_index: int,
    label_smoothing: float,
    grad_scale: Optional[Tensor],
    backend: str,
) -> Tensor:
    """Per-row loss; the gradient overwrites `logits`."""
    args = (logits, target, weight, ignore_index, label_smoothing, grad_scale)
    if backend in ("cpu", "cuda"):
        return torch.ops.fusedmlp.cross_entropy_fwd_inplace(*args)
    if backend == "triton":
        return torch.ops.fusedmlp.cross_entropy_fwd_inplace_triton(*args)
    loss, grad = cross_entropy_fwd_torch(*args, True)
    logits.copy_(grad)
    return loss
