"""Triton kernel for fused softmax-cross-entropy (loss and logits gradient in one launch).

One program per row, the row walked in BLOCK_C chunks:
  pass 1: online softmax, per lane a running max m and sum s of exp(x - m) (and, for
          probability targets / label smoothing, the coefficient sums needed before any
          gradient element can be written);
  pass 2: reads the row again (from L2 for all but huge rows), writes
          grad_j = scale * (A * exp(x_j - m) / s - a_j) and accumulates sum_j a_j (x_j - m).
The coefficients a_j, A and the loss are those of csrc/cpu/cross_entropy.cpp. The gradient
goes to a separate buffer, or over the logits only when the caller passes the logits
themselves as `grad` (the opt-in in-place op). Loads upcast to float32 (float64 for float64).

Very wide rows are not split across programs: a row is one program's loop, so a batch
with few rows and a huge vocabulary uses few SMs (documented limitation).
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["cross_entropy_fwd_triton", "KERNELS", "SUPPORTED_DTYPES", "aot_compile_specs"]

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit
def _cross_entropy_fwd_kernel(
    logits_ptr,
    stride_xr,
    stride_xc,
    target_ptr,
    stride_tr,
    stride_tc,
    weight_ptr,
    stride_w,
    grad_scale_ptr,
    grad_ptr,
    stride_gr,
    stride_gc,
    loss_ptr,
    C,
    ignore_index,
    smoothing,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    x_row = logits_ptr + row * stride_xr
    cols0 = tl.arange(0, BLOCK_C)
    eps = tl.cast(smoothing, ACC_DTYPE)
    eps_per_class = eps / C
    keep = 1.0 - eps

    # Pass 1: online max / sum-exp per lane, plus A (probabilities) or W (weighted smoothing).
    m_vec = tl.full((BLOCK_C,), float("-inf"), ACC_DTYPE)
    s_vec = tl.zeros((BLOCK_C,), ACC_DTYPE)
    coef_vec = tl.zeros((BLOCK_C,), ACC_DTYPE)
    for start in range(0, C, BLOCK_C):
        cols = start + cols0
        mask = cols < C
        x = tl.load(x_row + cols * stride_xc, mask=mask, other=float("-inf")).to(ACC_DTYPE)
        m_new = tl.maximum(m_vec, x)
        alpha = tl.where(m_vec == m_new, 1.0, tl.exp(m_vec - m_new))
        # x == -inf adds exactly 0 (also when m_new is -inf); NaN x makes s NaN.
        s_vec = s_vec * alpha + tl.where(x == float("-inf"), 0.0, tl.exp(x - m_new))
        m_vec = m_new
        if HAS_WEIGHT:
            w = tl.load(weight_ptr + cols * stride_w, mask=mask, other=0.0).to(ACC_DTYPE)
        else:
            w = tl.where(mask, 1.0, 0.0).to(ACC_DTYPE)
        if PROB_TARGET:
            q = tl.load(target_ptr + row * stride_tr + cols * stride_tc, mask=mask, other=0.0).to(ACC_DTYPE)
            coef_vec += w * (keep * q + eps_per_class)
        elif SMOOTH:
            coef_vec += w
    m = tl.max(m_vec, axis=0)
    s = tl.sum(s_vec * tl.where(m_vec == m, 1.0, tl.exp(m_vec - m)), axis=0)
    log_s = tl.log(s)
    scale = tl.load(grad_scale_ptr).to(ACC_DTYPE) if HAS_SCALE else 1.0

    if PROB_TARGET:
        A = tl.sum(coef_vec, axis=0)
        c1 = A * scale / s
    else:
        t = tl.load(target_ptr + row * stride_tr)
        valid = t != ignore_index
        t_safe = tl.where(valid & (t >= 0) & (t < C), t, 0)
        x_t = tl.load(x_row + t_safe * stride_xc).to(ACC_DTYPE)  # before pass 2 may overwrite the row
        if HAS_WEIGHT:
            w_t = tl.load(weight_ptr + t_safe * stride_w).to(ACC_DTYPE)
        else:
            w_t = 1.0
        A = keep * w_t
        if SMOOTH:
            A += eps_per_class * tl.sum(coef_vec, axis=0)
        # Ignored rows: a zero gradient that is NaN where the softmax is (as torch's).
        c1 = tl.where(valid, A * scale / s, 0.0 / s)
        keep_t = tl.where(valid, keep * w_t, 0.0)

    # Pass 2: the gradient, and sum_j a_j (x_j - m) for the loss.
    dot_vec = tl.zeros((BLOCK_C,), ACC_DTYPE)
    if WRITE_GRAD or PROB_TARGET or SMOOTH:
        g_row = grad_ptr + row * stride_gr
        for start in range(0, C, BLOCK_C):
            cols = start + cols0
            mask = cols < C
            x = tl.load(x_row + cols * stride_xc, mask=mask, other=0.0).to(ACC_DTYPE)
            if HAS_WEIGHT:
                w = tl.load(weight_ptr + cols * stride_w, mask=mask, other=0.0).to(ACC_DTYPE)
            else:
                w = tl.where(mask, 1.0, 0.0).to(ACC_DTYPE)
            if PROB_TARGET:
                q = tl.load(target_ptr + row * stride_tr + cols * stride_tc, mask=mask, other=0.0).to(ACC_DTYPE)
                a = w * (keep * q + eps_per_class)
                dot_vec += tl.where(mask, a * (x - m), 0.0)
            elif SMOOTH:
                dot_vec += tl.where(mask, w * (x - m), 0.0)
                a = tl.where(valid, eps_per_class * w, 0.0) + tl.where(cols == t, keep_t, 0.0)
            else:
                a = tl.where(cols == t, keep_t, 0.0)
            if WRITE_GRAD:
                e = tl.where(x == float("-inf"), 0.0, tl.exp(x - m))
                if PROB_TARGET:
                    g = e * c1 - a * scale
                else:  # scale is inf when every target is ignored ("mean"): keep it off ignored rows
                    g = tl.where(valid, e * c1 - a * scale, e * c1)
                tl.store(g_row + cols * stride_gc, g.to(grad_ptr.dtype.element_ty), mask=mask)
    dot = tl.sum(dot_vec, axis=0)

    if PROB_TARGET:
        loss = A * log_s - dot
    else:
        nll = log_s - (x_t - m)
        if SMOOTH:
            loss = keep * w_t * nll + eps_per_class * (tl.sum(coef_vec, axis=0) * log_s - dot)
        else:
            loss = w_t * nll
        loss = tl.where(valid, loss, 0.0)
    tl.store(loss_ptr + row, loss)


KERNELS = {"_cross_entropy_fwd_kernel": _cross_entropy_fwd_kernel}

_TORCH_TO_TRITON = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}
_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64"}


def _block_and_warps(C: int, dtype: torch.dtype) -> tuple[int, int]:
    """Chunk width and warps: up to _MAX_BLOCK_C columns per chunk at 8 lanes per thread
    (wider chunks spill on sm_80, see the AOT test); small chunks under the interpreter so
    the multi-chunk path is what the tests run."""
    if INTERPRET:
        return 32, 1
    block = min(triton.next_power_of_2(max(C, 1)), _MAX_BLOCK_C[dtype])
    return block, max(1, min(8, block // 256))


_MAX_BLOCK_C = {torch.float16: 2048, torch.bfloat16: 2048, torch.float32: 2048, torch.float64: 1024}


# (variant, constexprs) compiled ahead of time for every dtype; the widest chunk is where
# register pressure peaks, so every variant is compiled at the dtype's largest BLOCK_C.
_AOT_VARIANTS = {
    "index": dict(PROB_TARGET=False, HAS_WEIGHT=False, SMOOTH=False, HAS_SCALE=True, WRITE_GRAD=True),
    "index_weight_smooth": dict(PROB_TARGET=False, HAS_WEIGHT=True, SMOOTH=True, HAS_SCALE=True, WRITE_GRAD=True),
    "prob_weight_smooth": dict(PROB_TARGET=True, HAS_WEIGHT=True, SMOOTH=True, HAS_SCALE=True, WRITE_GRAD=True),
    "index_loss_only": dict(PROB_TARGET=False, HAS_WEIGHT=True, SMOOTH=True, HAS_SCALE=False, WRITE_GRAD=False),
}


def aot_compile_specs(dtypes=SUPPORTED_DTYPES):
    """One dict per kernel x dtype x variant for triton.compile(ASTSource(...)) (see
    tests/test_triton_cross_entropy_kernels.py)."""
    fn = _cross_entropy_fwd_kernel
    for dtype in dtypes:
        block = _MAX_BLOCK_C[dtype]
        num_warps = max(1, min(8, block // 256))
        for variant, flags in _AOT_VARIANTS.items():
            constexprs = dict(flags, ACC_DTYPE=tl.float64 if dtype == torch.float64 else tl.float32, BLOCK_C=block)
            signature = {}
            for arg in fn.arg_names:
                if arg in constexprs:
                    signature[arg] = "constexpr"
                elif arg == "target_ptr":
                    signature[arg] = _PTR[dtype] if flags["PROB_TARGET"] else "*i64"
                elif arg in ("grad_scale_ptr", "loss_ptr"):
                    signature[arg] = "*fp64" if dtype == torch.float64 else "*fp32"
                elif arg.endswith("_ptr"):
                    signature[arg] = _PTR[dtype]
                elif arg == "smoothing":
                    signature[arg] = "fp32"
                else:
                    signature[arg] = "i64"
            yield {
                "kernel": "_cross_entropy_fwd_kernel",
                "fn": fn,
                "dtype": str(dtype).replace("torch.", ""),
                "variant": variant,
                "layout": "rows",
                "signature": signature,
                "constexprs": constexprs,
                "attrs": {},
                "num_warps": num_warps,
                "num_stages": 1,
                "config": {"BLOCK_C": block},
            }


def _device_guard(t: Tensor):
    # Triton launches on torch's current device/stream; make that the tensors' device.
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def cross_entropy_fwd_triton(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor],
    ignore_index: int,
    label_smoothing: float,
    grad_scale: Optional[Tensor],
    grad: Optional[Tensor],
) -> Tensor:
    """Per-row loss [N] (float32, float64 for float64 logits); writes the gradient of
    sum(loss) * grad_scale into `grad` ([N, C], logits' dtype; may be `logits` itself) when
    given. Arguments are checked by the caller (fusedmlp.ops.cross_entropy)."""
    if logits.dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(f"cross_entropy (triton): unsupported dtype {logits.dtype}")
    N, C = logits.shape
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    loss = torch.empty(N, dtype=acc, device=logits.device)
    if N == 0:
        return loss
    if C == 0:
        return loss.zero_()
    prob = target.dim() == 2
    block, num_warps = _block_and_warps(C, logits.dtype)
    with _device_guard(logits):
        _cross_entropy_fwd_kernel[(N,)](
            logits,
            logits.stride(0),
            logits.stride(1),
            target,
            target.stride(0),
            target.stride(1) if prob else 0,
            weight if weight is not None else logits,
            weight.stride(0) if weight is not None else 0,
            grad_scale if grad_scale is not None else loss,
            grad if grad is not None else logits,
            grad.stride(0) if grad is not None else 0,
            grad.stride(1) if grad is not None else 0,
            loss,
            C,
            ignore_index,
            float(max(label_smoothing, 0.0)),
            PROB_TARGET=prob,
            HAS_WEIGHT=weight is not None,
            SMOOTH=label_smoothing > 0,
            HAS_SCALE=grad_scale is not None,
            WRITE_GRAD=grad is not None,
            ACC_DTYPE=_TORCH_TO_TRITON[acc],
            BLOCK_C=block,
            num_warps=num_warps,
        )
    return loss
