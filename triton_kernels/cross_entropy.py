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

A batch with few, very wide rows (fewer rows than about four programs per SM, at least
SPLIT_MIN_COLUMNS classes) splits each row into column ranges, one program each, in three
launches: per-range stats, then the gradient of each range from the combined stats, then
the loss (see _cross_entropy_split); partial results are combined in a fixed order.

`smoothing` is annotated tl.float64: Triton passes an unannotated Python float as fp32, and 0.1
rounded to fp32 put errors of 1e-9 (relative) into float64 losses on the H200. The kernels cast
it to their accumulation dtype, so lower precisions see the same value as before.
"""

from __future__ import annotations

import itertools
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._launch import acc_dtype, aot_spec, cdiv, device_guard, next_power_of_2, sm_count

__all__ = [
    "cross_entropy_fwd_triton",
    "scale_grad_unless_one_triton",
    "KERNELS",
    "SUPPORTED_DTYPES",
    "aot_compile_specs",
]

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@triton.jit
def _row_stats(
    x_row,
    stride_xc,
    q_row,
    stride_tc,
    weight_ptr,
    stride_w,
    col_begin,
    col_end,
    keep,
    eps_per_class,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Pass 1 over columns [col_begin, col_end) of one row: (m, s, coef) with m the max, s the
    sum of exp(x - m) and coef the sum of the coefficients a_j needed before any gradient
    element can be written (A for probabilities, the weight sum for smoothing)."""
    cols0 = tl.arange(0, BLOCK_C)
    # Online max / sum-exp per lane.
    m_vec = tl.full((BLOCK_C,), float("-inf"), ACC_DTYPE)
    s_vec = tl.zeros((BLOCK_C,), ACC_DTYPE)
    coef_vec = tl.zeros((BLOCK_C,), ACC_DTYPE)
    for start in range(col_begin, col_end, BLOCK_C):
        cols = start + cols0
        mask = cols < col_end
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
            q = tl.load(q_row + cols * stride_tc, mask=mask, other=0.0).to(ACC_DTYPE)
            coef_vec += w * (keep * q + eps_per_class)
        elif SMOOTH:
            coef_vec += w
    m = tl.max(m_vec, axis=0)
    s = tl.sum(s_vec * tl.where(m_vec == m, 1.0, tl.exp(m_vec - m)), axis=0)
    return m, s, tl.sum(coef_vec, axis=0)


@triton.jit
def _row_grad(
    x_row,
    stride_xc,
    q_row,
    stride_tc,
    weight_ptr,
    stride_w,
    g_row,
    stride_gc,
    col_begin,
    col_end,
    m,
    c1,
    scale,
    t,
    valid,
    keep_t,
    keep,
    eps_per_class,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Pass 2 over columns [col_begin, col_end): writes grad_j = e_j * c1 - a_j * scale (when
    WRITE_GRAD) and returns sum_j a_j (x_j - m) over those columns, for the loss."""
    cols0 = tl.arange(0, BLOCK_C)
    dot_vec = tl.zeros((BLOCK_C,), ACC_DTYPE)
    if WRITE_GRAD or PROB_TARGET or SMOOTH:
        for start in range(col_begin, col_end, BLOCK_C):
            cols = start + cols0
            mask = cols < col_end
            x = tl.load(x_row + cols * stride_xc, mask=mask, other=0.0).to(ACC_DTYPE)
            if HAS_WEIGHT:
                w = tl.load(weight_ptr + cols * stride_w, mask=mask, other=0.0).to(ACC_DTYPE)
            else:
                w = tl.where(mask, 1.0, 0.0).to(ACC_DTYPE)
            if PROB_TARGET:
                q = tl.load(q_row + cols * stride_tc, mask=mask, other=0.0).to(ACC_DTYPE)
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
                tl.store(g_row + cols * stride_gc, g.to(g_row.dtype.element_ty), mask=mask)
    return tl.sum(dot_vec, axis=0)


@triton.jit
def _row_target(target_row, weight_ptr, stride_w, ignore_index, C, HAS_WEIGHT: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """(t, valid, t_safe, w_t) for a class-index target: t_safe is an in-bounds column to read."""
    t = tl.load(target_row)
    valid = t != ignore_index
    t_safe = tl.where(valid & (t >= 0) & (t < C), t, 0)
    if HAS_WEIGHT:
        w_t = tl.load(weight_ptr + t_safe * stride_w).to(ACC_DTYPE)
    else:
        w_t = tl.full((), 1.0, ACC_DTYPE)
    return t, valid, t_safe, w_t


@triton.jit
def _row_coefficients(s, coef, scale, valid, w_t, keep, eps_per_class, PROB_TARGET: tl.constexpr, SMOOTH: tl.constexpr):
    """(A, c1, keep_t): A = sum_j a_j, the gradient's softmax factor c1 = A * scale / s, and the
    target's own coefficient keep_t (class indices)."""
    if PROB_TARGET:
        A = coef
        c1 = A * scale / s
        keep_t = keep
    else:
        A = keep * w_t
        if SMOOTH:
            A += eps_per_class * coef
        # Ignored rows: a zero gradient that is NaN where the softmax is (as torch's).
        c1 = tl.where(valid, A * scale / s, 0.0 / s)
        keep_t = tl.where(valid, keep * w_t, 0.0)
    return A, c1, keep_t


@triton.jit
def _row_loss(
    A, log_s, dot, x_t_minus_m, valid, w_t, keep, coef, eps_per_class, PROB_TARGET: tl.constexpr, SMOOTH: tl.constexpr
):
    if PROB_TARGET:
        loss = A * log_s - dot
    else:
        nll = log_s - x_t_minus_m
        if SMOOTH:
            loss = keep * w_t * nll + eps_per_class * (coef * log_s - dot)
        else:
            loss = w_t * nll
        loss = tl.where(valid, loss, 0.0)
    return loss


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
    smoothing: tl.float64,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # One program per row. The split kernels below compute the same with the passes factored
    # into the _row_* helpers; this kernel keeps them inline, because the same helpers here
    # tip ptxas's sm_90 register heuristics into spilling (80 registers) in two variants.
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
        x_t = tl.load(x_row + t_safe * stride_xc).to(ACC_DTYPE)
        # In place, pass 2 stores over the row: every warp must have read x_t before any stores.
        tl.debug_barrier()
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


@triton.jit
def _cross_entropy_fwd_resident_kernel(
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
    smoothing: tl.float64,
    N,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # BLOCK_R rows of at most BLOCK_C columns per program, held in registers: the logits are
    # read once, every load of the tile is in flight together, and exp(x - m) is computed once
    # per element and reused by the gradient (the chunked kernel above computes it three times
    # and reads the row twice). Narrow rows share a program (BLOCK_R > 1), so the tutorial's 3
    # classes do not cost a program each. Rows past N recompute row N - 1 and store nothing.
    first = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_in = first < N
    rows = tl.minimum(first, N - 1)
    cols = tl.arange(0, BLOCK_C)
    col_in = cols < C
    tile_in = col_in[None, :]
    eps = tl.cast(smoothing, ACC_DTYPE)
    eps_per_class = eps / C
    keep = 1.0 - eps
    x = tl.load(
        logits_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xc, mask=tile_in, other=float("-inf")
    ).to(ACC_DTYPE)
    if HAS_WEIGHT:
        w = tl.load(weight_ptr + cols * stride_w, mask=col_in, other=0.0).to(ACC_DTYPE)[None, :]
    else:
        w = tl.where(tile_in, 1.0, 0.0).to(ACC_DTYPE)
    m = tl.max(x, axis=1)
    # -inf entries (and the padding) add exactly 0, also when the whole row is -inf; NaN
    # entries make s NaN.
    e = tl.where(x == float("-inf"), 0.0, tl.exp(x - m[:, None]))
    s = tl.sum(e, axis=1)
    scale = tl.load(grad_scale_ptr).to(ACC_DTYPE) if HAS_SCALE else 1.0

    if PROB_TARGET:
        q = tl.load(target_ptr + rows[:, None] * stride_tr + cols[None, :] * stride_tc, mask=tile_in, other=0.0)
        a = w * (keep * q.to(ACC_DTYPE) + eps_per_class)
        coef = tl.sum(a, axis=1)
        dot = tl.sum(tl.where(tile_in, a * (x - m[:, None]), 0.0), axis=1)
        valid = True
        w_t = 1.0
        x_t_minus_m = 0.0
        A, c1, keep_t = _row_coefficients(s, coef, scale, valid, w_t, keep, eps_per_class, PROB_TARGET, SMOOTH)
        g = e * c1[:, None] - a * scale
    else:
        t, valid, t_safe, w_t = _row_target(
            target_ptr + rows * stride_tr, weight_ptr, stride_w, ignore_index, C, HAS_WEIGHT, ACC_DTYPE
        )
        # x_t from the tile in registers, not a second load: in place (grad is the logits) other
        # warps may already have stored their gradient over x_t (seen on the H200).
        x_t = tl.sum(tl.where(cols[None, :] == t_safe[:, None], x, 0.0), axis=1)
        x_t_minus_m = x_t - m
        if SMOOTH:
            coef = tl.sum(w, axis=1)
            dot = tl.sum(tl.where(tile_in, w * (x - m[:, None]), 0.0), axis=1)
        else:
            coef = 0.0
            dot = 0.0
        A, c1, keep_t = _row_coefficients(s, coef, scale, valid, w_t, keep, eps_per_class, PROB_TARGET, SMOOTH)
        a = tl.where(cols[None, :] == t[:, None], keep_t[:, None], 0.0)
        if SMOOTH:
            a += tl.where(valid[:, None], eps_per_class * w, 0.0)
        # scale is inf when every target is ignored ("mean"): keep it off ignored rows
        g = tl.where(valid[:, None], e * c1[:, None] - a * scale, e * c1[:, None])

    if WRITE_GRAD:
        grad_ptrs = grad_ptr + rows[:, None] * stride_gr + cols[None, :] * stride_gc
        tl.store(grad_ptrs, g.to(grad_ptr.dtype.element_ty), mask=row_in[:, None] & tile_in)
    loss = _row_loss(A, tl.log(s), dot, x_t_minus_m, valid, w_t, keep, coef, eps_per_class, PROB_TARGET, SMOOTH)
    tl.store(loss_ptr + rows, loss, mask=row_in)


# Rows too wide for one program when the batch is small (e.g. 8 rows x 128k classes would use
# 8 SMs): each row is split into column ranges of SPLIT_C, one program each, in three launches
# whose per-row partial results are combined in a fixed order (deterministic):
#   stats: (m_k, s_k, coef_k) per range, and x_t read before any gradient is written;
#   grad:  combine the row's stats, write the range's gradient, keep its partial dot product;
#   loss:  combine once more and write the row's loss.
# stats [N, S, 3], dots [N, S], xt [N] are float32 (float64 for float64) workspaces.


@triton.jit
def _combine_stats(stats_row, num_splits, MAX_SPLITS: tl.constexpr, ACC_DTYPE: tl.constexpr):
    """(m, s, coef) of a whole row from its ranges' partials."""
    k = tl.arange(0, MAX_SPLITS)
    mask = k < num_splits
    m_k = tl.load(stats_row + k * 3, mask=mask, other=float("-inf"))
    s_k = tl.load(stats_row + k * 3 + 1, mask=mask, other=0.0)
    coef = tl.sum(tl.load(stats_row + k * 3 + 2, mask=mask, other=0.0), axis=0)
    m = tl.max(m_k, axis=0)
    s = tl.sum(s_k * tl.where(m_k == m, 1.0, tl.exp(m_k - m)), axis=0)
    return m.to(ACC_DTYPE), s.to(ACC_DTYPE), coef.to(ACC_DTYPE)


@triton.jit
def _cross_entropy_split_stats_kernel(
    logits_ptr,
    stride_xr,
    stride_xc,
    target_ptr,
    stride_tr,
    stride_tc,
    weight_ptr,
    stride_w,
    stats_ptr,
    xt_ptr,
    C,
    ignore_index,
    smoothing: tl.float64,
    split_c,
    num_splits,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    x_row = logits_ptr + row * stride_xr
    q_row = target_ptr + row * stride_tr
    eps = tl.cast(smoothing, ACC_DTYPE)
    eps_per_class = eps / C
    keep = 1.0 - eps
    col_begin = split * split_c
    col_end = tl.minimum(col_begin + split_c, C)
    m, s, coef = _row_stats(
        x_row, stride_xc, q_row, stride_tc, weight_ptr, stride_w, col_begin, col_end, keep, eps_per_class,
        PROB_TARGET, HAS_WEIGHT, SMOOTH, ACC_DTYPE, BLOCK_C,
    )  # fmt: skip
    out = stats_ptr + (row * num_splits + split) * 3
    tl.store(out, m)
    tl.store(out + 1, s)
    tl.store(out + 2, coef)
    if not PROB_TARGET:
        t, valid, t_safe, w_t = _row_target(q_row, weight_ptr, stride_w, ignore_index, C, HAS_WEIGHT, ACC_DTYPE)
        if (t_safe >= col_begin) & (t_safe < col_end):
            tl.store(xt_ptr + row, tl.load(x_row + t_safe * stride_xc).to(ACC_DTYPE))


@triton.jit
def _cross_entropy_split_grad_kernel(
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
    stats_ptr,
    dots_ptr,
    C,
    ignore_index,
    smoothing: tl.float64,
    split_c,
    num_splits,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    MAX_SPLITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1).to(tl.int64)
    x_row = logits_ptr + row * stride_xr
    q_row = target_ptr + row * stride_tr
    eps = tl.cast(smoothing, ACC_DTYPE)
    eps_per_class = eps / C
    keep = 1.0 - eps
    col_begin = split * split_c
    col_end = tl.minimum(col_begin + split_c, C)
    m, s, coef = _combine_stats(stats_ptr + row * num_splits * 3, num_splits, MAX_SPLITS, ACC_DTYPE)
    scale = tl.load(grad_scale_ptr).to(ACC_DTYPE) if HAS_SCALE else 1.0
    t = 0
    valid = True
    w_t = 1.0
    if not PROB_TARGET:
        t, valid, t_safe, w_t = _row_target(q_row, weight_ptr, stride_w, ignore_index, C, HAS_WEIGHT, ACC_DTYPE)
    A, c1, keep_t = _row_coefficients(s, coef, scale, valid, w_t, keep, eps_per_class, PROB_TARGET, SMOOTH)
    dot = _row_grad(
        x_row, stride_xc, q_row, stride_tc, weight_ptr, stride_w, grad_ptr + row * stride_gr, stride_gc,
        col_begin, col_end, m, c1, scale, t, valid, keep_t, keep, eps_per_class,
        PROB_TARGET, HAS_WEIGHT, SMOOTH, WRITE_GRAD, ACC_DTYPE, BLOCK_C,
    )  # fmt: skip
    tl.store(dots_ptr + row * num_splits + split, dot)


@triton.jit
def _cross_entropy_split_loss_kernel(
    target_ptr,
    stride_tr,
    weight_ptr,
    stride_w,
    stats_ptr,
    dots_ptr,
    xt_ptr,
    loss_ptr,
    C,
    ignore_index,
    smoothing: tl.float64,
    num_splits,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    MAX_SPLITS: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    eps = tl.cast(smoothing, ACC_DTYPE)
    eps_per_class = eps / C
    keep = 1.0 - eps
    m, s, coef = _combine_stats(stats_ptr + row * num_splits * 3, num_splits, MAX_SPLITS, ACC_DTYPE)
    k = tl.arange(0, MAX_SPLITS)
    dot = tl.sum(tl.load(dots_ptr + row * num_splits + k, mask=k < num_splits, other=0.0), axis=0).to(ACC_DTYPE)
    valid = True
    w_t = 1.0
    x_t_minus_m = 0.0
    if not PROB_TARGET:
        t, valid, t_safe, w_t = _row_target(
            target_ptr + row * stride_tr, weight_ptr, stride_w, ignore_index, C, HAS_WEIGHT, ACC_DTYPE
        )
        x_t_minus_m = tl.load(xt_ptr + row) - m
    A, c1, keep_t = _row_coefficients(s, coef, 1.0, valid, w_t, keep, eps_per_class, PROB_TARGET, SMOOTH)
    loss = _row_loss(A, tl.log(s), dot, x_t_minus_m, valid, w_t, keep, coef, eps_per_class, PROB_TARGET, SMOOTH)
    tl.store(loss_ptr + row, loss)


@triton.jit
def _scale_grad_unless_one_kernel(grad_ptr, scale_ptr, n, ACC_DTYPE: tl.constexpr, BLOCK: tl.constexpr):
    # Every program reads the scale first: when it is 1 (loss.backward()'s gradient) the grid
    # exits without touching the gradient, so the check costs a launch, not a pass over memory.
    scale = tl.load(scale_ptr).to(ACC_DTYPE)
    if scale != 1.0:
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
        tl.store(grad_ptr + offs, (g * scale).to(grad_ptr.dtype.element_ty), mask=mask)


SCALE_BLOCK = 4096

KERNELS = {
    "_cross_entropy_fwd_kernel": _cross_entropy_fwd_kernel,
    "_cross_entropy_fwd_resident_kernel": _cross_entropy_fwd_resident_kernel,
    "_cross_entropy_split_stats_kernel": _cross_entropy_split_stats_kernel,
    "_cross_entropy_split_grad_kernel": _cross_entropy_split_grad_kernel,
    "_cross_entropy_split_loss_kernel": _cross_entropy_split_loss_kernel,
}

_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64"}


def _block_and_warps(C: int, dtype: torch.dtype) -> tuple[int, int]:
    """Chunk width and warps: up to _MAX_BLOCK_C columns per chunk at 8 lanes per thread
    (wider chunks spill on sm_80, see the AOT test); small chunks under the interpreter so
    the multi-chunk path is what the tests run."""
    if INTERPRET:
        return 32, 1
    block = min(next_power_of_2(max(C, 1)), _MAX_BLOCK_C[dtype])
    return block, max(1, min(8, block // 256))


_MAX_BLOCK_C = {torch.float16: 2048, torch.bfloat16: 2048, torch.float32: 2048, torch.float64: 1024}

# Rows of at most this many columns are held whole in registers by one program
# (_cross_entropy_fwd_resident_kernel): the widest block at which every variant compiles
# without spills for sm_80 and sm_90 (the AOT test compiles each dtype at this width; at twice
# that, 16 warps, the weighted variants spilled 48-656 bytes at 128 registers).
_RESIDENT_MAX_C = {torch.float16: 8192, torch.bfloat16: 8192, torch.float32: 8192, torch.float64: 4096}


# Narrow rows are stacked into tiles of about this many elements per program.
_RESIDENT_TILE = 2048


def _resident_warps(tile: int) -> int:
    # 8 elements per thread (16 at the 16-warp cap): at 16 per thread a 512 x 4 float64 tile
    # of narrow rows spilled (255 registers).
    return max(1, min(16, tile // 256))


def _resident_config(C: int, dtype: torch.dtype) -> Optional[tuple[int, int, int]]:
    """(BLOCK_R, BLOCK_C, num_warps) when rows fit one program's registers, else None (the
    chunked kernel). Under the interpreter rows of up to 32 columns, four per program, so the
    CPU tests run both kernels and tiles with rows past the batch."""
    block_c = next_power_of_2(max(C, 1))
    if INTERPRET:
        return (4, block_c, 1) if C <= 32 else None
    if block_c > _RESIDENT_MAX_C[dtype]:
        return None
    block_r = max(1, _RESIDENT_TILE // block_c)
    return block_r, block_c, _resident_warps(block_r * block_c)


# (variant, constexprs) compiled ahead of time for every dtype; the widest chunk is where
# register pressure peaks, so every variant is compiled at the dtype's largest BLOCK_C.
_AOT_VARIANTS = {
    "index": dict(PROB_TARGET=False, HAS_WEIGHT=False, SMOOTH=False, HAS_SCALE=True, WRITE_GRAD=True),
    "index_weight_smooth": dict(PROB_TARGET=False, HAS_WEIGHT=True, SMOOTH=True, HAS_SCALE=True, WRITE_GRAD=True),
    "prob_weight_smooth": dict(PROB_TARGET=True, HAS_WEIGHT=True, SMOOTH=True, HAS_SCALE=True, WRITE_GRAD=True),
    "index_loss_only": dict(PROB_TARGET=False, HAS_WEIGHT=True, SMOOTH=True, HAS_SCALE=False, WRITE_GRAD=False),
}


def _aot_configs(fn, dtype: torch.dtype) -> list[tuple[dict, int]]:
    """(block sizes, num_warps) compiled ahead of time for one kernel and dtype: the widest
    block, where register pressure peaks; the resident kernel also as a tile of narrow rows."""
    if fn is _cross_entropy_fwd_resident_kernel:
        wide = _RESIDENT_MAX_C[dtype]
        return [
            ({"BLOCK_R": 1, "BLOCK_C": wide}, _resident_warps(wide)),
            ({"BLOCK_R": _RESIDENT_TILE // 4, "BLOCK_C": 4}, _resident_warps(_RESIDENT_TILE)),
        ]
    block = _MAX_BLOCK_C[dtype]
    return [({"BLOCK_C": block}, 1 if fn is _cross_entropy_split_loss_kernel else max(1, min(8, block // 256)))]


def aot_compile_specs(dtypes=SUPPORTED_DTYPES):
    """One dict per kernel x dtype x variant x block configuration for
    triton.compile(ASTSource(...)) (see tests/test_triton_cross_entropy_kernels.py)."""
    seen = set()
    for (name, fn), dtype, (variant, flags) in itertools.product(KERNELS.items(), dtypes, _AOT_VARIANTS.items()):
        for sizes, num_warps in _aot_configs(fn, dtype):
            constexprs = dict(flags, ACC_DTYPE=acc_dtype(dtype))
            constexprs.update(sizes, MAX_SPLITS=MAX_SPLITS)
            constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
            key = (name, dtype, tuple(sorted(constexprs.items())))
            if key in seen:  # a variant whose flags this kernel does not take: compiled already
                continue
            seen.add(key)
            signature = {}
            for arg in fn.arg_names:
                if arg in constexprs:
                    signature[arg] = "constexpr"
                elif arg == "target_ptr":
                    signature[arg] = _PTR[dtype] if flags["PROB_TARGET"] else "*i64"
                elif arg in ("grad_scale_ptr", "loss_ptr", "stats_ptr", "dots_ptr", "xt_ptr"):
                    signature[arg] = "*fp64" if dtype == torch.float64 else "*fp32"
                elif arg.endswith("_ptr"):
                    signature[arg] = _PTR[dtype]
                elif arg == "smoothing":
                    signature[arg] = "fp64"
                else:
                    signature[arg] = "i64"
            yield aot_spec(name, fn, dtype, variant, signature, constexprs, num_warps, sizes, layout="rows")
    for dtype in dtypes:
        signature = {"grad_ptr": _PTR[dtype], "scale_ptr": _PTR[dtype], "n": "i64"}
        signature.update(ACC_DTYPE="constexpr", BLOCK="constexpr")
        constexprs = {"ACC_DTYPE": acc_dtype(dtype), "BLOCK": SCALE_BLOCK}
        yield aot_spec(
            "_scale_grad_unless_one_kernel",
            _scale_grad_unless_one_kernel,
            dtype,
            "scale",
            signature,
            constexprs,
            8,
            {"BLOCK": SCALE_BLOCK},
        )


def scale_grad_unless_one_triton(grad: Tensor, scale: Tensor) -> None:
    """grad *= scale in place unless the one-element `scale` is 1, read on the device (no host
    sync). grad contiguous, scale of grad's dtype (checked by fusedmlp.ops.cross_entropy)."""
    n = grad.numel()
    if n == 0:
        return
    with device_guard(grad):
        _scale_grad_unless_one_kernel[(cdiv(n, SCALE_BLOCK),)](
            grad, scale, n, ACC_DTYPE=acc_dtype(grad.dtype), BLOCK=SCALE_BLOCK, num_warps=8
        )


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
    split_c = _split_columns(N, C, block, logits.device)
    if split_c is not None:
        return _cross_entropy_split(
            logits, target, weight, ignore_index, label_smoothing, grad_scale, grad, loss, block, num_warps, split_c
        )
    resident = _resident_config(C, logits.dtype)
    with device_guard(logits):
        args = (
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
        )
        flags = dict(
            PROB_TARGET=prob,
            HAS_WEIGHT=weight is not None,
            SMOOTH=label_smoothing > 0,
            HAS_SCALE=grad_scale is not None,
            WRITE_GRAD=grad is not None,
            ACC_DTYPE=acc_dtype(logits.dtype),
        )
        if resident is not None:
            block_r, block_c, warps = resident
            _cross_entropy_fwd_resident_kernel[(cdiv(N, block_r),)](
                *args, N, **flags, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps
            )
        else:
            _cross_entropy_fwd_kernel[(N,)](*args, **flags, BLOCK_C=block, num_warps=num_warps)
    return loss


# Split a row across programs only when it is wide and the rows alone leave the GPU idle.
SPLIT_MIN_COLUMNS = 8 * 1024
MAX_SPLITS = 64


def _split_columns(N: int, C: int, block: int, device: torch.device) -> Optional[int]:
    """Columns per program when rows are split (a multiple of `block`), or None for one
    program per row: rows of at least SPLIT_MIN_COLUMNS, split just enough that the grid has
    about four programs per SM (or per 8 under the interpreter)."""
    if C < SPLIT_MIN_COLUMNS:
        return None
    programs = 4 * sm_count(device) if device.type == "cuda" else 8
    if N >= programs:
        return None
    splits = min(MAX_SPLITS, cdiv(programs, N), cdiv(C, block))
    return cdiv(cdiv(C, splits), block) * block if splits > 1 else None


def _cross_entropy_split(
    logits, target, weight, ignore_index, label_smoothing, grad_scale, grad, loss, block, num_warps, split_c
) -> Tensor:
    N, C = logits.shape
    prob = target.dim() == 2
    splits = cdiv(C, split_c)
    acc = loss.dtype
    stats = torch.empty((N, splits, 3), dtype=acc, device=logits.device)
    dots = torch.empty((N, splits), dtype=acc, device=logits.device)
    xt = torch.zeros(N, dtype=acc, device=logits.device)
    flags = dict(PROB_TARGET=prob, HAS_WEIGHT=weight is not None, SMOOTH=label_smoothing > 0)
    acc_type = acc_dtype(acc)
    weight_args = (weight if weight is not None else logits, weight.stride(0) if weight is not None else 0)
    target_args = (target, target.stride(0), target.stride(1) if prob else 0)
    smoothing = float(max(label_smoothing, 0.0))
    with device_guard(logits):
        _cross_entropy_split_stats_kernel[(N, splits)](
            logits, logits.stride(0), logits.stride(1), *target_args, *weight_args, stats, xt,
            C, ignore_index, smoothing, split_c, splits,
            **flags, ACC_DTYPE=acc_type, BLOCK_C=block, num_warps=num_warps,
        )  # fmt: skip
        _cross_entropy_split_grad_kernel[(N, splits)](
            logits, logits.stride(0), logits.stride(1), *target_args, *weight_args,
            grad_scale if grad_scale is not None else loss,
            grad if grad is not None else logits,
            grad.stride(0) if grad is not None else 0,
            grad.stride(1) if grad is not None else 0,
            stats, dots, C, ignore_index, smoothing, split_c, splits,
            **flags, HAS_SCALE=grad_scale is not None, WRITE_GRAD=grad is not None,
            ACC_DTYPE=acc_type, BLOCK_C=block, MAX_SPLITS=MAX_SPLITS, num_warps=num_warps,
        )  # fmt: skip
        _cross_entropy_split_loss_kernel[(N,)](
            target, target.stride(0), *weight_args, stats, dots, xt, loss,
            C, ignore_index, smoothing, splits,
            **flags, ACC_DTYPE=acc_type, MAX_SPLITS=MAX_SPLITS, num_warps=1,
        )  # fmt: skip
    return loss
