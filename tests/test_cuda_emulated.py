"""The CUDA C++ kernels, run on the CPU: no GPU needed.

csrc/cuda/mlp.cu (the whole-network forward, backward and gradient reduction, fp32 / fp64 on
CUDA cores and fp16 / bf16 on tensor cores), csrc/cuda/sgd.cu (the SGD step, every dtype) and
csrc/cuda/linear_relu.cu (the CUDA-core GEMM with its epilogues, split-K and bias gradient,
fp32 / fp64) are cut at their "Host side" divider, and the device part is compiled with g++
against tests/cuda_emulation/cuda_emulation.h: a thread block runs as one std::thread per CUDA
thread, `__syncthreads()` / `__syncwarp()` are barriers of the block / warp, blocks run in turn,
nvcuda::wmma works on whole 16x16 tiles per lane, and PTX's TF32 mma.sync (the tf32x3 build's
fp32 products) through its documented fragment layouts, the warp's lanes exchanging operands.
tests/cuda_emulation/*_emulated.cpp launch the kernels as the CUDA host side does (the grid, the
dynamic shared memory, the persistent backward grid and its reduction, the SGD table, the
split-K plan), and the results are compared with PyTorch here.

What this verifies without a GPU: the kernels' indexing, tiling, padding and trimming, the ReLU
masks, the per-block partials and their fixed-order reduction, the SGD table's block search,
Linear+ReLU's strided and masked operand views and its split-K plan, the MLP's tensor-core
fragments, staging and epilogues, and that no thread waits at a barrier the others of its block
or warp skip. What it cannot: warp shuffles (csrc/cuda/cross_entropy.cu), the hardware's own
wmma fragment layouts and tensor-core summation order (mma.sync's layouts are emulated as the
PTX ISA documents them, which CUTLASS's CuTe traits agree with; a misreading shared by the kernel
and the emulation would pass here), the CUDA host code (streams, guards,
occupancy), the GPU's memory model and timing; those are the GPU-marked tests'
(tests/test_cuda_mlp.py, tests/test_sgd.py, tests/test_linear_relu.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from support import MLP_BUILD_OPTIONS, close_to_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "tests", "cuda_emulation")
# The csrc/cuda files whose device part runs here, each launched by tests/cuda_emulation/<name>_emulated.cpp.
EMULATED_FILES = ("mlp.cu", "sgd.cu", "linear_relu.cu")

pytestmark = pytest.mark.slow


def _nvcc_include_dirs() -> list[str]:
    """The folders nvcc itself compiles with (the toolkit's headers), from its dry run."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return []
    dryrun = subprocess.run(
        [nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull], capture_output=True, text=True, timeout=60
    ).stderr
    dirs = []
    for key in ("INCLUDES", "SYSTEM_INCLUDES"):
        match = re.search(rf'^#\$ {key}="?(.*?)"?\s*$', dryrun, re.MULTILINE)
        if match:
            dirs += re.findall(r'"?(/[^"\s]+)"?', match.group(1))
    return [d for d in dirs if os.path.isdir(d)]


def _nvidia_wheel_include_dirs() -> list[str]:
    """Headers torch's CUDA headers include (cusparse.h, ...) ship in the nvidia-* wheels."""
    try:
        import nvidia
    except ImportError:
        return []
    dirs = {os.path.join(root, d, "include") for root in nvidia.__path__ for d in os.listdir(root)}
    return sorted(d for d in dirs if os.path.isdir(d))


def _device_part(cu_file: str) -> str:
    """`cu_file` above its "Host side" divider, with the emulation included after its own
    #includes (so that the emulation's macros stay out of CUDA's and torch's headers) and its
    dynamic shared memory declaration made the emulation's. #line keeps compiler messages
    pointing at the .cu file."""
    path = os.path.join(ROOT, "csrc", "cuda", cu_file)
    with open(path) as f:
        lines = f.read().split("\n")
    divider = next(i for i, line in enumerate(lines) if line.startswith("// Host side")) - 1
    if not lines[divider].startswith("// ---"):
        raise RuntimeError(f"{cu_file}: the 'Host side' comment is expected under a '// ---' divider")
    device = lines[:divider]
    last_include = max(i for i, line in enumerate(device) if line.startswith("#include"))
    text = "\n".join(
        [f'#line 1 "{path}"']
        + device[: last_include + 1]
        + ['#include "cuda_emulation.h"', f'#line {last_include + 2} "{path}"']
        + device[last_include + 1 :]
    )
    text = re.sub(r"extern __shared__[^;]*?unsigned char (\w+)\[\];", r"FUSEDMLP_EMULATED_DYNAMIC_SHARED(\1);", text)
    return text + "\n"


def build_emulated(generated_dir, build_dir, variant: str = "default"):
    """The emulated kernels as a Python module (about 30 s of g++), or None without the CUDA
    toolkit's headers; `variant`: "default", or a key of MLP_BUILD_OPTIONS for mlp.cu as setup.py
    builds it with that option set to 1."""
    toolkit = _nvcc_include_dirs()
    if not toolkit:
        return None
    from torch.utils.cpp_extension import load

    for cu_file in EMULATED_FILES:
        name = cu_file.replace(".cu", "_device.inc")
        with open(os.path.join(generated_dir, name), "w") as f:
            f.write(_device_part(cu_file))
    sources = [os.path.join(HARNESS, f.replace(".cu", "_emulated.cpp")) for f in EMULATED_FILES]
    sources.append(os.path.join(HARNESS, "bindings.cpp"))
    options = [f"-D{flag}={int(key == variant)}" for key, flag in MLP_BUILD_OPTIONS.items()]
    return load(
        name="fusedmlp_cuda_emulated" + ("" if variant == "default" else f"_{variant}"),
        sources=sources,
        extra_include_paths=[str(generated_dir), HARNESS, os.path.join(ROOT, "csrc", "include")]
        + toolkit
        + _nvidia_wheel_include_dirs(),
        extra_cflags=["-O2", "-std=c++20", "-Wno-attributes", *options],
        build_directory=str(build_dir),
        verbose=False,
    )


_MODULES: dict[str, object] = {}


def _emulated_module(tmp_path_factory, variant: str):
    if variant not in _MODULES:
        _MODULES[variant] = build_emulated(
            tmp_path_factory.mktemp("cuda_emulation"), tmp_path_factory.mktemp("cuda_emulation_build"), variant
        )
    if _MODULES[variant] is None:
        pytest.skip("needs the CUDA toolkit's headers (nvcc on PATH)")
    return _MODULES[variant]


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    return _emulated_module(tmp_path_factory, "default")


# The MLP kernels as built by default and in each experimental build: with 16-byte shared loads
# (same bits), and with fp32 on tensor cores as 3xTF32 (fp32's accuracy, other bits).
@pytest.fixture(scope="module", params=["default", *MLP_BUILD_OPTIONS])
def emulated_mlp(request, tmp_path_factory):
    return _emulated_module(tmp_path_factory, request.param)


# ---------------------------------------------------------------------------------------
# Whole-network MLP (csrc/cuda/mlp.cu)

# Padded tile widths 16, 32, 64 and 128; layers narrower than the tile (trimmed products);
# batches of one row, exactly one 64-row fp32 tile, and not a tile multiple; eight layers.
NETWORKS = [
    pytest.param((16, 16), 64, id="16-16"),
    pytest.param((2, 30, 20, 2), 100, id="2-30-20-2"),
    pytest.param((50, 30, 20, 3), 1, id="50-30-20-3_one_row"),
    pytest.param((64, 64, 64, 64, 64), 130, id="64x4"),
    pytest.param((3, 100, 70, 40, 9), 65, id="3-100-70-40-9"),
    pytest.param((128, 5, 128), 33, id="128-5-128"),
    pytest.param((5, 9, 4, 16, 3, 7, 2, 11, 6), 40, id="8_layers"),  # the most the kernels cover
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float64, id="fp64")]


def _network(widths, dtype, bias, seed=0):
    gen = torch.Generator().manual_seed(seed)
    layers = list(zip(widths[:-1], widths[1:]))
    weights = [(torch.rand(o, i, generator=gen, dtype=torch.float64) * 2 - 1) / i**0.5 for i, o in layers]
    biases = [torch.rand(o, generator=gen, dtype=torch.float64) - 0.5 for _, o in layers] if bias else []
    return [w.to(dtype) for w in weights], [b.to(dtype) for b in biases]


def _sequential(x, weights, biases):
    """nn.Sequential(Linear, ReLU, ..., Linear): every layer's output."""
    outputs = []
    for i, w in enumerate(weights):
        x = F.linear(x, w, biases[i] if biases else None)
        if i + 1 < len(weights):
            x = torch.relu(x)
        outputs.append(x)
    return outputs


def _sequential_grads(x, weights, biases, grad_output):
    """[input gradient, weight gradients..., bias gradients...] of nn.Sequential's ops."""
    leaves = [t.detach().clone().requires_grad_() for t in [x, *weights, *biases]]
    out = _sequential(leaves[0], leaves[1 : 1 + len(weights)], leaves[1 + len(weights) :])[-1]
    out.backward(grad_output)
    return [leaf.grad for leaf in leaves]


def _mlp_bwd(module, grad_output, x, weights, outputs, bias, blocks):
    """Every gradient, as the fused MLP's autograd asks for them in a training step."""
    layers = len(weights)
    return module.mlp_bwd(
        grad_output, x, weights, outputs[:-1], True, [True] * layers, [bias] * layers if bias else [], blocks
    )


# Error floors against the float64 reference, on top of twice torch's own error in the dtype.
FLOORS = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def _check_mlp_against_sequential(module, widths, rows, dtype, bias):
    """Forward (every layer's output) and backward (input, weight and bias gradients) against
    nn.Sequential's ops, in the dtype and against float64 (close_to_reference); the backward
    with a persistent grid of 2 blocks, so a block walks several tiles where there are."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(rows, widths[0], generator=gen, dtype=torch.float64)
    weights, biases = _network(widths, torch.float64, bias)
    grad_output = torch.randn(rows, widths[-1], generator=gen, dtype=torch.float64)
    cast = [t.to(dtype) for t in [x, *weights, *biases, grad_output]]
    x_d, w_d, b_d, go_d = cast[0], cast[1 : 1 + len(weights)], cast[1 + len(weights) : -1], cast[-1]

    outputs = module.mlp_fwd(x_d, w_d, b_d)
    reference, same_dtype = _sequential(x, weights, biases), _sequential(x_d, w_d, b_d)
    for ours, ref, theirs in zip(outputs, reference, same_dtype):
        close_to_reference(ours, ref, theirs, floor=FLOORS[dtype], terms=max(widths))

    grads = _mlp_bwd(module, go_d, x_d, w_d, outputs, bias, 2)
    reference = _sequential_grads(x, weights, biases, grad_output)
    same_dtype = _sequential_grads(x_d, w_d, b_d, go_d)
    assert len(grads) == len(reference)
    for ours, ref, theirs in zip(grads, reference, same_dtype):
        close_to_reference(ours, ref, theirs, floor=FLOORS[dtype], terms=max(rows, 128))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("widths,rows", NETWORKS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_mlp_kernels_match_sequential(emulated_mlp, widths, rows, dtype, bias):
    """The CUDA-core kernels (fp32, fp64) in every build; the tf32x3 build's fp32 on tensor
    cores, 16x16x8 TF32 fragments, each operand split in two."""
    _check_mlp_against_sequential(emulated_mlp, widths, rows, dtype, bias)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("widths,rows", NETWORKS)
def test_mlp_tensor_core_kernels_match_sequential(emulated, widths, rows, dtype):
    """The tensor-core kernels (fp16, bf16; wmma emulated 16x16x16 tiles): fragments per warp,
    the staging of accumulators through shared memory, the epilogues and masks, the weight
    gradient's strips."""
    _check_mlp_against_sequential(emulated, widths, rows, dtype, bias=True)


@pytest.mark.parametrize("blocks", [1, 3, 5])
def test_mlp_backward_partials_reduce_in_a_fixed_order(emulated_mlp, blocks):
    """The persistent grid's blocks each keep their own partial weight and bias gradients over
    the tiles they walk (5 blocks for 5 tiles: one each; 1: all of them), and the reduction adds
    them in a fixed order: the same result at every grid size up to rounding, and bitwise the
    same on a second run."""
    widths, rows = (2, 30, 20, 2), 5 * 64 - 7
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(rows, widths[0], generator=gen)
    weights, biases = _network(widths, torch.float32, bias=True)
    grad_output = torch.randn(rows, widths[-1], generator=gen)
    outputs = emulated_mlp.mlp_fwd(x, weights, biases)
    first = _mlp_bwd(emulated_mlp, grad_output, x, weights, outputs, True, blocks)
    second = _mlp_bwd(emulated_mlp, grad_output, x, weights, outputs, True, blocks)
    reference = _sequential_grads(
        x.double(), [w.double() for w in weights], [b.double() for b in biases], grad_output.double()
    )
    for a, b, ref in zip(first, second, reference):
        assert torch.equal(a, b)
        torch.testing.assert_close(a.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "input_grad,weight_mask,bias_mask",
    [
        (False, [False, True, False], [False, False, True]),  # frozen first layer: it is not visited
        (True, [False, False, False], [False, False, False]),  # input gradient only
        (False, [True, False, False], [False, True, False]),
    ],
    ids=["frozen_first_layer", "input_only", "first_weight_and_middle_bias"],
)
def test_mlp_backward_computes_only_wanted_gradients(emulated_mlp, input_grad, weight_mask, bias_mask):
    """Gradients that are not wanted come back empty and the ones that are match nn.Sequential,
    whichever layers the backward has to visit to reach them."""
    widths, rows = (50, 30, 20, 3), 130
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(rows, widths[0], generator=gen)
    weights, biases = _network(widths, torch.float32, bias=True)
    grad_output = torch.randn(rows, widths[-1], generator=gen)
    outputs = emulated_mlp.mlp_fwd(x, weights, biases)
    grads = emulated_mlp.mlp_bwd(grad_output, x, weights, outputs[:-1], input_grad, weight_mask, bias_mask, 2)
    reference = _sequential_grads(x, weights, biases, grad_output)
    for ours, ref, wanted in zip(grads, reference, [input_grad, *weight_mask, *bias_mask]):
        if wanted:
            torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
        else:
            assert ours.numel() == 0


def test_mlp_relu_mask_follows_threshold_backward(emulated_mlp):
    """A hidden unit whose ReLU output is exactly zero passes no gradient (threshold_backward's
    `activation <= 0`), a NaN output passes it; the forward keeps NaN, as torch.relu does."""
    widths = (4, 8, 3)
    weights, biases = _network(widths, torch.float32, bias=True)
    weights[0][0].zero_()
    biases[0][0] = 0.0  # unit 0: pre-activation exactly 0 for every row
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(3))
    x[5, 1] = float("nan")  # row 5: every hidden unit with a nonzero weight on input 1 is NaN
    outputs = emulated_mlp.mlp_fwd(x, weights, biases)
    torch.testing.assert_close(outputs[0], torch.relu(F.linear(x, weights[0], biases[0])), equal_nan=True)
    grad_output = torch.ones(64, 3)
    grads = _mlp_bwd(emulated_mlp, grad_output, x, weights, outputs, True, 1)
    hidden = F.linear(x, weights[0], biases[0]).requires_grad_()
    F.linear(torch.relu(hidden), weights[1], biases[1]).backward(grad_output)
    grad_hidden = hidden.grad
    assert (grad_hidden[torch.arange(64) != 5, 0] == 0).all()  # row 5's unit 0 is 0 * NaN
    torch.testing.assert_close(grads[0], grad_hidden @ weights[0], equal_nan=True)


def test_mlp_inf_input_stays_in_its_row(emulated_mlp):
    """An inf in one row's input gives torch's pattern of infs and NaNs in that row (an inf times
    a padded zero weight never reaches a real column), and finite values everywhere else; in the
    tf32x3 build too, whose operand split keeps an inf whole."""
    widths = (30, 30, 20, 2)
    weights, biases = _network(widths, torch.float32, bias=True)
    x = torch.randn(40, widths[0], generator=torch.Generator().manual_seed(9))
    x[3, 7] = float("inf")
    outputs = emulated_mlp.mlp_fwd(x, weights, biases)
    for ours, ref in zip(outputs, _sequential(x, weights, biases)):
        torch.testing.assert_close(ours, ref, equal_nan=True, rtol=1e-5, atol=1e-5)
    assert not torch.isfinite(outputs[0][3]).all()
    assert torch.isfinite(outputs[-1][torch.arange(40) != 3]).all()


# ---------------------------------------------------------------------------------------
# SGD step (csrc/cuda/sgd.cu)

SGD_OPTIONS = {
    "plain": dict(lr=0.1),
    "momentum": dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01),
    "everything": dict(lr=0.02, momentum=0.7, weight_decay=0.05, nesterov=True, maximize=True),
}

# 41 tensors (more than the 32 of the inline table), empty ones first, last and in runs, and
# sizes around the 4096-element blocks.
SGD_SIZES = [0, 0, 1, 4095, 4096, 4097, 0, 3, 8192 + 5, 0, 0, 17] + list(range(1, 30)) + [0]


def _sgd_reference(params, grads, steps, options):
    params = [p.detach().clone().requires_grad_() for p in params]
    optimizer = torch.optim.SGD(params, foreach=False, **options)
    for step in range(steps):
        for p, g in zip(params, grads[step]):
            p.grad = g.clone()
        optimizer.step()
    return [p.detach() for p in params], [optimizer.state[p].get("momentum_buffer") for p in params]


@pytest.mark.parametrize("options", list(SGD_OPTIONS.values()), ids=list(SGD_OPTIONS))
@pytest.mark.parametrize(
    "count,inline_table",
    [(19, True), (19, False), (41, False)],
    ids=["19_inline_table", "19_device_table", "41_device_table"],
)
def test_sgd_kernel_matches_torch_optim_sgd(emulated, options, count, inline_table):
    """Three steps (the first fills the momentum buffers) against torch.optim.SGD: every block
    finds its tensor, in the table passed by value (at most 32 tensors) and in the one in memory."""
    gen = torch.Generator().manual_seed(4)
    sizes = SGD_SIZES[:count]
    params = [torch.randn(n, generator=gen) for n in sizes]
    grads = [[torch.randn(n, generator=gen) for n in sizes] for _ in range(3)]
    expected, expected_buffers = _sgd_reference(params, grads, 3, options)
    ours = [p.clone() for p in params]
    momentum = options.get("momentum", 0.0)
    buffers = [torch.empty_like(p) for p in ours] if momentum else []
    for step in range(3):
        emulated.fused_sgd_(
            ours,
            grads[step],
            buffers,
            options.get("weight_decay", 0.0),
            momentum,
            options["lr"],
            options.get("dampening", 0.0),
            options.get("nesterov", False),
            options.get("maximize", False),
            step == 0,
            inline_table,
            None,
            None,
            None,
        )
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b)
    for a, b in zip(buffers, expected_buffers):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=["fp16", "bf16", "fp64"])
def test_sgd_kernel_other_dtypes(emulated, dtype):
    """fp16 / bf16 update in fp32 and round once, as close to the fp32 update as torch's own
    low-precision step; fp64 as torch."""
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(n, generator=gen, dtype=torch.float64) for n in (7, 4100)]
    grads = [torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in params]
    options = dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    ours = [p.to(dtype, copy=True) for p in params]
    buffers = [torch.empty_like(p) for p in ours]
    emulated.fused_sgd_(
        ours, [g.to(dtype) for g in grads], buffers, 0.01, 0.9, 0.1, 0.0, True, False, True, True, None, None, None
    )
    reference, _ = _sgd_reference([p.float() for p in params], [[g.float() for g in grads]], 1, options)
    same_dtype, _ = _sgd_reference([p.to(dtype) for p in params], [[g.to(dtype) for g in grads]], 1, options)
    for a, ref, theirs in zip(ours, reference, same_dtype):
        if dtype == torch.float64:
            torch.testing.assert_close(a, theirs)
        else:
            close_to_reference(a, ref, theirs)


def test_sgd_kernel_device_scalars(emulated):
    """lr as a tensor, gradients divided by grad_scale, and no step at all when found_inf is set
    (the amp GradScaler's arguments, read on the device)."""
    gen = torch.Generator().manual_seed(7)
    params = [torch.randn(n, generator=gen) for n in (5, 4097)]
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    ours = [p.clone() for p in params]
    scale = torch.tensor(4.0)
    emulated.fused_sgd_(
        ours,
        [g * 4 for g in grads],
        [],
        0.0,
        0.0,
        99.0,
        0.0,
        False,
        False,
        True,
        True,
        torch.tensor(0.1, dtype=torch.float64),
        scale,
        torch.tensor(0.0),
    )
    for a, p, g in zip(ours, params, grads):
        torch.testing.assert_close(a, p - 0.1 * g)
    before = [p.clone() for p in ours]
    emulated.fused_sgd_(ours, grads, [], 0.0, 0.0, 0.1, 0.0, False, False, True, False, None, None, torch.tensor(1.0))
    for a, b in zip(ours, before):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------
# Linear+ReLU (csrc/cuda/linear_relu.cu)

# (M, K, N, sms): one tile and a ragged edge; tiles at several K steps; a narrow output over a
# long reduction that a GPU of 8 SMs splits along K (8 splits of 1024) for both products over
# the batch.
LINEAR_SHAPES = [
    pytest.param(5, 3, 7, 132, id="5x3x7"),
    pytest.param(130, 70, 65, 132, id="130x70x65"),
    pytest.param(8192, 4, 3, 8, id="8192x4x3_split_k"),
]


ALL_DTYPES = DTYPES + [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")]


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("M,K,N,sms", LINEAR_SHAPES)
def test_linear_relu_kernels_match_torch(emulated, M, K, N, sms, dtype, relu):
    """Forward (bias and ReLU in the epilogue) and backward (input, weight and bias gradients
    through the masked gradient view), with a transposed weight as nn.Linear's .t() views give
    it, against torch in the dtype and float64: the CUDA-core GEMM for fp32 / fp64, the
    tensor-core one for fp16 / bf16."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(M, K, generator=gen, dtype=torch.float64)
    weight = torch.randn(K, N, generator=gen, dtype=torch.float64).t()  # [N, K], column-major
    bias = torch.randn(N, generator=gen, dtype=torch.float64)
    grad_output = torch.randn(M, N, generator=gen, dtype=torch.float64)

    def reference(x, weight, bias, grad_output):
        leaves = [t.detach().clone().requires_grad_() for t in (x, weight, bias)]
        out = F.linear(*leaves)
        out = torch.relu(out) if relu else out
        out.backward(grad_output)
        return [out.detach()] + [leaf.grad for leaf in leaves]

    x_d, w_d, b_d, go_d = (t.to(dtype) for t in (x, weight, bias, grad_output))
    out = emulated.linear_relu_fwd(x_d, w_d, b_d, relu, sms)
    grads = emulated.linear_relu_bwd(go_d, x_d, w_d, out, relu, sms)
    for ours, ref, theirs in zip(
        [out, *grads], reference(x, weight, bias, grad_output), reference(x_d, w_d, b_d, go_d)
    ):
        close_to_reference(ours, ref, theirs, floor=FLOORS[dtype], terms=max(M, K, N))


def test_emulation_covers_the_cuda_files_it_cuts():
    """Each emulated file keeps its "Host side" divider, and nothing above it launches or
    calls the CUDA runtime (that belongs to the host part, which the emulator does not build)."""
    for cu_file in EMULATED_FILES:
        device = _device_part(cu_file)
        assert "<<<" not in device and "cudaStream" not in device and "TORCH_LIBRARY" not in device, cu_file


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
