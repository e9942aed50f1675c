"""The fused SGD step as registered operators, one per backend, and the dispatch among them.

- ``torch.ops.fusedmlp.fused_sgd_``: C++ kernels (CPU and CUDA dispatch keys).
- ``torch.ops.fusedmlp.fused_sgd_triton_``: the Triton kernel.
- ``fused_sgd_torch_``: the plain-PyTorch reference, mirroring torch.optim.SGD's
  ``_single_tensor_sgd`` plus the GradScaler arguments, without host syncs.

All share one signature (see csrc/fusedmlp.cpp): every tensor of one (device, dtype) group
per call, params and momentum buffers updated in place.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from fusedmlp._backend import HAS_EXTENSION, HAS_TRITON
from fusedmlp.ops._triton_registration import define_triton_op


def _check_fused_sgd_args(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    momentum_buffers: Sequence[Tensor],
    momentum: float,
    scalars: dict[str, Optional[Tensor]],
) -> None:
    """The Python twin of check_fused_sgd_args in csrc/include/fusedmlp/sgd.h."""
    if len(grads) != len(params):
        raise RuntimeError(f"fused_sgd_: expected as many grads as params, got {len(grads)} and {len(params)}")
    expected_buffers = len(params) if momentum != 0 else 0
    if len(momentum_buffers) != expected_buffers:
        raise RuntimeError(f"fused_sgd_: expected {expected_buffers} momentum buffers, got {len(momentum_buffers)}")
    if not params:
        return
    first = params[0]
    if not first.dtype.is_floating_point:
        raise RuntimeError(f"fused_sgd_: expected floating point params, got {first.dtype}")
    for i, (p, g) in enumerate(zip(params, grads)):
        if p.is_sparse or g.is_sparse:
            raise RuntimeError("fused_sgd_ does not support sparse gradients")
        if p.dtype != first.dtype or p.device != first.device:
            raise RuntimeError(
                f"fused_sgd_: expected every param to have the dtype and device of the first "
                f"({first.dtype}, {first.device}), but param {i} has {p.dtype}, {p.device}"
            )
        if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
            raise RuntimeError(f"fused_sgd_: grad {i} must match its param in shape, dtype and device")
        if momentum != 0:
            b = momentum_buffers[i]
            if b.shape != p.shape or b.dtype != p.dtype or b.device != p.device:
                raise RuntimeError(f"fused_sgd_: momentum buffer {i} must match its param in shape, dtype and device")
    for name, t in scalars.items():
        if t is None:
            continue
        if t.numel() != 1:
            raise RuntimeError(f"fused_sgd_: {name} must be a 1-element tensor, got {t.numel()} elements")
        if not t.dtype.is_floating_point:
            raise RuntimeError(f"fused_sgd_: {name} must be floating point, got {t.dtype}")
        if t.device != first.device:
            raise RuntimeError(f"fused_sgd_: {name} must be on the params' device {first.device}, got {t.device}")


def _fused_sgd_fake(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    weight_decay: float,
    momentum: float,
    lr_tensor: Optional[Tensor],
    lr: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    is_first_step: bool,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
    first_step_skipped: Optional[Tensor] = None,
) -> None:
    _check_fused_sgd_args(
        params,
        grads,
        momentum_buffers,
        momentum,
        {
            "lr_tensor": lr_tensor,
            "grad_scale": grad_scale,
            "found_inf": found_inf,
            "first_step_skipped": first_step_skipped,
        },
    )


if HAS_EXTENSION:
    torch.library.register_fake("fusedmlp::fused_sgd_")(_fused_sgd_fake)


# The schema of every fused_sgd_ variant (csrc/fusedmlp.cpp).
FUSED_SGD_SCHEMA = (
    "(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] momentum_buffers, *, float weight_decay, "
    "float momentum, Tensor? lr_tensor, float lr, float dampening, bool nesterov, bool maximize, "
    "bool is_first_step, Tensor? grad_scale=None, Tensor? found_inf=None, Tensor? first_step_skipped=None) -> ()"
)

if HAS_TRITON:

    @define_triton_op("fused_sgd_triton_", FUSED_SGD_SCHEMA, _fused_sgd_fake)
    def _fused_sgd_triton_impl(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor], **kwargs):
        from fusedmlp.triton_kernels import sgd as kernels

        _fused_sgd_fake(params, grads, momentum_buffers, **kwargs)  # argument checks only
        kernels.fused_sgd_triton_(params, grads, momentum_buffers, **kwargs)
        # The schema's (a!) and (b!): autograd sees in-place writes through version counters (a
        # graph that saved a param then raises at backward, as after torch.optim.SGD).
        torch.autograd.graph.increment_version(params)
        torch.autograd.graph.increment_version(momentum_buffers)


def fused_sgd_torch_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    weight_decay: float,
    momentum: float,
    lr_tensor: Optional[Tensor],
    lr: float,
    dampening: float,
    nesterov: bool,
    maximize: bool,
    is_first_step: bool,
    grad_scale: Optional[Tensor] = None,
    found_inf: Optional[Tensor] = None,
    first_step_skipped: Optional[Tensor] = None,
) -> None:
    """torch.optim.SGD's _single_tensor_sgd on the fused_sgd_ signature. A skipped step
    (found_inf != 0) and a device-side first step are selected with torch.where, never .item()."""
    _fused_sgd_fake(
        params,
        grads,
        momentum_buffers,
        weight_decay=weight_decay,
        momentum=momentum,
        lr_tensor=lr_tensor,
        lr=lr,
        dampening=dampening,
        nesterov=nesterov,
        maximize=maximize,
        is_first_step=is_first_step,
        grad_scale=grad_scale,
        found_inf=found_inf,
        first_step_skipped=first_step_skipped,
    )
    skip = found_inf.reshape(()) != 0 if found_inf is not None else None
    for i, param in enumerate(params):
        grad = grads[i] if grad_scale is None else grads[i] / grad_scale.reshape(())
        grad = -grad if maximize else grad
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if momentum != 0:
            buf = momentum_buffers[i]
            if is_first_step:
                new_buf = grad.clone()
            else:
                new_buf = buf.mul(momentum).add_(grad, alpha=1 - dampening)
                if first_step_skipped is not None:
                    new_buf = torch.where(first_step_skipped.reshape(()) != 0, grad, new_buf)
            grad = grad.add(new_buf, alpha=momentum) if nesterov else new_buf
            buf.copy_(new_buf if skip is None else torch.where(skip, buf, new_buf))
        if lr_tensor is not None:
            new_param = param.addcmul(grad, lr_tensor.reshape(()).to(param.dtype), value=-1)
        else:
            new_param = param.add(grad, alpha=-lr)
        param.copy_(new_param if skip is None else torch.where(skip, param, new_param))


def fused_sgd_(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffers: list[Tensor],
    *,
    backend: str,
    **kwargs,
) -> None:
    """One fused SGD step over one (device, dtype) group on a resolved (concrete) backend;
    keyword arguments as in the fused_sgd_ schema."""
    if backend in ("cpu", "cuda"):
        torch.ops.fusedmlp.fused_sgd_(params, grads, momentum_buffers, **kwargs)
    elif backend == "triton":
        torch.ops.fusedmlp.fused_sgd_triton_(params, grads, momentum_buffers, **kwargs)
    else:
        fused_sgd_torch_(params, grads, momentum_buffers, **kwargs)
