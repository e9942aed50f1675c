"""Triton multi-tensor SGD step: one launch updates every tensor of a (device, dtype) group.

The launch gets one int64 table built on the host and copied to the device in one transfer
(kept for the next step with the same contents: ``_launch.LaunchTables``):

    [0:4]                 the coefficients weight_decay, momentum, 1 - dampening, lr as
                          float64 bit patterns (Triton would pass Python floats as fp32,
                          which loses digits for fp64 params)
    [4 : 4+T]             param data pointers        T = number of tensors
    [4+T : 4+2T]          grad data pointers
    [4+2T : 4+3T]         momentum buffer pointers (repeat the params when momentum == 0)
    [4+3T : 4+4T]         numels
    [4+4T : 5+5T]         first_block: tensor t owns programs first_block[t] .. first_block[t+1]-1

The table grows with the number of tensors, not of blocks: each program finds its tensor by a
binary search of first_block (a few loads), where a per-program map built on the host cost a
Python loop and a list conversion per block, every step (910 blocks for 1.86M parameters,
32,768 for 67M: that host work, not the kernel, set the step time on the GPU). Each program
casts its tensor's addresses to typed pointers (which the Triton interpreter supports too:
there pointers are host addresses) and updates BLOCK elements, in fp32 for fp16/bf16/fp32 and
fp64 for fp64. GradScaler's found_inf is folded into the masks, so a
skipped step writes nothing and the host never waits for the flag.
"""

from __future__ import annotations

import os
import struct
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._launch import LAUNCH_TABLES, acc_dtype, aot_spec, cdiv, device_guard

__all__ = ["fused_sgd_triton_", "KERNELS", "SUPPORTED_DTYPES", "aot_compile_specs"]

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# GPU: 2048 elements x 3 streams per program with 8 warps is 8 elements per thread per
# stream, enough in flight to saturate HBM without spilling. The interpreter runs one
# program at a time in Python: small blocks keep test shapes (BLOCK-1/BLOCK/BLOCK+1) tiny.
BLOCK = 32 if INTERPRET else 2048
NUM_WARPS = 8

_TRITON_PTR_TYPE = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64"}


@triton.jit
def _sgd_math(
    param,
    grad,
    buf,
    weight_decay,
    momentum,
    one_minus_dampening,
    lr,
    first_step,
    HAS_WEIGHT_DECAY: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    MAXIMIZE: tl.constexpr,
):
    # torch.optim.SGD's update for one block; returns (new param, new buffer). `first_step`
    # is a scalar bool: the buffer then starts as the (decayed) gradient.
    g = -grad if MAXIMIZE else grad
    if HAS_WEIGHT_DECAY:
        g = param * weight_decay + g
    new_buf = buf
    if HAS_MOMENTUM:
        new_buf = tl.where(first_step, g, g * one_minus_dampening + buf * momentum)
        if NESTEROV:
            g = new_buf * momentum + g
        else:
            g = new_buf
    return param - g * lr, new_buf


@triton.jit
def _find_tensor(first_block_ptr, num_tensors, pid):
    # The t with first_block[t] <= pid < first_block[t + 1] (first_block is ascending and
    # tensors without elements own no block, so the answer is unique).
    lo = num_tensors * 0  # int64 like hi: loop-carried values keep one type
    hi = num_tensors
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if tl.load(first_block_ptr + mid) <= pid:
            lo = mid
        else:
            hi = mid
    return lo


@triton.jit
def _fused_sgd_kernel(
    table_ptr,
    num_tensors,
    dtype_probe_ptr,
    lr_ptr,
    grad_scale_ptr,
    found_inf_ptr,
    first_step_skipped_ptr,
    ACC_DTYPE: tl.constexpr,
    HAS_WEIGHT_DECAY: tl.constexpr,
    HAS_MOMENTUM: tl.constexpr,
    NESTEROV: tl.constexpr,
    MAXIMIZE: tl.constexpr,
    IS_FIRST_STEP: tl.constexpr,
    HAS_LR_TENSOR: tl.constexpr,
    HAS_GRAD_SCALE: tl.constexpr,
    HAS_FOUND_INF: tl.constexpr,
    HAS_FIRST_STEP_SKIPPED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    elem_ty = dtype_probe_ptr.dtype.element_ty
    first_block_ptr = table_ptr + 4 + 4 * num_tensors
    tensor = _find_tensor(first_block_ptr, num_tensors, pid)
    start = (pid - tl.load(first_block_ptr + tensor)) * BLOCK
    numel = tl.load(table_ptr + 4 + 3 * num_tensors + tensor)
    param_ptr = tl.load(table_ptr + 4 + tensor).to(tl.pointer_type(elem_ty))
    grad_ptr = tl.load(table_ptr + 4 + num_tensors + tensor).to(tl.pointer_type(elem_ty))
    buf_ptr = tl.load(table_ptr + 4 + 2 * num_tensors + tensor).to(tl.pointer_type(elem_ty))

    weight_decay = tl.load(table_ptr + 0).to(tl.float64, bitcast=True).to(ACC_DTYPE)
    momentum = tl.load(table_ptr + 1).to(tl.float64, bitcast=True).to(ACC_DTYPE)
    one_minus_dampening = tl.load(table_ptr + 2).to(tl.float64, bitcast=True).to(ACC_DTYPE)
    if HAS_LR_TENSOR:
        lr = tl.load(lr_ptr).to(ACC_DTYPE)
    else:
        lr = tl.load(table_ptr + 3).to(tl.float64, bitcast=True).to(ACC_DTYPE)

    if HAS_FOUND_INF:
        # A skipped step masks every element off.
        numel = tl.where(tl.load(found_inf_ptr) == 0, numel, 0)
    offsets = start + tl.arange(0, BLOCK).to(tl.int64)
    mask = offsets < numel
    first_step = IS_FIRST_STEP
    if HAS_FIRST_STEP_SKIPPED:
        first_step = tl.load(first_step_skipped_ptr) != 0

    param = tl.load(param_ptr + offsets, mask=mask).to(ACC_DTYPE)
    grad = tl.load(grad_ptr + offsets, mask=mask).to(ACC_DTYPE)
    if HAS_GRAD_SCALE:
        grad = grad / tl.load(grad_scale_ptr).to(ACC_DTYPE)
    if HAS_MOMENTUM and not IS_FIRST_STEP:
        buf = tl.load(buf_ptr + offsets, mask=mask).to(ACC_DTYPE)
    else:
        buf = grad
    new_param, new_buf = _sgd_math(
        param,
        grad,
        buf,
        weight_decay,
        momentum,
        one_minus_dampening,
        lr,
        first_step,
        HAS_WEIGHT_DECAY,
        HAS_MOMENTUM,
        NESTEROV,
        MAXIMIZE,
    )
    tl.store(param_ptr + offsets, new_param.to(elem_ty), mask=mask)
    if HAS_MOMENTUM:
        tl.store(buf_ptr + offsets, new_buf.to(elem_ty), mask=mask)


KERNELS = {"_fused_sgd_kernel": _fused_sgd_kernel}


def _first_blocks(numels: list[int]) -> list[int]:
    """first_block[t]: the first program of tensor t; the last entry is the number of programs."""
    first = [0]
    for n in numels:
        first.append(first[-1] + cdiv(n, BLOCK))
    return first


def fused_sgd_triton_(
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
    """One launch for the whole group; arguments as fusedmlp::fused_sgd_ (already checked)."""
    if not params:
        return
    dtype = params[0].dtype
    if dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(f"fused_sgd_ (triton): unsupported dtype {dtype}; expected one of {SUPPORTED_DTYPES}")
    has_momentum = momentum != 0
    # The kernel walks contiguous memory: strided tensors go through contiguous copies.
    work_params = [p.contiguous() for p in params]
    work_grads = [g.contiguous() for g in grads]
    work_bufs = [b.contiguous() for b in momentum_buffers] if has_momentum else work_params
    numels = [p.numel() for p in params]
    first_blocks = _first_blocks(numels)
    num_programs = first_blocks[-1]
    if num_programs > 0:
        coeffs = struct.unpack("<4q", struct.pack("<4d", weight_decay, momentum, 1.0 - dampening, lr))
        entries = [
            *coeffs,
            *[p.data_ptr() for p in work_params],
            *[g.data_ptr() for g in work_grads],
            *[b.data_ptr() for b in work_bufs],
            *numels,
            *first_blocks,
        ]
        probe = work_params[0]
        with device_guard(probe):
            table = LAUNCH_TABLES.get(entries, probe.device)
            _fused_sgd_kernel[(num_programs,)](
                table,
                len(params),
                probe,
                probe if lr_tensor is None else lr_tensor,
                probe if grad_scale is None else grad_scale,
                probe if found_inf is None else found_inf,
                probe if first_step_skipped is None else first_step_skipped,
                ACC_DTYPE=acc_dtype(dtype),
                HAS_WEIGHT_DECAY=weight_decay != 0,
                HAS_MOMENTUM=has_momentum,
                NESTEROV=nesterov,
                MAXIMIZE=maximize,
                IS_FIRST_STEP=is_first_step,
                HAS_LR_TENSOR=lr_tensor is not None,
                HAS_GRAD_SCALE=grad_scale is not None,
                HAS_FOUND_INF=found_inf is not None,
                HAS_FIRST_STEP_SKIPPED=first_step_skipped is not None,
                BLOCK=BLOCK,
                num_warps=NUM_WARPS,
            )
    for p, w in zip(params, work_params):
        if w is not p:
            p.copy_(w)
    if has_momentum:
        for b, w in zip(momentum_buffers, work_bufs):
            if w is not b:
                b.copy_(w)


def aot_compile_specs(dtypes=SUPPORTED_DTYPES):
    """One dict per dtype x flag variant to AOT-compile (see tests/test_sgd.py): every option
    on (most registers live), the two momentum steps as a training loop runs them, and plain.

    Each dict has: kernel, fn, dtype, variant, signature, constexprs, attrs, num_warps,
    num_stages, config -- what triton.compile(ASTSource(...)) needs.
    """
    variants = {
        "all_options": dict(
            HAS_WEIGHT_DECAY=True,
            HAS_MOMENTUM=True,
            NESTEROV=True,
            MAXIMIZE=True,
            IS_FIRST_STEP=False,
            HAS_LR_TENSOR=True,
            HAS_GRAD_SCALE=True,
            HAS_FOUND_INF=True,
            HAS_FIRST_STEP_SKIPPED=True,
        ),
        "momentum_first_step": dict(
            HAS_WEIGHT_DECAY=True,
            HAS_MOMENTUM=True,
            NESTEROV=False,
            MAXIMIZE=False,
            IS_FIRST_STEP=True,
            HAS_LR_TENSOR=False,
            HAS_GRAD_SCALE=False,
            HAS_FOUND_INF=False,
            HAS_FIRST_STEP_SKIPPED=False,
        ),
        "momentum_steady": dict(
            HAS_WEIGHT_DECAY=False,
            HAS_MOMENTUM=True,
            NESTEROV=False,
            MAXIMIZE=False,
            IS_FIRST_STEP=False,
            HAS_LR_TENSOR=False,
            HAS_GRAD_SCALE=False,
            HAS_FOUND_INF=False,
            HAS_FIRST_STEP_SKIPPED=False,
        ),
        "plain": dict(
            HAS_WEIGHT_DECAY=False,
            HAS_MOMENTUM=False,
            NESTEROV=False,
            MAXIMIZE=False,
            IS_FIRST_STEP=False,
            HAS_LR_TENSOR=False,
            HAS_GRAD_SCALE=False,
            HAS_FOUND_INF=False,
            HAS_FIRST_STEP_SKIPPED=False,
        ),
    }
    fn = _fused_sgd_kernel
    for dtype in dtypes:
        for variant, flags in variants.items():
            constexprs = dict(flags, ACC_DTYPE=acc_dtype(dtype), BLOCK=BLOCK)
            signature = {
                "table_ptr": "*i64",
                "num_tensors": "i64",
                "dtype_probe_ptr": _TRITON_PTR_TYPE[dtype],
                "lr_ptr": "*fp32",
                "grad_scale_ptr": "*fp32",
                "found_inf_ptr": "*fp32",
                "first_step_skipped_ptr": "*fp32",
            }
            for name in constexprs:
                signature[name] = "constexpr"
            signature = {a: signature[a] for a in fn.arg_names}
            yield aot_spec("_fused_sgd_kernel", fn, dtype, variant, signature, constexprs, NUM_WARPS, {"BLOCK": BLOCK})
