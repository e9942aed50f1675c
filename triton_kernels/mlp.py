"""Triton whole-network MLP kernels: Linear, ReLU, ..., Linear in one forward launch and one
backward launch (+ a small deterministic reduction), for narrow networks.

Semantics are those of fusedmlp/ops/mlp.py's mlp_fwd_torch / mlp_bwd_torch:

    forward:   h_0 = x;  h_(i+1) = relu(h_i @ W_i.T + b_i)  (no ReLU after the last layer)
               each layer accumulates in fp32 (fp64 for fp64) and is rounded to the input
               dtype before it feeds the next, like nn.Sequential in that dtype; the hidden
               outputs are written out as the activations backward needs.
    backward:  g = grad_output; for i = L-1 .. 0:
                   g = threshold_backward(g, h_(i+1), 0)   (hidden layers; NaN passes)
                   db_i = g.sum(0);  dW_i = g.T @ h_i;  g = (g @ W_i) rounded to the dtype

Every width is padded to one power-of-two tile width W >= 16 (30 -> 32): loads are masked so
the padded lanes are zero, and ReLU(0) = 0 keeps them zero through the layers. A program owns
a tile of BLOCK_M rows and keeps it in registers through all layers; weights are re-read per
tile (at most 32 KiB per layer in fp16; they stay in L1/L2).

Layers are a runtime loop, not unrolled: the compiled code (and its compile time, which for
the FMA dots of fp32 at W = 128 was ~30 s per unrolled layer) does not grow with the depth,
and one binary per (dtype, W, BLOCK_M, flags) serves every depth up to MAX_LAYERS.
Per-layer pointers and dims come from one int64 table built on the host (copied to the device
in one asynchronous transfer from pinned memory, and kept for the next launch with the same
contents: ``_launch.LaunchTables``), TABLE_STRIDE entries per layer:

    [0] weight   [1] bias (0 without)   [2] in features   [3] out features
    [4] forward: this layer's output (activation i, or the network output for the last layer);
        backward: the hidden activation h_(i+1) whose sign masks the gradient (0 for the last)
    [5] backward: the layer input h_i for i > 0 (layer 0 reads x through its strides)
    [6] dW destination   [7] db destination   (0 when not wanted)
    [8] offset of this layer's dW partial in a program's workspace slice (db follows it)
    [9] dW numel to reduce   [10] db numel to reduce   (0 when not wanted)

Backward, deterministic without atomics: a persistent grid of P programs; program p walks the
tiles p, p + P, ... and accumulates dW/db of every wanted layer in its own fp32 (fp64 for
fp64) workspace slice with plain load-add-store (the first tile stores without loading, so
the workspace needs no zeroing; dW_i.T = h_i.T @ g is formed in [DW_CHUNK, W] chunks to bound
registers). `_mlp_grad_reduce_kernel` then sums the P slices in order p = 0 .. P-1 and
writes the gradients in the parameter dtype. Workspace: P x (number of parameters, + BLOCK_M x W
scratch rows when PROP_CHUNK slices g @ W_i or ROW_CHUNK the weight gradient's rows)
accumulators with P <= PROGRAMS_PER_SM x SM count:
bounded by the network, not by M.
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._launch import LAUNCH_TABLES, acc_dtype, aot_spec, cdiv, device_guard, next_power_of_2, sm_count

__all__ = [
    "mlp_fwd_triton",
    "mlp_bwd_triton",
    "covers",
    "uncovered_reason",
    "KERNELS",
    "MAX_LAYERS",
    "MAX_WIDTH",
    "SUPPORTED_DTYPES",
    "aot_compile_specs",
]

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_WIDTH = 128
MAX_LAYERS = 8
TABLE_STRIDE = tl.constexpr(11)  # int64 table entries per layer (see the module docstring)

# Persistent backward grid: programs per SM. Two keep an SM busy while the other program
# waits on its loads; more would only grow the workspace and the reduction.
PROGRAMS_PER_SM = 2
# The interpreter runs programs one after another: a few programs over more tiles still
# exercises both the per-program accumulation and the cross-program reduction.
INTERPRET_PROGRAMS = 3
# Each interpreted program costs milliseconds of Python: 4096 still splits a 128 x 128 weight
# gradient into several blocks. The reduction holds REDUCE_GROUPS x REDUCE_BLOCK partial sums
# (16 per thread at 4 warps); under the interpreter 2 groups over its 3 programs' slices still
# take a second, masked step.
REDUCE_BLOCK = 4096 if INTERPRET else 256
REDUCE_GROUPS = 2 if INTERPRET else 8

# Forward (BLOCK_M, num_warps) and backward (BLOCK_M, num_warps, DW_CHUNK, PROP_CHUNK[, ROW_CHUNK]) per
# dtype family and padded width. fp16/bf16 dots run on tensor cores; fp32 ("ieee", no TF32)
# dots are FMA loops that hold whole operand rows in registers, and fp64 accumulators take 2
# registers per element, so their row tiles shrink as W grows. Backward holds more at once
# (g, W_i, the layer input, a [DW_CHUNK, W] slice of the weight gradient), hence smaller tiles;
# PROP_CHUNK > 0 slices the reduction of g @ W_i (fp32/fp64 at W = 128 spilled with every tile
# without it; with it, larger row tiles fit elsewhere too). Chosen from ptxas sweeps; the AOT
# test compiles every entry for the architectures that launch it (sm_90 and, unless
# _PRE_HOPPER_TILES replaces it, sm_80) and fails on any register spill.
_GPU_TILES = {
    "fwd": {
        "tensor_core": {16: (128, 4), 32: (128, 4), 64: (128, 4), 128: (64, 4)},
        "fp32": {16: (128, 4), 32: (64, 4), 64: (64, 4), 128: (16, 8)},
        "fp64": {16: (64, 4), 32: (32, 4), 64: (32, 4), 128: (16, 8)},
    },
    "bwd": {
        "tensor_core": {16: (128, 4, 16, 0), 32: (64, 4, 32, 0), 64: (128, 8, 16, 0), 128: (64, 8, 16, 32)},
        "fp32": {16: (32, 4, 16, 0), 32: (16, 8, 16, 0), 64: (32, 8, 16, 32), 128: (16, 8, 16, 32)},
        "fp64": {16: (32, 4, 16, 0), 32: (16, 4, 16, 0), 64: (16, 8, 16, 0), 128: (16, 8, 16, 32)},
    },
}

# Backward tiles that slice the weight gradient's dot over rows (a fifth entry, ROW_CHUNK > 0: g
# goes to the program's scratch rows and comes back ROW_CHUNK rows at a time, so the FMA dot's
# operands grow with ROW_CHUNK, not BLOCK_M). They take 2-8x the rows of the fp32 tiles above
# (W = 32: 128 against 16; W = 64: 64 against 32), so a program reads and writes its
# weight-gradient partials 2-8x less often, in 223 and 213 registers against 98 and 243 (ptxas,
# sm_90, triton 3.6 as on the GPU machine); spill-free with triton 3.6 and 3.8 for sm_80 and
# sm_90. ROW_CHUNK >= 16: triton 3.6 rejects a dot with K < 16. Not launched until timed on a
# GPU (bench/gpu_mlp_probe.py --triton-tiles); the AOT test compiles them.
ROW_SLICED_BWD_TILES = {32: (128, 8, 16, 16, 16), 64: (64, 8, 8, 16, 16)}

# Before Hopper (no wgmma) the tensor-core dots are mma.sync, whose operand and accumulator
# fragments stay in each warp's registers: with triton 3.6 the backward at W = 64 and 128 spilled
# 64-384 bytes on sm_80 at the tiles above (triton 3.8 did not). Half the rows fit both.
_PRE_HOPPER_TILES = {("bwd", "tensor_core", 64): (64, 8, 16, 0), ("bwd", "tensor_core", 128): (32, 8, 16, 32)}

# How fp32 dots multiply: "ieee" (FMA loops, no TF32, as torch's default fp32 matmul) or
# "tf32x3" (tensor cores: each fp32 operand split into two TF32 values and three products
# taken, about fp32's accuracy, as setup.py's FUSEDMLP_MLP_TF32X3 builds the CUDA kernels). The
# default is "ieee"; "tf32x3" is an experiment that bench/gpu_mlp_probe.py --triton-tiles
# times beside it (and the AOT test compiles at every width) until a GPU measures it.
FP32_DOT_PRECISION = "ieee"

_DTYPE_FAMILY = {
    torch.float16: "tensor_core",
    torch.bfloat16: "tensor_core",
    torch.float32: "fp32",
    torch.float64: "fp64",
}
_WIDTHS = (16, 32, 64, 128)


def _gpu_config(direction: str, dtype: torch.dtype, width: int, arch: int) -> tuple[dict, int]:
    """(constexpr tile config, num_warps) of a kernel on a GPU of compute capability `arch`
    (major * 10 + minor)."""
    family = _DTYPE_FAMILY[dtype]
    tile = _GPU_TILES[direction][family][width]
    if arch < 90:
        tile = _PRE_HOPPER_TILES.get((direction, family, width), tile)
    config, num_warps = _tile_config(direction, width, tile)
    return dict(config, DOT_PRECISION=_dot_precision(dtype)), num_warps


def _dot_precision(dtype: torch.dtype) -> str:
    return FP32_DOT_PRECISION if dtype == torch.float32 else "ieee"


def _tile_config(direction: str, width: int, tile: tuple) -> tuple[dict, int]:
    config = {"W": width, "BLOCK_M": tile[0]}
    if direction == "bwd":
        row_chunk = tile[4] if len(tile) > 4 else 0
        # A row-sliced tile keeps g in the scratch rows only, so the propagation reads it from
        # there too: in one W-wide slice where the tile names none.
        config.update(DW_CHUNK=tile[2], PROP_CHUNK=tile[3] or (width if row_chunk else 0), ROW_CHUNK=row_chunk)
    return config, tile[1]


def _config(direction: str, dtype: torch.dtype, width: int, device: torch.device) -> tuple[dict, int]:
    if INTERPRET:
        # 16-row tiles keep the interpreter fast and let tiny batches hit BLOCK-1/BLOCK/BLOCK+1;
        # 16-wide weight-gradient chunks make every width above 16 loop over chunks.
        config = {"W": width, "BLOCK_M": 16, "DOT_PRECISION": _dot_precision(dtype)}
        if direction == "bwd":
            config["DW_CHUNK"] = 16
            # W = 128 slices g @ W_i as fp32/fp64 on the GPU; W = 64 slices the weight gradient's
            # rows as ROW_SLICED_BWD_TILES do, here by 8 for two slices of each 16-row tile (the
            # interpreter's dots take K = 8; a GPU's, with triton 3.6, need 16).
            config["PROP_CHUNK"] = 16 if width in (64, MAX_WIDTH) else 0
            config["ROW_CHUNK"] = 8 if width == 64 else 0
        return config, 1
    return _gpu_config(direction, dtype, width, _arch(device.index))


def _padded_width(widths: Sequence[int]) -> int:
    return max(16, next_power_of_2(max(widths)))


# ---------------------------------------------------------------------------------------
# Kernels.


@triton.jit
def _load_rows(ptr, row0, rows, cols, row_in, num_cols, stride_r, stride_c):
    # [BLOCK_M, W] tile of an [M, num_cols] matrix from row row0 on; rows past M and padded
    # columns read 0. The tile's base is an int64 scalar and the offsets inside it are int32
    # (the launcher guarantees they fit): a tile of int64 offsets would double the registers.
    mask = row_in[:, None] & (cols[None, :] < num_cols)
    base = ptr + row0 * stride_r
    return tl.load(base + rows[:, None] * stride_r + cols[None, :] * stride_c, mask=mask, other=0.0)


@triton.jit
def _store_rows(ptr, row0, rows, cols, row_in, num_cols, value):
    # Stores a [BLOCK_M, W] tile into a contiguous [M, num_cols] matrix (padding masked off).
    mask = row_in[:, None] & (cols[None, :] < num_cols)
    tl.store(ptr + row0 * num_cols + rows[:, None] * num_cols + cols[None, :], value, mask=mask)


@triton.jit
def _load_weight(entry, cols, k_in, k_out, elem_ty):
    # W_i as a [W (out), W (in)] tile, zero-padded; rows are contiguous in nn.Linear layout.
    w_ptr = tl.load(entry + 0).to(tl.pointer_type(elem_ty))
    mask = (cols[:, None] < k_out) & (cols[None, :] < k_in)
    return tl.load(w_ptr + cols[:, None] * k_in + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _threshold_backward(g, act):
    # aten threshold_backward(g, act, 0): 0 where act <= 0, else g (so NaN activations pass).
    # Written with integer bit masks instead of tl.where: the compiler hoists the shared-memory
    # copy of g (a dot operand) above the select, and a select's 1-bit condition cannot live in
    # shared memory ("element type bit width must be a multiple of 8" on sm_80 and sm_90).
    if act.dtype == tl.float16:
        int_ty: tl.constexpr = tl.int16
        inf_bits: tl.constexpr = 0x7C00
    elif act.dtype == tl.bfloat16:
        int_ty: tl.constexpr = tl.int16
        inf_bits: tl.constexpr = 0x7F80
    elif act.dtype == tl.float32:
        int_ty: tl.constexpr = tl.int32
        inf_bits: tl.constexpr = 0x7F800000
    else:
        int_ty: tl.constexpr = tl.int64
        inf_bits: tl.constexpr = 0x7FF0000000000000
    sign_shift = tl.cast(int_ty.primitive_bitwidth - 1, int_ty)
    bits = act.to(int_ty, bitcast=True)
    magnitude = bits & tl.cast(inf_bits | (inf_bits - 1), int_ty)  # every bit but the sign
    # Arithmetic shifts of the sign bit: all ones where the condition holds, else zero.
    negative = bits >> sign_shift
    nan = (tl.cast(inf_bits, int_ty) - magnitude) >> sign_shift
    zero = (magnitude - tl.cast(1, int_ty)) >> sign_shift
    blocked = (negative & ~nan) | zero
    return (g.to(int_ty, bitcast=True) & ~blocked).to(g.dtype, bitcast=True)


@triton.jit
def _mlp_fwd_kernel(
    table_ptr,
    x_ptr,
    M,
    num_layers,
    stride_xm,
    stride_xk,
    HAS_BIAS: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    W: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # One program per BLOCK_M-row tile; the tile stays in registers through every layer.
    pid = tl.program_id(0).to(tl.int64)
    elem_ty = x_ptr.dtype.element_ty
    row0 = pid * BLOCK_M
    rows = tl.arange(0, BLOCK_M)
    row_in = rows < tl.minimum(M - row0, BLOCK_M).to(tl.int32)
    cols = tl.arange(0, W)
    h = _load_rows(x_ptr, row0, rows, cols, row_in, tl.load(table_ptr + 2).to(tl.int32), stride_xm, stride_xk)
    for i in range(0, num_layers):
        entry = table_ptr + i * TABLE_STRIDE
        k_in = tl.load(entry + 2).to(tl.int32)
        k_out = tl.load(entry + 3).to(tl.int32)
        w = _load_weight(entry, cols, k_in, k_out, elem_ty)
        # DOT_PRECISION "ieee": for fp32 this forbids TF32 (torch's fp32 matmul does not use it
        # by default); for fp16/bf16/fp64 it is the only precision anyway; "tf32x3": see
        # FP32_DOT_PRECISION. out_dtype: Triton before 3.8 defaults it to fp32 and then rejects
        # the fp64 accumulator (triton 3.6 on the H200).
        acc = tl.dot(
            h, tl.trans(w), tl.zeros((BLOCK_M, W), dtype=ACC_DTYPE), input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE
        )
        if HAS_BIAS:
            b_ptr = tl.load(entry + 1).to(tl.pointer_type(elem_ty))
            acc += tl.load(b_ptr + cols, mask=cols < k_out, other=0.0).to(ACC_DTYPE)[None, :]
        # ReLU on hidden layers only. where(acc < 0) rather than maximum: torch.relu keeps
        # NaN, tl.maximum drops it.
        acc = tl.where((acc < 0) & (i + 1 < num_layers), 0.0, acc)
        # Rounded to the dtype here, like nn.Sequential, before it feeds the next layer.
        h = acc.to(elem_ty)
        out_ptr = tl.load(entry + 4).to(tl.pointer_type(elem_ty))
        _store_rows(out_ptr, row0, rows, cols, row_in, k_out, h)


@triton.jit
def _mlp_bwd_kernel(
    table_ptr,
    x_ptr,
    grad_out_ptr,
    grad_in_ptr,
    ws_ptr,
    M,
    num_layers,
    lowest_layer,
    propagate_from,
    num_tiles,
    num_programs,
    ws_stride,
    params_per_program,
    stride_xm,
    stride_xk,
    stride_gm,
    stride_gn,
    INPUT_GRAD: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
    W: tl.constexpr,
    BLOCK_M: tl.constexpr,
    DW_CHUNK: tl.constexpr,
    PROP_CHUNK: tl.constexpr,
    ROW_CHUNK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    # Persistent: program p handles tiles p, p + num_programs, ... and accumulates the weight
    # and bias gradients of its tiles in its own workspace slice (no other program touches
    # it, so plain load/add/store is race-free and the summation order is fixed).
    # Layers below lowest_layer need nothing and are not visited; the gradient is propagated
    # through layer i >= propagate_from only, where something below is still wanted
    # (lowest_layer + 1, or 0 for the input gradient).
    tl.static_assert(ROW_CHUNK == 0 or PROP_CHUNK > 0, "row slices keep g in the scratch rows only")
    pid = tl.program_id(0).to(tl.int64)
    elem_ty = x_ptr.dtype.element_ty
    cols = tl.arange(0, W)
    ws = ws_ptr + pid * ws_stride
    k_last = tl.load(table_ptr + (num_layers - 1) * TABLE_STRIDE + 3).to(tl.int32)
    rows = tl.arange(0, BLOCK_M)
    for tile in range(pid, num_tiles, num_programs):
        # The program's first tile overwrites its slice instead of adding to it.
        accumulate = tile != pid
        row0 = tile * BLOCK_M
        row_in = rows < tl.minimum(M - row0, BLOCK_M).to(tl.int32)
        g = _load_rows(grad_out_ptr, row0, rows, cols, row_in, k_last, stride_gm, stride_gn)
        for j in range(0, num_layers - lowest_layer):
            i = num_layers - 1 - j
            entry = table_ptr + i * TABLE_STRIDE
            k_in = tl.load(entry + 2).to(tl.int32)
            k_out = tl.load(entry + 3).to(tl.int32)
            if i + 1 < num_layers:
                # threshold_backward(g, h, 0): `h <= 0` blocks, so a NaN activation passes.
                act_ptr = tl.load(entry + 4).to(tl.pointer_type(elem_ty))
                act = _load_rows(act_ptr, row0, rows, cols, row_in, k_out, k_out, 1)
                g = _threshold_backward(g, act)
            if ROW_CHUNK > 0:
                # g goes to the program's scratch rows of the workspace before the weight
                # gradient, which reads it back ROW_CHUNK rows at a time: the FMA dot's operands
                # then grow with ROW_CHUNK, not BLOCK_M (the propagation reads it too).
                tl.debug_barrier()  # every thread is done reading the previous layer's g
                tl.store(ws + params_per_program + rows[:, None] * W + cols[None, :], g.to(ACC_DTYPE))
                tl.debug_barrier()
            ws_dw = ws + tl.load(entry + 8)
            if tl.load(entry + 10) > 0:
                db_ptrs = ws_dw + k_out * k_in + cols
                db_mask = cols < k_out
                db = tl.sum(g.to(ACC_DTYPE), axis=0) + tl.load(db_ptrs, mask=db_mask & accumulate, other=0.0)
                tl.store(db_ptrs, db, mask=db_mask)
            if tl.load(entry + 9) > 0:
                # The layer input h_i: x (through its strides) for layer 0, else activation i-1.
                in_ptr = x_ptr
                in_stride_r = tl.cast(stride_xm, tl.int32)
                in_stride_c = tl.cast(stride_xk, tl.int32)
                if i > 0:
                    in_ptr = tl.load(entry + 5).to(tl.pointer_type(elem_ty))
                    in_stride_r = k_in
                    in_stride_c = tl.cast(1, tl.int32)
                # dW_i.T = h_i.T @ g in [DW_CHUNK, W] row chunks of the transposed [k_out, k_in]
                # slice: a whole [W, W] accumulator (plus its addresses) would spill at W = 128.
                for k0 in range(0, k_in, DW_CHUNK):
                    chunk = k0 + tl.arange(0, DW_CHUNK)
                    # Each branch loads the partial itself: with that load hoisted above the
                    # branch the tiles launched now compiled to other SASS than was measured.
                    if ROW_CHUNK == 0:
                        a_mask = row_in[:, None] & (chunk[None, :] < k_in)
                        a_ptrs = (
                            in_ptr + row0 * in_stride_r + rows[:, None] * in_stride_r + chunk[None, :] * in_stride_c
                        )
                        a_in = tl.load(a_ptrs, mask=a_mask, other=0.0)
                        dwt_ptrs = ws_dw + cols[None, :] * k_in + chunk[:, None]
                        dwt_mask = (cols[None, :] < k_out) & (chunk[:, None] < k_in)
                        dwt = tl.load(dwt_ptrs, mask=dwt_mask & accumulate, other=0.0)
                        dwt = tl.dot(
                            tl.trans(a_in), g, dwt, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE
                        )  # DOT_PRECISION: see forward
                    else:
                        dwt_ptrs = ws_dw + cols[None, :] * k_in + chunk[:, None]
                        dwt_mask = (cols[None, :] < k_out) & (chunk[:, None] < k_in)
                        dwt = tl.load(dwt_ptrs, mask=dwt_mask & accumulate, other=0.0)
                        for r0 in range(0, BLOCK_M, ROW_CHUNK):
                            sub = r0 + tl.arange(0, ROW_CHUNK)
                            sub_in = sub < tl.minimum(M - row0, BLOCK_M).to(tl.int32)
                            a_ptrs = (
                                in_ptr + row0 * in_stride_r + sub[:, None] * in_stride_r + chunk[None, :] * in_stride_c
                            )
                            a_in = tl.load(a_ptrs, mask=sub_in[:, None] & (chunk[None, :] < k_in), other=0.0)
                            g_rows = tl.load(ws + params_per_program + sub[:, None] * W + cols[None, :]).to(elem_ty)
                            dwt = tl.dot(
                                tl.trans(a_in), g_rows, dwt, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE
                            )
                    tl.store(dwt_ptrs, dwt, mask=dwt_mask)
            if i >= propagate_from:
                if PROP_CHUNK == 0:
                    w = _load_weight(entry, cols, k_in, k_out, elem_ty)
                    acc = tl.dot(
                        g,
                        w,
                        tl.zeros((BLOCK_M, W), dtype=ACC_DTYPE),
                        input_precision=DOT_PRECISION,
                        out_dtype=ACC_DTYPE,
                    )
                else:
                    # g @ W_i over PROP_CHUNK-wide slices of the reduction dim: the FMA/DMMA dots
                    # of fp32/fp64 hold whole operand rows per thread, which at W = 128 spills.
                    # g goes through the program's scratch rows of the workspace to be sliced.
                    scratch = ws + params_per_program + rows[:, None] * W
                    if ROW_CHUNK == 0:  # else g is there already
                        tl.debug_barrier()  # every thread is done reading the previous layer's g
                        tl.store(scratch + cols[None, :], g.to(ACC_DTYPE))
                        tl.debug_barrier()
                    w_ptr = tl.load(entry + 0).to(tl.pointer_type(elem_ty))
                    acc = tl.zeros((BLOCK_M, W), dtype=ACC_DTYPE)
                    for k0 in range(0, k_out, PROP_CHUNK):
                        chunk = k0 + tl.arange(0, PROP_CHUNK)
                        g_chunk = tl.load(scratch + chunk[None, :]).to(elem_ty)
                        w_mask = (chunk[:, None] < k_out) & (cols[None, :] < k_in)
                        w_chunk = tl.load(w_ptr + chunk[:, None] * k_in + cols[None, :], mask=w_mask, other=0.0)
                        acc = tl.dot(g_chunk, w_chunk, acc, input_precision=DOT_PRECISION, out_dtype=ACC_DTYPE)
                # Rounded to the dtype between layers, as autograd's mm output is.
                g = acc.to(elem_ty)
        if INPUT_GRAD:
            # The loop ended at layer 0, so g is now the input gradient.
            _store_rows(grad_in_ptr, row0, rows, cols, row_in, tl.load(table_ptr + 2).to(tl.int32), g)


@triton.jit
def _mlp_grad_reduce_kernel(
    table_ptr,
    ws_ptr,
    grad_probe_ptr,
    num_partials,
    ws_stride,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
    GROUPS: tl.constexpr,
):
    # Grid (blocks, 2 x layers): axis 1 picks (layer, dW or db); each program sums one block
    # of that gradient over the num_partials workspace slices and writes it in the parameter
    # dtype. Gradients not wanted have numel 0 in the table. Row g of the [GROUPS, BLOCK]
    # accumulator sums slices g, g + GROUPS, ..., and the rows are then summed: a fixed order
    # (deterministic) with GROUPS slices in flight per step, where one slice per step made a
    # chain of num_partials (264 on an H200) dependent steps in the few programs a narrow
    # network's gradients fill.
    block = tl.program_id(0).to(tl.int64)
    which = tl.program_id(1)
    entry = table_ptr + (which // 2) * TABLE_STRIDE
    is_bias = which % 2
    numel = tl.load(entry + 9 + is_bias)
    offs = block * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    src = ws_ptr + tl.load(entry + 8) + is_bias * tl.load(entry + 2) * tl.load(entry + 3) + offs
    groups = tl.arange(0, GROUPS)
    acc = tl.zeros((GROUPS, BLOCK), dtype=ACC_DTYPE)
    for first in range(0, num_partials, GROUPS):
        slices = first + groups
        acc += tl.load(
            src[None, :] + slices.to(tl.int64)[:, None] * ws_stride,
            mask=(slices < num_partials)[:, None] & mask[None, :],
            other=0.0,
        )
    dst = tl.load(entry + 6 + is_bias).to(tl.pointer_type(grad_probe_ptr.dtype.element_ty))
    tl.store(dst + offs, tl.sum(acc, axis=0).to(grad_probe_ptr.dtype.element_ty), mask=mask)


KERNELS = {
    "_mlp_fwd_kernel": _mlp_fwd_kernel,
    "_mlp_bwd_kernel": _mlp_bwd_kernel,
    "_mlp_grad_reduce_kernel": _mlp_grad_reduce_kernel,
}


# ---------------------------------------------------------------------------------------
# Coverage and argument checks.


def uncovered_reason(input: Tensor, weights: Sequence[Tensor]) -> Optional[str]:
    """Why these fused kernels do not cover (input, weights), or None when they do."""
    if input.dtype not in SUPPORTED_DTYPES:
        return f"dtype {input.dtype} is not supported (supported: {', '.join(map(str, SUPPORTED_DTYPES))})"
    if input.device.type != "cuda" and not (INTERPRET and input.device.type == "cpu"):
        return f"tensors on {input.device} (the Triton kernels need CUDA, or CPU under TRITON_INTERPRET=1)"
    if not 1 <= len(weights) <= MAX_LAYERS:
        return f"{len(weights)} layers (supported: 1 to MAX_LAYERS = {MAX_LAYERS})"
    if input.dim() != 2:
        return f"a {input.dim()}-D input (expected 2-D)"
    widths = [input.shape[1]] + [w.shape[0] for w in weights]
    if min(widths) < 1 or max(widths) > MAX_WIDTH:
        return f"layer widths {widths} (every width must be in 1 .. MAX_WIDTH = {MAX_WIDTH})"
    return None


def covers(input: Tensor, weights: Sequence[Tensor]) -> bool:
    """True when the fused kernels handle this input dtype/device, layer count and widths."""
    return uncovered_reason(input, weights) is None


def _check_args(op: str, input: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> None:
    if not weights:
        raise RuntimeError(f"{op} (triton): expected at least one layer, got no weights")
    if biases and len(biases) != len(weights):
        raise RuntimeError(f"{op} (triton): expected one bias per weight or none, got {len(biases)} for {len(weights)}")
    if input.dim() == 2:
        width = input.shape[1]
        for i, w in enumerate(weights):
            if w.dim() != 2 or w.shape[1] != width:
                raise RuntimeError(
                    f"{op} (triton): layer {i}: weight of shape {list(w.shape)} does not take {width} in_features"
                )
            if w.dtype != input.dtype or w.device != input.device:
                raise RuntimeError(f"{op} (triton): weight {i} must have the dtype and device of input")
            if biases and (
                biases[i].shape != (w.shape[0],) or biases[i].dtype != input.dtype or biases[i].device != input.device
            ):
                raise RuntimeError(f"{op} (triton): bias {i} must be [{w.shape[0]}] with the dtype and device of input")
            width = w.shape[0]
    reason = uncovered_reason(input, weights)
    if reason is not None:
        raise RuntimeError(f"{op} (triton): not covered by the fused MLP kernels: {reason}")


# ---------------------------------------------------------------------------------------
# Launchers.


def _int32_tile_offsets(t: Tensor, block_m: int, width: int) -> Tensor:
    """`t` itself when the element offsets inside one [block_m, width] tile fit in int32 (the
    kernels index tiles that way), else a contiguous copy (row stride <= MAX_WIDTH)."""
    if (block_m - 1) * abs(t.stride(0)) + (width - 1) * abs(t.stride(1)) < 2**31:
        return t
    return t.contiguous()


def _table_entry(
    k_in: int,
    k_out: int,
    weight: Tensor,
    bias: Optional[Tensor],
    output: Optional[Tensor],
    layer_input: Optional[Tensor] = None,
    grad_weight: Optional[Tensor] = None,
    grad_bias: Optional[Tensor] = None,
    ws_offset: int = 0,
) -> list[int]:
    """One layer's TABLE_STRIDE entries (layout in the module docstring); None is a null pointer."""

    def ptr(t: Optional[Tensor]) -> int:
        return 0 if t is None else t.data_ptr()

    return [
        ptr(weight),
        ptr(bias),
        k_in,
        k_out,
        ptr(output),
        ptr(layer_input),
        ptr(grad_weight),
        ptr(grad_bias),
        ws_offset,
        0 if grad_weight is None else k_in * k_out,
        0 if grad_bias is None else k_out,
    ]


@functools.cache
def _arch(device_index: int) -> int:
    major, minor = torch.cuda.get_device_capability(device_index)
    return major * 10 + minor


def mlp_fwd_triton(input: Tensor, weights: Sequence[Tensor], biases: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
    """(output [M, K_L], hidden ReLU outputs [M, K(i+1)] for i < L-1), one launch; `biases` holds
    one bias per weight or none. Raises RuntimeError outside coverage (see uncovered_reason)."""
    _check_args("mlp_fwd", input, weights, biases)
    weights = [w.contiguous() for w in weights]
    biases = [b.contiguous() for b in biases]
    M = input.shape[0]
    outputs = [input.new_empty((M, w.shape[0])) for w in weights]
    if M > 0:
        widths = [input.shape[1]] + [w.shape[0] for w in weights]
        width = _padded_width(widths)
        config, num_warps = _config("fwd", input.dtype, width, input.device)
        block_m = config["BLOCK_M"]
        input = _int32_tile_offsets(input, block_m, width)
        entries = []
        for i, (w, out) in enumerate(zip(weights, outputs)):
            entries += _table_entry(widths[i], widths[i + 1], w, biases[i] if biases else None, out)
        with device_guard(input):  # the table is kept per stream of the launch's device
            table = LAUNCH_TABLES.get(entries, input.device)
            _mlp_fwd_kernel[(cdiv(M, block_m),)](
                table,
                input,
                M,
                len(weights),
                input.stride(0),
                input.stride(1),
                HAS_BIAS=bool(biases),
                ACC_DTYPE=acc_dtype(input.dtype),
                **config,
                num_warps=num_warps,
                num_stages=1,
            )
    return outputs[-1], outputs[:-1]


def mlp_bwd_triton(
    grad_output: Tensor,
    input: Tensor,
    weights: Sequence[Tensor],
    activations: Sequence[Tensor],
    input_grad: bool,
    weight_grads: Sequence[bool],
    bias_grads: Sequence[bool],
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """(grad_input, grad_weights[L], grad_biases[L or 0]) as mlp_bwd_torch; gradients not asked
    for are empty tensors. One backward launch plus one reduction launch, no atomics."""
    _check_args("mlp_bwd", input, weights, [])
    layers = len(weights)
    if len(activations) != layers - 1:
        raise RuntimeError(f"mlp_bwd (triton): expected {layers - 1} activations, got {len(activations)}")
    if len(weight_grads) != layers or len(bias_grads) not in (0, layers):
        raise RuntimeError(f"mlp_bwd (triton): expected {layers} weight_grads and 0 or {layers} bias_grads flags")
    M = input.shape[0]
    widths = [input.shape[1]] + [w.shape[0] for w in weights]
    for i, act in enumerate(activations):
        if act.shape != (M, widths[i + 1]) or act.dtype != input.dtype or act.device != input.device:
            raise RuntimeError(
                f"mlp_bwd (triton): expected activation {i} of shape [{M}, {widths[i + 1]}] with the dtype and "
                f"device of input, got {list(act.shape)} {act.dtype} on {act.device}"
            )
    if grad_output.shape != (M, widths[-1]) or grad_output.dtype != input.dtype or grad_output.device != input.device:
        raise RuntimeError(
            f"mlp_bwd (triton): expected grad_output of shape [{M}, {widths[-1]}] with the dtype and device of input, "
            f"got {list(grad_output.shape)} {grad_output.dtype}"
        )
    weight_wanted = [bool(f) for f in weight_grads]
    bias_wanted = [bool(f) for f in bias_grads] if bias_grads else [False] * layers

    grad_input = input.new_empty(input.shape) if input_grad else input.new_empty(0)
    grad_weights = [input.new_empty(w.shape) if f else input.new_empty(0) for w, f in zip(weights, weight_wanted)]
    grad_biases = [input.new_empty(w.shape[0]) if f else input.new_empty(0) for w, f in zip(weights, bias_grads)]
    wanted_layers = [i for i in range(layers) if weight_wanted[i] or bias_wanted[i]]
    if not input_grad and not wanted_layers:
        return grad_input, grad_weights, grad_biases
    lowest_layer = 0 if input_grad else wanted_layers[0]

    weights = [w.contiguous() for w in weights]
    activations = [a.contiguous() for a in activations]
    width = _padded_width(widths)
    config, num_warps = _config("bwd", input.dtype, width, input.device)
    block_m = config["BLOCK_M"]
    input = _int32_tile_offsets(input, block_m, width)
    grad_output = _int32_tile_offsets(grad_output, block_m, width)
    num_tiles = cdiv(M, block_m)
    if input.device.type == "cuda":
        num_programs = min(num_tiles, PROGRAMS_PER_SM * sm_count(input.device))
    else:
        num_programs = min(num_tiles, INTERPRET_PROGRAMS)
    entries, ws_stride = [], 0
    for i, w in enumerate(weights):
        k_in, k_out = widths[i], widths[i + 1]
        entries += _table_entry(
            k_in,
            k_out,
            w,
            None,
            activations[i] if i + 1 < layers else None,
            activations[i - 1] if i > 0 else None,
            grad_weights[i] if weight_wanted[i] else None,
            grad_biases[i] if bias_wanted[i] else None,
            ws_stride,
        )
        ws_stride += k_out * k_in + k_out
    params_per_program = ws_stride
    if config["PROP_CHUNK"] or config["ROW_CHUNK"]:
        ws_stride += block_m * width  # the program's scratch rows for g (see the kernel)
    ws_dtype = torch.float64 if input.dtype == torch.float64 else torch.float32
    workspace = torch.empty(max(num_programs, 1) * ws_stride, dtype=ws_dtype, device=input.device)
    with device_guard(input):
        table = LAUNCH_TABLES.get(entries, input.device)
        if num_tiles > 0:
            _mlp_bwd_kernel[(num_programs,)](
                table,
                input,
                grad_output,
                grad_input if input_grad else input,
                workspace,
                M,
                layers,
                lowest_layer,
                0 if input_grad else lowest_layer + 1,
                num_tiles,
                num_programs,
                ws_stride,
                params_per_program,
                input.stride(0),
                input.stride(1),
                grad_output.stride(0),
                grad_output.stride(1),
                INPUT_GRAD=bool(input_grad),
                ACC_DTYPE=acc_dtype(input.dtype),
                **config,
                num_warps=num_warps,
                num_stages=1,
            )
        if wanted_layers:
            largest = max(widths[i] * widths[i + 1] if weight_wanted[i] else widths[i + 1] for i in wanted_layers)
            _mlp_grad_reduce_kernel[(cdiv(largest, REDUCE_BLOCK), 2 * layers)](
                table,
                workspace,
                input,
                num_programs,
                ws_stride,
                ACC_DTYPE=acc_dtype(input.dtype),
                BLOCK=REDUCE_BLOCK,
                GROUPS=REDUCE_GROUPS,
                num_warps=4,
            )
    return grad_input, grad_weights, grad_biases


# ---------------------------------------------------------------------------------------
# AOT description: what triton.compile(ASTSource(...)) needs for every kernel x dtype x padded
# width (tests/test_triton_mlp_kernels.py compiles them for sm_80 and sm_90).

_TRITON_PTR_TYPE = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64"}

# Flag variants: "full" (bias; input gradient) at every width, the other flag values at the
# width where registers peak (128). Depth is a runtime loop, so it needs no variants.
_AOT_VARIANTS = {
    "_mlp_fwd_kernel": {"full": dict(HAS_BIAS=True), "nobias": dict(HAS_BIAS=False)},
    "_mlp_bwd_kernel": {"full": dict(INPUT_GRAD=True), "params_only": dict(INPUT_GRAD=False)},
}

# Strides a contiguous launch passes as 1, which Triton specializes to constexprs.
_UNIT_STRIDES = ("stride_xk", "stride_gn")


def _aot_spec(
    kernel: str, dtype: torch.dtype, variant: str, flags: dict, config: dict, num_warps: int, archs=None
) -> dict:
    fn = KERNELS[kernel]
    constexprs = dict(flags, ACC_DTYPE=acc_dtype(dtype), **config)
    signature, attrs = {}, {}
    for i, arg in enumerate(fn.arg_names):
        if arg in constexprs:
            signature[arg] = "constexpr"
        elif arg in _UNIT_STRIDES:
            signature[arg] = "constexpr"
            constexprs[arg] = 1
        elif arg == "table_ptr":
            signature[arg] = "*i64"
        elif arg == "ws_ptr":
            signature[arg] = "*fp64" if dtype == torch.float64 else "*fp32"
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif arg.endswith("_ptr"):
            signature[arg] = _TRITON_PTR_TYPE[dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[arg] = "i32"
    return aot_spec(kernel, fn, dtype, variant, signature, constexprs, num_warps, config, attrs=attrs, archs=archs)


def aot_compile_specs(dtypes=SUPPORTED_DTYPES):
    """Yield one dict per kernel x dtype x padded width x flag variant (x architecture, where
    sm_80 and sm_90 tiles differ) with: kernel, fn, dtype, variant, layout, signature,
    constexprs, attrs, num_warps, num_stages, config, archs."""
    for dtype in dtypes:
        for kernel, direction in (("_mlp_fwd_kernel", "fwd"), ("_mlp_bwd_kernel", "bwd")):
            for width in _WIDTHS:
                hopper, ampere = (_gpu_config(direction, dtype, width, arch) for arch in (90, 80))
                per_arch = [(hopper, None)] if hopper == ampere else [(ampere, (80,)), (hopper, (90,))]
                for (config, num_warps), archs in per_arch:
                    for variant, flags in _AOT_VARIANTS[kernel].items():
                        if variant == "full" or width == MAX_WIDTH:
                            yield _aot_spec(kernel, dtype, variant, flags, config, num_warps, archs)
        if dtype == torch.float32:
            for width, tile in ROW_SLICED_BWD_TILES.items():
                config, num_warps = _tile_config("bwd", width, tile)
                config = dict(config, DOT_PRECISION="ieee")
                yield _aot_spec("_mlp_bwd_kernel", dtype, "row_sliced", {"INPUT_GRAD": True}, config, num_warps)
            # The tf32x3 experiment at the fp32 tiles it would launch with.
            for kernel, direction in (("_mlp_fwd_kernel", "fwd"), ("_mlp_bwd_kernel", "bwd")):
                for width in _WIDTHS:
                    config, num_warps = _gpu_config(direction, dtype, width, 90)
                    config = dict(config, DOT_PRECISION="tf32x3")
                    flags = _AOT_VARIANTS[kernel]["full"]
                    yield _aot_spec(kernel, dtype, "tf32x3", flags, config, num_warps)
        yield _aot_spec(
            "_mlp_grad_reduce_kernel", dtype, "sum", {}, {"BLOCK": REDUCE_BLOCK, "GROUPS": REDUCE_GROUPS}, 4
        )
