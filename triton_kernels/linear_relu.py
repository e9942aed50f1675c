"""Triton kernels for the fused Linear(+ReLU) op, and their launchers.

Forward:   y = act(x @ w.T + b)                 x [M, K], w [N, K] (nn.Linear layout), b [N]
Backward:  g = grad_y * (y > 0)  (relu only; applied while loading grad_y tiles)
           dx = g @ w            [M, K]   _linear_relu_bwd_dx_kernel
           dw = g.T @ x          [N, K]   _linear_relu_bwd_dw_db_kernel
           db = g.sum(0)         [N]      same kernel, programs with K-tile 0
When the dw/db tile grid is too small to fill the GPU (narrow layers, large batch), the
M rows are split across programs instead: _linear_relu_bwd_dw_db_split_kernel writes
per-range partial sums and _sum_split_partials_kernel adds them in a fixed order (see
_dw_db_split_plan).

Only kernels and launchers live here: autograd and torch.library registration are done in
the ``fusedmlp`` package. Launchers accept operands with any strides (including stride 0
for an expanded grad_output) and pass the strides to the kernels instead of copying.

Under ``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run on CPU
tensors, fp64 included; each autotuner then has one small config, because benchmarking
configs in the interpreter costs time and measures nothing.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._launch import acc_dtype, aot_spec, cdiv, device_guard, sm_count

__all__ = [
    "linear_relu_fwd_triton",
    "linear_relu_bwd_triton",
    "KERNELS",
    "SUPPORTED_DTYPES",
    "aot_compile_specs",
]

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# ---------------------------------------------------------------------------------------
# Autotune configs.
#
# Every kernel is a GEMM with an output tile of (rows x cols) and a loop over a reduction
# dim; the generic tuples below are mapped onto each kernel's own parameter names (the
# kernels name tiles after the layer dims M, N, K, so that e.g. the dx kernel tiles
# M x K and reduces over N).
#
# Two families, picked per dtype by the autotuner's early_config_prune:
#  * "tensor_core" (fp16/bf16): tutorial-03 style tiles. Tiles with rows >= 64 and
#    4+ warps are what Triton lowers to wgmma on sm_90 (checked by the AOT test); the
#    small tile keeps tiny MLP layers (width 20-30) from wasting most of a 128 tile.
#  * "fma" (fp32 with input_precision="ieee", fp64): these dots run without tf32 tensor
#    cores, and 8-byte fp64 accumulators double register use, so large tiles would spill.
# The first config of each family is the largest (the AOT test compiles every flag variant
# and operand layout with it). Register budgets are tight: the AOT test found spills with
# 128x128x64 (a stride-0 grad_output tile is loaded through registers, one pointer per
# element, for every pipeline stage), with fma 64x64 at 4 warps, and with 3 stages there;
# with triton 3.6, 64x64x32 in 4 stages spilled 12 bytes on sm_80 (64x64x64 in 3 does not).
# (rows, cols, red, group, num_warps, num_stages)
_GPU_TILES = {
    "tensor_core": [
        (128, 128, 32, 8, 8, 4),
        (128, 64, 32, 8, 4, 4),
        (64, 128, 32, 8, 4, 4),
        (64, 64, 64, 8, 4, 3),
        (32, 32, 32, 8, 2, 4),
    ],
    "fma": [
        (64, 64, 16, 8, 8, 2),
        (32, 64, 32, 8, 4, 3),
        (32, 32, 16, 8, 2, 3),
    ],
}
# Blocks of 16 keep the interpreter fast and let small test shapes hit BLOCK-1/BLOCK/BLOCK+1.
_INTERPRET_TILE = (16, 16, 16, 2, 1, 1)

_DTYPE_FAMILY = {
    torch.float16: "tensor_core",
    torch.bfloat16: "tensor_core",
    torch.float32: "fma",
    torch.float64: "fma",
}

# Names of each kernel's (rows, cols, red, group) constexprs.
_TILE_NAMES = {
    "_linear_relu_fwd_kernel": ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"),
    "_linear_relu_bwd_dx_kernel": ("BLOCK_M", "BLOCK_K", "BLOCK_N", "GROUP_M"),
    "_linear_relu_bwd_dw_db_kernel": ("BLOCK_N", "BLOCK_K", "BLOCK_M", "GROUP_N"),
    "_linear_relu_bwd_dw_db_split_kernel": ("BLOCK_N", "BLOCK_K", "BLOCK_M", "GROUP_N"),
}

# _sum_split_partials_kernel is a memory-bound elementwise pass and is not autotuned: 2
# elements per thread, times UNROLL splits loaded per loop trip so that the loads' latencies
# overlap (the pass would otherwise wait out one memory round trip per split).
_SUM_SPLIT_PARTIALS_CONFIG = triton.Config({"BLOCK": 256, "UNROLL": 16}, num_warps=4, num_stages=1)


def _make_config(kernel_name: str, tile: tuple) -> triton.Config:
    rows, cols, red, group, num_warps, num_stages = tile
    names = _TILE_NAMES[kernel_name]
    return triton.Config(dict(zip(names, (rows, cols, red, group))), num_warps=num_warps, num_stages=num_stages)


def _config_key(cfg: triton.Config) -> tuple:
    return (tuple(sorted(cfg.kwargs.items())), cfg.num_warps, cfg.num_stages)


def gpu_configs(kernel_name: str, dtype: torch.dtype) -> list[triton.Config]:
    """The GPU autotune configs `kernel_name` may use for `dtype` (after pruning)."""
    return [_make_config(kernel_name, t) for t in _GPU_TILES[_DTYPE_FAMILY[dtype]]]


def _autotune_configs(kernel_name: str) -> list[triton.Config]:
    if INTERPRET:
        return [_make_config(kernel_name, _INTERPRET_TILE)]
    seen, out = set(), []
    for tiles in _GPU_TILES.values():
        for t in tiles:
            cfg = _make_config(kernel_name, t)
            if _config_key(cfg) not in seen:
                seen.add(_config_key(cfg))
                out.append(cfg)
    return out


def _make_prune(kernel_name: str, dtype_arg: str):
    def prune(configs, named_args, **kwargs):
        dtype = named_args[dtype_arg].dtype
        wanted = {_config_key(c) for c in gpu_configs(kernel_name, dtype)}
        kept = [c for c in configs if _config_key(c) in wanted]
        return kept or list(configs)

    return {"early_config_prune": prune}


# ---------------------------------------------------------------------------------------
# Kernels.


@triton.jit
def _grouped_tile(pid, num_pid_rows, num_pid_cols, GROUP: tl.constexpr):
    # Tutorial 03's grouped ordering: GROUP consecutive row-tiles walk the column tiles
    # together, so the operand panels they share stay in L2.
    num_pid_in_group = GROUP * num_pid_cols
    group_id = pid // num_pid_in_group
    first_pid_row = group_id * GROUP
    group_size = tl.minimum(num_pid_rows - first_pid_row, GROUP)
    pid_row = first_pid_row + ((pid % num_pid_in_group) % group_size)
    pid_col = (pid % num_pid_in_group) // group_size
    return pid_row, pid_col


@triton.jit
def _linear_relu_fwd_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    y_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_b,
    stride_ym,
    stride_yn,
    HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # int64 pid makes every offset below int64: M * stride can pass 2**31.
    pid = tl.program_id(0).to(tl.int64)
    pid_m, pid_n = _grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    # Strides may arrive as constexpr 1 (Triton specializes them); tl.cast handles both.
    stride_xk = tl.cast(stride_xk, tl.int64)
    stride_wk = tl.cast(stride_wk, tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Wrapping the row/col offsets (tutorial 03) keeps the loads in bounds without a row
    # mask; the wrapped rows are never stored.
    offs_m_ld = offs_m % M
    offs_n_ld = offs_n % N
    x_ptrs = x_ptr + offs_m_ld[:, None] * stride_xm + offs_k[None, :] * stride_xk
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_n_ld[None, :] * stride_wn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, K, BLOCK_K):
        k_in = (k0 + offs_k) < K
        x = tl.load(x_ptrs, mask=k_in[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_in[:, None], other=0.0)
        # "ieee": for fp32 this forbids TF32, whose 10-bit mantissa would not match
        # torch's fp32 matmul (TF32 is off in torch by default). For fp16/bf16/fp64 it is
        # the only precision anyway. out_dtype: Triton before 3.8 defaults it to fp32 and then
        # rejects the fp64 accumulator (seen with triton 3.6 on the H200).
        acc = tl.dot(x, w, acc, input_precision="ieee", out_dtype=ACC_DTYPE)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # Epilogue on the fp32/fp64 accumulator, before rounding to the output dtype.
    mask_n = offs_n < N
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n * stride_b, mask=mask_n, other=0.0)
        acc += bias.to(ACC_DTYPE)[None, :]
    if RELU:
        # where(acc < 0) rather than maximum: torch.relu keeps NaN, tl.maximum drops it.
        acc = tl.where(acc < 0, 0.0, acc)

    y_ptrs = y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    mask = (offs_m[:, None] < M) & mask_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _linear_relu_bwd_dx_kernel(
    g_ptr,
    y_ptr,
    w_ptr,
    dx_ptr,
    M,
    N,
    K,
    stride_gm,
    stride_gn,
    stride_ym,
    stride_yn,
    stride_wn,
    stride_wk,
    stride_dxm,
    stride_dxk,
    RELU: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_N: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # dx[M, K] = (grad_y * relu'(y))[M, N] @ w[N, K]; output tile M x K, reduction over N.
    pid = tl.program_id(0).to(tl.int64)
    pid_m, pid_k = _grouped_tile(pid, tl.cdiv(M, BLOCK_M), tl.cdiv(K, BLOCK_K), GROUP_M)
    stride_gn = tl.cast(stride_gn, tl.int64)
    stride_yn = tl.cast(stride_yn, tl.int64)
    stride_wn = tl.cast(stride_wn, tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_n = tl.arange(0, BLOCK_N)
    offs_m_ld = offs_m % M
    offs_k_ld = offs_k % K
    g_ptrs = g_ptr + offs_m_ld[:, None] * stride_gm + offs_n[None, :] * stride_gn
    y_ptrs = y_ptr + offs_m_ld[:, None] * stride_ym + offs_n[None, :] * stride_yn
    w_ptrs = w_ptr + offs_n[:, None] * stride_wn + offs_k_ld[None, :] * stride_wk

    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC_DTYPE)
    for n0 in range(0, N, BLOCK_N):
        n_in = (n0 + offs_n) < N
        g = tl.load(g_ptrs, mask=n_in[None, :], other=0.0)
        if RELU:
            # The ReLU mask is applied to the tile in registers, so no masked copy of
            # grad_output is ever written. `y <= 0` (not `!(y > 0)`) is torch's
            # threshold_backward: a NaN output passes its gradient through.
            y = tl.load(y_ptrs, mask=n_in[None, :], other=0.0)
            g = tl.where(y <= 0, 0.0, g)
        w = tl.load(w_ptrs, mask=n_in[:, None], other=0.0)
        acc = tl.dot(g, w, acc, input_precision="ieee", out_dtype=ACC_DTYPE)  # ieee: see the forward kernel
        g_ptrs += BLOCK_N * stride_gn
        y_ptrs += BLOCK_N * stride_yn
        w_ptrs += BLOCK_N * stride_wn

    dx_ptrs = dx_ptr + offs_m[:, None] * stride_dxm + offs_k[None, :] * stride_dxk
    mask = (offs_m[:, None] < M) & (offs_k[None, :] < K)
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dw_db_tile_sums(
    g_ptr,
    y_ptr,
    x_ptr,
    pid_n,
    pid_k,
    m_start,
    num_rows,
    N,
    K,
    stride_gm,
    stride_gn,
    stride_ym,
    stride_yn,
    stride_xm,
    stride_xk,
    RELU: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    # The dw tile [BLOCK_N, BLOCK_K] = g.T @ x and the db tile [BLOCK_N] = g.sum(0) of
    # output tile (pid_n, pid_k), summed over the rows m_start <= m < m_start + num_rows in
    # ascending BLOCK_M steps. db is the same reduction over the same g tiles, so the programs in
    # K-tile column 0 sum it too: grad_output is read once for dw and db.
    stride_gm = tl.cast(stride_gm, tl.int64)
    stride_ym = tl.cast(stride_ym, tl.int64)
    stride_xm = tl.cast(stride_xm, tl.int64)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    rows = m_start + offs_m
    offs_n_ld = offs_n % N
    # g.T tile [BLOCK_N, BLOCK_M] read straight from grad_output through its strides.
    g_ptrs = g_ptr + offs_n_ld[:, None] * stride_gn + rows[None, :] * stride_gm
    y_ptrs = y_ptr + offs_n_ld[:, None] * stride_yn + rows[None, :] * stride_ym
    if COMPUTE_DW:
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        offs_k_ld = offs_k % K
        x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k_ld[None, :] * stride_xk

    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=ACC_DTYPE)
    db_acc = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
    for m0 in range(0, num_rows, BLOCK_M):
        m_in = (m0 + offs_m) < num_rows
        g = tl.load(g_ptrs, mask=m_in[None, :], other=0.0)
        if RELU:
            # Mask in registers, torch's threshold_backward semantics (see dx kernel).
            y = tl.load(y_ptrs, mask=m_in[None, :], other=0.0)
            g = tl.where(y <= 0, 0.0, g)
        if COMPUTE_DW:
            x = tl.load(x_ptrs, mask=m_in[:, None], other=0.0)
            acc = tl.dot(g, x, acc, input_precision="ieee", out_dtype=ACC_DTYPE)  # ieee: see the forward kernel
            x_ptrs += BLOCK_M * stride_xm
        if COMPUTE_DB:
            # Runtime branch, so only the K-tile-0 programs pay for the row sums.
            if pid_k == 0:
                db_acc += tl.sum(g.to(ACC_DTYPE), axis=1)
        g_ptrs += BLOCK_M * stride_gm
        y_ptrs += BLOCK_M * stride_ym
    return acc, db_acc


@triton.jit
def _linear_relu_bwd_dw_db_kernel(
    g_ptr,
    y_ptr,
    x_ptr,
    dw_ptr,
    db_ptr,
    M,
    N,
    K,
    stride_gm,
    stride_gn,
    stride_ym,
    stride_yn,
    stride_xm,
    stride_xk,
    stride_dwn,
    stride_dwk,
    stride_db,
    RELU: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    GROUP_N: tl.constexpr,
):
    # dw[N, K] = g.T[N, M] @ x[M, K]; output tile N x K, reduction over all M rows.
    # db[N] = sum_m g[m, n], by the programs in K-tile column 0: every db element has
    # exactly one owner (deterministic, no atomics).
    # Without COMPUTE_DW (weight grad not needed, or K == 0) the grid is one program per
    # N-tile and only db is computed.
    # When this grid is too small to fill the GPU, the launcher uses the split-M kernel
    # below instead.
    pid = tl.program_id(0).to(tl.int64)
    if COMPUTE_DW:
        num_pid_k = tl.cdiv(K, BLOCK_K)
    else:
        num_pid_k = 1
    pid_n, pid_k = _grouped_tile(pid, tl.cdiv(N, BLOCK_N), num_pid_k, GROUP_N)
    acc, db_acc = _dw_db_tile_sums(
        g_ptr, y_ptr, x_ptr, pid_n, pid_k, 0, M, N, K,
        stride_gm, stride_gn, stride_ym, stride_yn, stride_xm, stride_xk,
        RELU, COMPUTE_DW, COMPUTE_DB, ACC_DTYPE, BLOCK_N, BLOCK_K, BLOCK_M,
    )  # fmt: skip

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    if COMPUTE_DW:
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        dw_ptrs = dw_ptr + offs_n[:, None] * stride_dwn + offs_k[None, :] * stride_dwk
        mask = mask_n[:, None] & (offs_k[None, :] < K)
        tl.store(dw_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=mask)
    if COMPUTE_DB:
        tl.store(db_ptr + offs_n * stride_db, db_acc.to(db_ptr.dtype.element_ty), mask=mask_n & (pid_k == 0))


@triton.jit
def _linear_relu_bwd_dw_db_split_kernel(
    g_ptr,
    y_ptr,
    x_ptr,
    dw_part_ptr,
    db_part_ptr,
    M,
    N,
    K,
    rows_per_split,
    stride_gm,
    stride_gn,
    stride_ym,
    stride_yn,
    stride_xm,
    stride_xk,
    stride_dwp_split,
    stride_dwp_n,
    stride_dwp_k,
    stride_dbp_split,
    stride_dbp_n,
    RELU: tl.constexpr,
    COMPUTE_DW: tl.constexpr,
    COMPUTE_DB: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    GROUP_N: tl.constexpr,
):
    # The dw/db kernel above with the M reduction split into contiguous row ranges of
    # rows_per_split (a multiple of BLOCK_M): for narrow layers one program per output tile
    # would walk all M rows while most SMs idle. Program (tile, split) writes its partial
    # sums, unrounded, to row `split` of the ACC_DTYPE workspaces dw_part [splits, N, K] and
    # db_part [splits, N]; _sum_split_partials_kernel then adds the splits in a fixed order.
    # The program id is split up in int32 (ptxas calls a subroutine for int64 division,
    # whose stack frame showed up as spills); the tile indices are then widened so that every
    # offset is int64 as in the other kernels. Row indices stay int32: the launcher splits
    # only M < 2**31.
    pid = tl.program_id(0)
    if COMPUTE_DW:
        num_pid_k = tl.cdiv(K, BLOCK_K)
    else:
        num_pid_k = 1
    num_pid_n = tl.cdiv(N, BLOCK_N)
    # Tile index fastest: programs launched together share the rows of one split.
    num_tiles = num_pid_n * num_pid_k
    pid_n, pid_k = _grouped_tile(pid % num_tiles, num_pid_n, num_pid_k, GROUP_N)
    pid_n = pid_n.to(tl.int64)
    pid_k = pid_k.to(tl.int64)
    split = pid // num_tiles
    m_start = split * rows_per_split
    num_rows = tl.minimum(M - m_start, rows_per_split)
    acc, db_acc = _dw_db_tile_sums(
        g_ptr, y_ptr, x_ptr, pid_n, pid_k, m_start, num_rows, N, K,
        stride_gm, stride_gn, stride_ym, stride_yn, stride_xm, stride_xk,
        RELU, COMPUTE_DW, COMPUTE_DB, ACC_DTYPE, BLOCK_N, BLOCK_K, BLOCK_M,
    )  # fmt: skip

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    if COMPUTE_DW:
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        dw_ptrs = dw_part_ptr + split.to(tl.int64) * stride_dwp_split
        dw_ptrs += offs_n[:, None] * stride_dwp_n + offs_k[None, :] * stride_dwp_k
        mask = mask_n[:, None] & (offs_k[None, :] < K)
        tl.store(dw_ptrs, acc, mask=mask)
    if COMPUTE_DB:
        db_ptrs = db_part_ptr + split.to(tl.int64) * stride_dbp_split + offs_n * stride_dbp_n
        tl.store(db_ptrs, db_acc, mask=mask_n & (pid_k == 0))


@triton.jit
def _sum_split_partials_kernel(
    part_ptr,
    out_ptr,
    numel,
    splits,
    stride_part_split,
    BLOCK: tl.constexpr,
    UNROLL: tl.constexpr,
):
    # out[i] = part[0, i] + part[1, i] + ... + part[splits - 1, i], added in that order in
    # the accumulator dtype and rounded once: the same bits on every run (no atomics).
    # `part` is [splits, numel] with unit stride along numel; `out` is contiguous.
    # UNROLL loads per loop trip are independent, so their memory latencies overlap; the
    # masked tail loads add +0.0, which leaves every sum unchanged (acc starts at +0.0 and
    # so is never -0.0).
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    stride_part_split = tl.cast(stride_part_split, tl.int64)
    acc = tl.zeros((BLOCK,), dtype=part_ptr.dtype.element_ty)
    for s0 in range(0, splits, UNROLL):
        for u in tl.static_range(UNROLL):
            in_range = mask & (s0 + u < splits)
            acc += tl.load(part_ptr + (s0 + u) * stride_part_split + offs, mask=in_range, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# Autotuned entry points. Kept separate from the raw JIT functions so the AOT test can
# compile the latter directly.
_linear_relu_fwd = triton.autotune(
    configs=_autotune_configs("_linear_relu_fwd_kernel"),
    key=["M", "N", "K"],
    prune_configs_by=_make_prune("_linear_relu_fwd_kernel", "x_ptr"),
)(_linear_relu_fwd_kernel)
_linear_relu_bwd_dx = triton.autotune(
    configs=_autotune_configs("_linear_relu_bwd_dx_kernel"),
    key=["M", "N", "K"],
    prune_configs_by=_make_prune("_linear_relu_bwd_dx_kernel", "g_ptr"),
)(_linear_relu_bwd_dx_kernel)
_linear_relu_bwd_dw_db = triton.autotune(
    configs=_autotune_configs("_linear_relu_bwd_dw_db_kernel"),
    key=["M", "N", "K"],
    prune_configs_by=_make_prune("_linear_relu_bwd_dw_db_kernel", "g_ptr"),
)(_linear_relu_bwd_dw_db_kernel)
_linear_relu_bwd_dw_db_split = triton.autotune(
    configs=_autotune_configs("_linear_relu_bwd_dw_db_split_kernel"),
    key=["M", "N", "K", "rows_per_split"],
    prune_configs_by=_make_prune("_linear_relu_bwd_dw_db_split_kernel", "g_ptr"),
)(_linear_relu_bwd_dw_db_split_kernel)


# ---------------------------------------------------------------------------------------
# AOT description: every kernel, its argument kinds and its constexpr variants, so a test
# can compile each kernel x config x dtype with triton.compile(ASTSource(...)).
#
# Argument kinds: "ptr" (element type = the dtype under test), "int" (size or stride).

KERNELS = {
    "_linear_relu_fwd_kernel": {
        "fn": _linear_relu_fwd_kernel,
        "args": {
            "x_ptr": "ptr",
            "w_ptr": "ptr",
            "b_ptr": "ptr",
            "y_ptr": "ptr",
            "M": "int",
            "N": "int",
            "K": "int",
            "stride_xm": "int",
            "stride_xk": "int",
            "stride_wn": "int",
            "stride_wk": "int",
            "stride_b": "int",
            "stride_ym": "int",
            "stride_yn": "int",
        },
        # Launch-time flag combinations; "full" (the most work) is compiled for every config.
        "variants": {"full": {"HAS_BIAS": True, "RELU": True}, "plain": {"HAS_BIAS": False, "RELU": False}},
        # Operand layouts, as the strides that are 1 in them: Triton specializes an int
        # argument equal to 1 to a constexpr, which decides which dim loads vectorize along.
        # "transposed": x and w are column-major views (x = a.t(), w = w_t.t()).
        "layouts": {
            "contiguous": ("stride_xk", "stride_wk", "stride_b", "stride_yn"),
            "transposed": ("stride_xm", "stride_wn", "stride_b", "stride_yn"),
        },
    },
    "_linear_relu_bwd_dx_kernel": {
        "fn": _linear_relu_bwd_dx_kernel,
        "args": {
            "g_ptr": "ptr",
            "y_ptr": "ptr",
            "w_ptr": "ptr",
            "dx_ptr": "ptr",
            "M": "int",
            "N": "int",
            "K": "int",
            "stride_gm": "int",
            "stride_gn": "int",
            "stride_ym": "int",
            "stride_yn": "int",
            "stride_wn": "int",
            "stride_wk": "int",
            "stride_dxm": "int",
            "stride_dxk": "int",
        },
        "variants": {"full": {"RELU": True}, "plain": {"RELU": False}},
        # "grad_expanded": grad_output from .sum(), strides (0, 0).
        "layouts": {
            "contiguous": ("stride_gn", "stride_yn", "stride_wk", "stride_dxk"),
            "transposed": ("stride_gn", "stride_yn", "stride_wn", "stride_dxk"),
            "grad_expanded": ("stride_yn", "stride_wk", "stride_dxk"),
        },
    },
    "_linear_relu_bwd_dw_db_kernel": {
        "fn": _linear_relu_bwd_dw_db_kernel,
        "args": {
            "g_ptr": "ptr",
            "y_ptr": "ptr",
            "x_ptr": "ptr",
            "dw_ptr": "ptr",
            "db_ptr": "ptr",
            "M": "int",
            "N": "int",
            "K": "int",
            "stride_gm": "int",
            "stride_gn": "int",
            "stride_ym": "int",
            "stride_yn": "int",
            "stride_xm": "int",
            "stride_xk": "int",
            "stride_dwn": "int",
            "stride_dwk": "int",
            "stride_db": "int",
        },
        "variants": {
            "full": {"RELU": True, "COMPUTE_DW": True, "COMPUTE_DB": True},
            "plain": {"RELU": False, "COMPUTE_DW": True, "COMPUTE_DB": False},
            "db_only": {"RELU": True, "COMPUTE_DW": False, "COMPUTE_DB": True},
        },
        "layouts": {
            "contiguous": ("stride_gn", "stride_yn", "stride_xk", "stride_dwk", "stride_db"),
            "transposed": ("stride_gn", "stride_yn", "stride_xm", "stride_dwk", "stride_db"),
            "grad_expanded": ("stride_yn", "stride_xk", "stride_dwk", "stride_db"),
        },
    },
    "_linear_relu_bwd_dw_db_split_kernel": {
        "fn": _linear_relu_bwd_dw_db_split_kernel,
        "args": {
            "g_ptr": "ptr",
            "y_ptr": "ptr",
            "x_ptr": "ptr",
            "dw_part_ptr": "acc_ptr",
            "db_part_ptr": "acc_ptr",
            "M": "int",
            "N": "int",
            "K": "int",
            "rows_per_split": "int",
            "stride_gm": "int",
            "stride_gn": "int",
            "stride_ym": "int",
            "stride_yn": "int",
            "stride_xm": "int",
            "stride_xk": "int",
            "stride_dwp_split": "int",
            "stride_dwp_n": "int",
            "stride_dwp_k": "int",
            "stride_dbp_split": "int",
            "stride_dbp_n": "int",
        },
        "variants": {
            "full": {"RELU": True, "COMPUTE_DW": True, "COMPUTE_DB": True},
            "plain": {"RELU": False, "COMPUTE_DW": True, "COMPUTE_DB": False},
            "db_only": {"RELU": True, "COMPUTE_DW": False, "COMPUTE_DB": True},
        },
        # The workspaces are always contiguous.
        "layouts": {
            "contiguous": ("stride_gn", "stride_yn", "stride_xk", "stride_dwp_k", "stride_dbp_n"),
            "transposed": ("stride_gn", "stride_yn", "stride_xm", "stride_dwp_k", "stride_dbp_n"),
            "grad_expanded": ("stride_yn", "stride_xk", "stride_dwp_k", "stride_dbp_n"),
        },
    },
    "_sum_split_partials_kernel": {
        "fn": _sum_split_partials_kernel,
        "args": {
            "part_ptr": "acc_ptr",
            "out_ptr": "ptr",
            "numel": "int",
            "splits": "int",
            "stride_part_split": "int",
        },
        # Not autotuned: compiled with the one config the launcher uses.
        "config": _SUM_SPLIT_PARTIALS_CONFIG,
        "variants": {"full": {}},
        "layouts": {"contiguous": ()},
    },
}

_TRITON_PTR_TYPE = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64"}


def _aot_spec(name: str, dtype: torch.dtype, cfg: triton.Config, variant: str, layout: str) -> dict:
    spec = KERNELS[name]
    fn = spec["fn"]
    constexprs = dict(spec["variants"][variant])
    if "ACC_DTYPE" in fn.arg_names:
        constexprs["ACC_DTYPE"] = acc_dtype(dtype)
    constexprs.update(cfg.kwargs)
    unit_strides = spec["layouts"][layout]
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        kind = spec["args"].get(arg)
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif kind in ("ptr", "acc_ptr"):
            # "acc_ptr": a workspace in the accumulation dtype (fp32, or fp64 for fp64).
            signature[arg] = _TRITON_PTR_TYPE[dtype if kind == "ptr" else _acc_torch_dtype(dtype)]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif kind != "int":
            raise KeyError(f"{name}: no AOT kind for argument {arg!r}")
        elif arg in unit_strides:
            signature[arg] = "constexpr"
            constexprs[arg] = 1
        else:
            # Sizes and other strides as a launch with multiple-of-16 values (or stride 0)
            # specializes them.
            signature[arg] = "i32"
            attrs[(i,)] = [["tt.divisibility", 16]]
    return aot_spec(
        name,
        fn,
        dtype,
        variant,
        signature,
        constexprs,
        cfg.num_warps,
        dict(cfg.kwargs),
        layout=layout,
        attrs=attrs,
        num_stages=cfg.num_stages,
    )


def aot_compile_specs(dtypes=SUPPORTED_DTYPES):
    """Yield one dict per kernel x dtype x GPU autotune config (x variant x layout) to compile.

    Every config is compiled with the "full" flag variant and contiguous operands; the other
    flag variants and operand layouts only with the largest config of each dtype, where
    register pressure peaks.

    Each dict has: kernel, fn (a JITFunction only when TRITON_INTERPRET is unset), dtype
    (str), variant, layout, signature ({arg: triton type}), constexprs, attrs, num_warps,
    num_stages, config (tile kwargs): what triton.compile(ASTSource(...)) needs.
    """
    for name, spec in KERNELS.items():
        for dtype in dtypes:
            cfgs = [spec["config"]] if "config" in spec else gpu_configs(name, dtype)
            for cfg in cfgs:
                yield _aot_spec(name, dtype, cfg, "full", "contiguous")
            for variant in spec["variants"]:
                if variant != "full":
                    yield _aot_spec(name, dtype, cfgs[0], variant, "contiguous")
            for layout in spec["layouts"]:
                if layout != "contiguous":
                    yield _aot_spec(name, dtype, cfgs[0], "full", layout)


# ---------------------------------------------------------------------------------------
# Launchers.


def _tile_grid(rows: int, cols: int, row_block: str, col_block: Optional[str], splits: int = 1):
    """1-D launch grid over (rows x cols) output tiles (times `splits` row ranges of the
    reduction), sized by the chosen config."""

    def grid(meta):
        n = cdiv(rows, meta[row_block])
        return ((n * cdiv(cols, meta[col_block]) if col_block else n) * splits,)

    return grid


def _acc_torch_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------
# Splitting the dw/db reduction over M.
#
# The dw/db grid has one program per (N-tile, K-tile) output tile, and each walks all M
# rows. For narrow layers (e.g. 30 x 50: one tile) at large batch that is one program doing
# all the work while every other SM idles. When the tile grid is smaller than the GPU, the
# M rows are split into contiguous ranges so that tiles x splits programs fill the SMs a few
# times over; the per-range partial sums go to an fp32 (fp64 for fp64) workspace and a
# second pass adds them in a fixed order. The plan depends only on the shapes, the dtype
# (whose autotune family sets the largest tile) and the device's SM count -- never on
# timing -- so a given problem on a given GPU is always summed in the same order, and the
# result is bitwise the same from run to run (for the config the autotuner picked).

# Aim for this many dw/db programs per SM.
_SPLIT_PROGRAMS_PER_SM = 4
# Each range covers at least this many row blocks, so that a program's work outweighs its
# share of the workspace round trip.
_SPLIT_MIN_ROW_BLOCKS = 8
# Caps the workspace at _SPLIT_MAX x N x K accumulators and the summing pass's loop.
_SPLIT_MAX = 256
# The interpreter has no SMs; planning for a small GPU keeps the split path reachable there.
_INTERPRET_SM_COUNT = 8
# Range lengths are multiples of every BLOCK_M the autotuner may pick, so each program's
# rows are whole blocks except at the end of M.
_SPLIT_ROW_QUANTUM = math.lcm(
    *(cfg.kwargs["BLOCK_M"] for cfg in _autotune_configs("_linear_relu_bwd_dw_db_split_kernel"))
)


def _sm_count(device: torch.device) -> int:
    return _INTERPRET_SM_COUNT if INTERPRET else sm_count(device)


def _largest_dw_tile(dtype: torch.dtype) -> dict:
    """BLOCK_N, BLOCK_K, ... of the largest dw/db tile the autotuner may pick for `dtype`:
    the one that makes the fewest tiles."""
    name = "_linear_relu_bwd_dw_db_split_kernel"
    return (_autotune_configs(name) if INTERPRET else gpu_configs(name, dtype))[0].kwargs


def _dw_db_split_plan(
    M: int, N: int, K: int, compute_dw: bool, dtype: torch.dtype, device: torch.device
) -> tuple[int, int]:
    """(splits, rows_per_split) for the dw/db reduction over M rows; (1, M) means no split."""
    largest = _largest_dw_tile(dtype)
    tiles = cdiv(N, largest["BLOCK_N"]) * (cdiv(K, largest["BLOCK_K"]) if compute_dw else 1)
    sm_count = _sm_count(device)
    if tiles >= sm_count or M >= 2**31:
        # The grid already covers the GPU, or M is too long for the split kernel's int32 rows.
        return 1, M
    splits = min(
        _SPLIT_PROGRAMS_PER_SM * sm_count // tiles,
        M // (_SPLIT_MIN_ROW_BLOCKS * _SPLIT_ROW_QUANTUM),
        _SPLIT_MAX,
    )
    if splits < 2:
        return 1, M
    rows_per_split = cdiv(cdiv(M, splits), _SPLIT_ROW_QUANTUM) * _SPLIT_ROW_QUANTUM
    # Rounding the ranges up to whole quanta may leave fewer, never empty, ranges.
    return cdiv(M, rows_per_split), rows_per_split


def _sum_split_partials(partials: Tensor, out: Tensor) -> None:
    """out (contiguous, any dtype) = partials [splits, out.numel()].sum(0), in split order."""
    splits, numel = partials.shape
    cfg = _SUM_SPLIT_PARTIALS_CONFIG
    _sum_split_partials_kernel[(cdiv(numel, cfg.kwargs["BLOCK"]),)](
        partials,
        out,
        numel,
        splits,
        partials.stride(0),
        **cfg.kwargs,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def _dw_db_whole_m(
    grad_output: Tensor,
    y: Tensor,
    x: Tensor,
    grad_weight: Tensor,
    grad_bias: Tensor,
    K: int,
    relu: bool,
    compute_dw: bool,
    compute_db: bool,
) -> None:
    """grad_weight / grad_bias with one program per output tile, each summing all M rows."""
    M, N = grad_output.shape
    # Placeholders for the outputs the constexpr flags leave unused.
    dw = grad_weight if compute_dw else grad_output
    db = grad_bias if compute_db else grad_output
    grid = _tile_grid(N, K, "BLOCK_N", "BLOCK_K" if compute_dw else None)
    _linear_relu_bwd_dw_db[grid](
        grad_output,
        y,
        x,
        dw,
        db,
        M,
        N,
        K,
        grad_output.stride(0),
        grad_output.stride(1),
        y.stride(0),
        y.stride(1),
        x.stride(0),
        x.stride(1),
        dw.stride(0),
        dw.stride(1),
        db.stride(0),
        RELU=relu,
        COMPUTE_DW=compute_dw,
        COMPUTE_DB=compute_db,
        ACC_DTYPE=acc_dtype(grad_output.dtype),
    )


def _dw_db_split_m(
    grad_output: Tensor,
    y: Tensor,
    x: Tensor,
    grad_weight: Tensor,
    grad_bias: Tensor,
    K: int,
    relu: bool,
    compute_dw: bool,
    compute_db: bool,
    splits: int,
    rows_per_split: int,
) -> None:
    """grad_weight / grad_bias (fresh contiguous tensors) by the split-M kernel and the
    summing pass: see _dw_db_split_plan."""
    M, N = grad_output.shape
    part_dtype = _acc_torch_dtype(grad_output.dtype)
    # Each element of a workspace is written by exactly one program, so no zeroing.
    dw_part = torch.empty((splits, N, K), dtype=part_dtype, device=grad_output.device) if compute_dw else None
    db_part = torch.empty((splits, N), dtype=part_dtype, device=grad_output.device) if compute_db else None
    # A workspace not asked for is stood in for by the other one (never dereferenced).
    dw_arg = dw_part if compute_dw else db_part
    db_arg = db_part if compute_db else dw_part
    grid = _tile_grid(N, K, "BLOCK_N", "BLOCK_K" if compute_dw else None, splits)
    _linear_relu_bwd_dw_db_split[grid](
        grad_output,
        y,
        x,
        dw_arg,
        db_arg,
        M,
        N,
        K,
        rows_per_split,
        grad_output.stride(0),
        grad_output.stride(1),
        y.stride(0),
        y.stride(1),
        x.stride(0),
        x.stride(1),
        *(dw_part.stride() if compute_dw else (0, 0, 0)),
        *(db_part.stride() if compute_db else (0, 0)),
        RELU=relu,
        COMPUTE_DW=compute_dw,
        COMPUTE_DB=compute_db,
        ACC_DTYPE=acc_dtype(grad_output.dtype),
    )
    if compute_dw:
        _sum_split_partials(dw_part.view(splits, N * K), grad_weight)
    if compute_db:
        _sum_split_partials(db_part, grad_bias)


def _check_dtype(name: str, t: Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise RuntimeError(f"linear_relu (triton): expected {name} to have dtype {dtype}, got {t.dtype}")


def _check_common(input: Tensor, weight: Tensor) -> None:
    if input.dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(
            f"linear_relu (triton): unsupported dtype {input.dtype}; supported: "
            f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}"
        )
    _check_dtype("weight", weight, input.dtype)
    if input.dim() != 2 or weight.dim() != 2:
        raise RuntimeError(
            "linear_relu (triton): expected 2-D input [M, K] and weight [N, K], "
            f"got {tuple(input.shape)} and {tuple(weight.shape)}"
        )
    if input.shape[1] != weight.shape[1]:
        raise RuntimeError(
            f"linear_relu (triton): input {tuple(input.shape)} and weight "
            f"{tuple(weight.shape)} have different in_features"
        )
    if input.device != weight.device:
        raise RuntimeError(f"linear_relu (triton): input on {input.device}, weight on {weight.device}")


def linear_relu_fwd_triton(input: Tensor, weight: Tensor, bias: Optional[Tensor], relu: bool) -> Tensor:
    """act(input @ weight.T + bias) as a new contiguous [M, N] tensor."""
    _check_common(input, weight)
    M, K = input.shape
    N = weight.shape[0]
    if bias is not None:
        _check_dtype("bias", bias, input.dtype)
        if bias.shape != (N,):
            raise RuntimeError(f"linear_relu (triton): expected bias of shape ({N},), got {tuple(bias.shape)}")
    out = torch.empty((M, N), dtype=input.dtype, device=input.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        # Empty reduction: no GEMM to launch; result is act(bias) or zeros.
        if bias is None:
            return out.zero_()
        out.copy_(bias.unsqueeze(0).expand(M, N))
        return out.clamp_min_(0) if relu else out

    # Placeholder for the unused bias pointer (never dereferenced when HAS_BIAS=False).
    b = bias if bias is not None else weight
    with device_guard(input):
        _linear_relu_fwd[_tile_grid(M, N, "BLOCK_M", "BLOCK_N")](
            input,
            weight,
            b,
            out,
            M,
            N,
            K,
            input.stride(0),
            input.stride(1),
            weight.stride(0),
            weight.stride(1),
            b.stride(0),
            out.stride(0),
            out.stride(1),
            HAS_BIAS=bias is not None,
            RELU=bool(relu),
            ACC_DTYPE=acc_dtype(input.dtype),
        )
    return out


def linear_relu_bwd_triton(
    grad_output: Tensor, input: Tensor, weight: Tensor, output: Tensor, relu: bool, output_mask: list[bool]
) -> tuple[Tensor, Tensor, Tensor]:
    """(grad_input [M, K], grad_weight [N, K], grad_bias [N]) of linear_relu_fwd_triton.

    ``output`` is the forward result (only read when ``relu``: its sign is the ReLU mask).
    Entries whose ``output_mask[i]`` is False are ``input.new_empty(0)``.
    """
    _check_common(input, weight)
    M, K = input.shape
    N = weight.shape[0]
    _check_dtype("grad_output", grad_output, input.dtype)
    if tuple(grad_output.shape) != (M, N):
        raise RuntimeError(
            f"linear_relu (triton): expected grad_output of shape ({M}, {N}), got {tuple(grad_output.shape)}"
        )
    if relu:
        _check_dtype("output", output, input.dtype)
        if tuple(output.shape) != (M, N):
            raise RuntimeError(f"linear_relu (triton): expected output of shape ({M}, {N}), got {tuple(output.shape)}")
    if len(output_mask) != 3:
        raise RuntimeError("linear_relu (triton): output_mask must have 3 entries")
    need_dx, need_dw, need_db = (bool(m) for m in output_mask)
    relu = bool(relu)
    # Unused when not relu; grad_output has the right shape and dtype to stand in.
    y = output if relu else grad_output
    acc_type = acc_dtype(input.dtype)

    # Gradients not asked for are distinct empty tensors: a custom op's outputs must not alias.
    grad_input = input.new_empty(0)
    if need_dx:
        if N == 0:
            grad_input = torch.zeros((M, K), dtype=input.dtype, device=input.device)
        else:
            grad_input = torch.empty((M, K), dtype=input.dtype, device=input.device)
            if M > 0 and K > 0:
                with device_guard(input):
                    _linear_relu_bwd_dx[_tile_grid(M, K, "BLOCK_M", "BLOCK_K")](
                        grad_output,
                        y,
                        weight,
                        grad_input,
                        M,
                        N,
                        K,
                        grad_output.stride(0),
                        grad_output.stride(1),
                        y.stride(0),
                        y.stride(1),
                        weight.stride(0),
                        weight.stride(1),
                        grad_input.stride(0),
                        grad_input.stride(1),
                        RELU=relu,
                        ACC_DTYPE=acc_type,
                    )

    grad_weight = input.new_empty(0)
    grad_bias = input.new_empty(0)
    if need_dw or need_db:
        # M == 0 is an empty sum: zeros, no launch.
        alloc = torch.zeros if M == 0 else torch.empty
        if need_dw:
            grad_weight = alloc((N, K), dtype=input.dtype, device=input.device)
        if need_db:
            grad_bias = alloc((N,), dtype=input.dtype, device=input.device)
        compute_dw = need_dw and K > 0
        if M > 0 and N > 0 and (compute_dw or need_db):
            # Placeholder for the input pointer when only db is computed (never dereferenced).
            x = input if compute_dw else grad_output
            splits, rows_per_split = _dw_db_split_plan(M, N, K, compute_dw, input.dtype, input.device)
            with device_guard(input):
                if splits == 1:
                    _dw_db_whole_m(grad_output, y, x, grad_weight, grad_bias, K, relu, compute_dw, need_db)
                else:
                    _dw_db_split_m(
                        grad_output, y, x, grad_weight, grad_bias, K, relu, compute_dw, need_db, splits, rows_per_split
                    )
    return grad_input, grad_weight, grad_bias
