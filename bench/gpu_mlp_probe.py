"""Where the fused MLP's training step spends its GPU time (issue 7), per benchmark network at its
benchmark batch: the whole-network forward kernel alone, the whole-network backward (kernel plus
the gradient-reduction kernel) alone, and eager PyTorch's forward and forward+backward of the same
nn.Sequential, each timed by triton.testing.do_bench (L2 flushed, medians), fp32 with TF32 off as
in the benchmark. Rates against the floors: FLOPs of the matrix products, and the bytes the fused
kernels must move (forward: read the input, write every layer's output; backward: read the
gradient, the input and the hidden activations). Prints JSON.

    python bench/gpu_mlp_probe.py [--kernel-only | --triton-tiles]

--kernel-only launches the forward and backward kernels of the 64x4 network at 2^20 rows a few
times and times nothing: the program the kit's `mlp_ncu` stage runs under Nsight Compute.

--triton-tiles times the Triton whole-network kernels (fp32) instead: each network's forward and
backward at the tile config triton_kernels/mlp.py launches now, then at every candidate of
TRITON_TILE_CANDIDATES for that padded width (each compiled without register spills for sm_90
here), so one GPU call says which tiles to keep; then the tf32x3 experiment (fp32 dots on tensor
cores as 3xTF32, tk.FP32_DOT_PRECISION) at the current fp32 tile and at those of
TF32X3_TILE_CANDIDATES. Triton compiles each candidate on first use.
"""

import argparse
import json

import torch
from triton.testing import do_bench

import fusedmlp  # noqa: F401  (registers torch.ops.fusedmlp)
from fusedmlp.bench.mlp import GPU_CASES_QUICK, _sequential

DEVICE = "cuda"  # a CPU dry run of the script's plumbing sets "cpu"


def _network(widths, batch: int):
    torch.manual_seed(0)
    model = _sequential(widths).to(DEVICE)
    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    weights = [m.weight.detach() for m in linears]
    biases = [m.bias.detach() for m in linears]
    x = torch.randn(batch, widths[0], device=DEVICE)
    return model, weights, biases, x


def _fused_calls(weights, biases, x):
    out, acts = torch.ops.fusedmlp.mlp_fwd(x, weights, biases)
    grad = torch.randn_like(out)
    wanted = [True] * len(weights)

    def forward():
        return torch.ops.fusedmlp.mlp_fwd(x, weights, biases)

    def backward():
        # The training step's backward: no gradient for the data, all parameter gradients.
        return torch.ops.fusedmlp.mlp_bwd(grad, x, weights, acts, False, wanted, wanted)

    return forward, backward


def _floors(widths, batch: int) -> dict:
    pairs = list(zip(widths[:-1], widths[1:]))
    macs = batch * sum(i * o for i, o in pairs)
    # Backward: every layer's weight gradient, and the input gradient of every layer but the first.
    bwd_macs = 2 * macs - batch * pairs[0][0] * pairs[0][1]
    act_bytes = 4 * batch * sum(widths[1:-1])
    return {
        "fwd_flop": 2 * macs,
        "bwd_flop": 2 * bwd_macs,
        "fwd_bytes": 4 * batch * (widths[0] + widths[-1]) + act_bytes,
        "bwd_bytes": 4 * batch * (widths[0] + widths[-1]) + act_bytes,
    }


def _probe_case(widths, batch: int) -> dict:
    model, weights, biases, x = _network(widths, batch)
    forward, backward = _fused_calls(weights, biases, x)

    def eager_fwd_bwd():
        model(x).sum().backward()

    with torch.no_grad():
        eager_fwd_ms = do_bench(lambda: model(x))
    times = {
        "fused forward (mlp_fwd)": do_bench(forward),
        "fused backward (mlp_bwd + reduce)": do_bench(backward),
        "eager forward": eager_fwd_ms,
        "eager forward+backward (incl. sum)": do_bench(eager_fwd_bwd),
    }
    floors = _floors(widths, batch)
    fwd_ms, bwd_ms = times["fused forward (mlp_fwd)"], times["fused backward (mlp_bwd + reduce)"]
    return {
        "ms": {k: round(v, 4) for k, v in times.items()},
        "fused forward TFLOP/s": round(floors["fwd_flop"] / fwd_ms / 1e9, 2),
        "fused backward TFLOP/s": round(floors["bwd_flop"] / bwd_ms / 1e9, 2),
        "fused forward GB/s (floor bytes)": round(floors["fwd_bytes"] / fwd_ms / 1e6, 1),
        "fused backward GB/s (floor bytes)": round(floors["bwd_bytes"] / bwd_ms / 1e6, 1),
    }


# Candidate fp32 tiles for the Triton kernels, per (direction, padded width): forward
# (BLOCK_M, num_warps), backward (BLOCK_M, num_warps, DW_CHUNK, PROP_CHUNK[, ROW_CHUNK]), as in
# triton_kernels/mlp.py's _GPU_TILES. Each compiles for sm_90 without spills with triton 3.6 (the
# GPU machine's; ptxas, here); the comments give its registers per thread there, and the current
# tile's. The row-sliced backward tiles (ROW_CHUNK; tk.ROW_SLICED_BWD_TILES first) take 2-8x
# the rows, so a program reads and writes its weight-gradient partials 2-8x less often.
TRITON_TILE_CANDIDATES = {
    ("fwd", 32): [(32, 8), (64, 8), (128, 4), (128, 8)],  # 54, 70, 102, 98 registers; current (64, 4): 96
    ("fwd", 64): [(32, 4), (32, 8), (64, 8), (128, 8)],  # 80, 56, 80, 128; current (64, 4): 128
    # 223, 188 (row-sliced), 73, 100, 157, 201; current (16, 8, 16, 0): 98
    ("bwd", 32): [
        (128, 8, 16, 16, 16),
        (64, 8, 16, 0, 16),
        (16, 8, 16, 32),
        (16, 8, 32, 0),
        (16, 4, 16, 32),
        (32, 8, 16, 32),
    ],
    # 213, 229, 250 (row-sliced), 121, 218, 231, 229, 245; current (32, 8, 16, 32): 243
    ("bwd", 64): [
        (64, 8, 8, 16, 16),
        (64, 8, 16, 16, 16),
        (128, 8, 16, 16, 16),
        (16, 8, 8, 16),
        (32, 8, 8, 16),
        (16, 8, 16, 0),
        (16, 8, 32, 32),
        (16, 4, 16, 32),
    ],
}


# Tiles for the tf32x3 experiment (fp32 dots on tensor cores as 3xTF32, tk.FP32_DOT_PRECISION),
# timed after the current fp32 tile with tf32x3. Each compiles for sm_90 without spills with
# triton 3.8 here (registers in the comments; the current tile's: forward 96 / 227, backward
# 157 / 216 at W = 32 / 64); the fp16/bf16 tiles spilled 928-1552 bytes in the backward.
TF32X3_TILE_CANDIDATES = {
    ("fwd", 32): [(128, 8), (64, 8)],  # 111, 76
    ("fwd", 64): [(128, 8), (64, 8)],  # 201, 134
    ("bwd", 32): [(32, 8, 16, 0), (64, 8, 16, 32)],  # 228, 246
    ("bwd", 64): [(64, 8, 16, 32), (16, 8, 16, 0)],  # 255, 233
}


def _triton_case(widths, batch: int) -> dict:
    from fusedmlp.triton_kernels import mlp as tk

    _, weights, biases, x = _network(widths, batch)
    width = tk._padded_width(widths)
    out, acts = tk.mlp_fwd_triton(x, weights, biases)
    grad = torch.randn_like(out)
    wanted = [True] * len(weights)
    timings = {}
    for direction in ("fwd", "bwd"):
        current = tk._GPU_TILES[direction]["fp32"][width]
        candidates = [("ieee", tile) for tile in [current, *TRITON_TILE_CANDIDATES.get((direction, width), [])]]
        candidates += [("tf32x3", tile) for tile in [current, *TF32X3_TILE_CANDIDATES.get((direction, width), [])]]
        for precision, tile in candidates:
            tk._GPU_TILES[direction]["fp32"][width] = tile
            tk.FP32_DOT_PRECISION = precision
            label = f"{direction} {tile}" + ("" if precision == "ieee" else f" {precision}")
            try:
                if direction == "fwd":
                    ms = do_bench(lambda: tk.mlp_fwd_triton(x, weights, biases))
                else:
                    ms = do_bench(lambda: tk.mlp_bwd_triton(grad, x, weights, acts, False, wanted, wanted))
                current_label = " (current)" if (precision, tile) == ("ieee", current) else ""
                timings[label + current_label] = round(ms, 4)
            except Exception as error:  # a candidate that fails to compile or launch is reported
                timings[label] = f"{type(error).__name__}: {error}"[:300]
            finally:
                tk._GPU_TILES[direction]["fp32"][width] = current
                tk.FP32_DOT_PRECISION = "ieee"
    return {"padded width": width, "ms": timings}


def triton_tiles() -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    return {name: _triton_case(widths, batch) for name, widths, batch in GPU_CASES_QUICK}


def main() -> dict:
    torch.backends.cuda.matmul.allow_tf32 = False
    return {name: _probe_case(widths, batch) for name, widths, batch in GPU_CASES_QUICK}


def kernel_only() -> None:
    _, widths, batch = GPU_CASES_QUICK[-1]
    _, weights, biases, x = _network(widths, batch)
    forward, backward = _fused_calls(weights, biases, x)
    for _ in range(3):
        forward()
        backward()
    if DEVICE == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--kernel-only", action="store_true")
    mode.add_argument("--triton-tiles", action="store_true")
    args = parser.parse_args()
    if args.kernel_only:
        kernel_only()
    elif args.triton_tiles:
        print(json.dumps(triton_tiles(), indent=1))
    else:
        print(json.dumps(main(), indent=1))
