"""The build and the package without a GPU: CUDA kernels compiled in and registered,
spill-free by construction, importable without the extension, no stray top-level modules."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
import torch
from support import MLP_BUILD_OPTIONS, UNCOVERED_MLP_SHAPES

from fusedmlp import _backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_OPS = [
    "linear_relu_fwd",
    "linear_relu_bwd",
    "cross_entropy_fwd",
    "cross_entropy_fwd_inplace",
    "scale_grad_unless_one_",
    "cross_entropy_mean_denominator",
    "cross_entropy_reduce",
    "fused_sgd_",
    "mlp_fwd",
    "mlp_bwd",
]
CPU_OPS = CUDA_OPS
# Tile widths and dtypes (as they appear in mangled names) the fused MLP kernels are built for.
MLP_TILE_WIDTHS = (16, 32, 64, 128)
MLP_TENSOR_CORE_DTYPES = ("c104Half", "c108BFloat16")


def _cuda_build_expected() -> bool:
    return (
        shutil.which("nvcc") is not None
        and torch.version.cuda is not None
        and os.environ.get("FUSEDMLP_BUILD_CUDA", "auto") != "0"
    )


# Differentiable ops whose autograd is C++ (csrc/autograd/): an Autograd kernel, and a
# forward-only kernel below autograd for every device.
CPP_AUTOGRAD_OPS = ["linear_relu", "mlp", "cross_entropy"]


@pytest.mark.parametrize("op", CPP_AUTOGRAD_OPS)
def test_cpp_autograd_kernels_registered(op):
    assert _backend.HAS_EXTENSION, _backend._EXTENSION_ERROR
    for key in ("Autograd", "CompositeExplicitAutograd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedmlp::{op}", key), key


@pytest.mark.parametrize("op", CPU_OPS)
def test_cpu_kernels_registered(op):
    assert _backend.HAS_EXTENSION, _backend._EXTENSION_ERROR
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedmlp::{op}", "CPU")


@pytest.mark.parametrize("op", CPU_OPS)
def test_ops_that_write_their_arguments_bump_versions(op):
    """Every C++ op whose schema writes an argument (`Tensor(a!)`) has the ADInplaceOrView kernel
    that bumps its version counter (csrc/autograd/inplace_or_view.cpp), as ATen's in-place ops
    do: without it autograd misses the write (tests/test_sgd.py and test_cross_entropy.py check
    the behaviour)."""
    assert _backend.HAS_EXTENSION, _backend._EXTENSION_ERROR
    schema = torch._C._get_schema(f"fusedmlp::{op}", "")
    writes = any(arg.alias_info is not None and arg.alias_info.is_write for arg in schema.arguments)
    assert writes == schema.is_mutable
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedmlp::{op}", "ADInplaceOrView")
    assert has_kernel == writes, f"{op}: writes its arguments: {writes}, ADInplaceOrView kernel: {has_kernel}"


# Each Triton op and the C++ op it stands in for: one schema, so a backend is a choice of op name.
TRITON_TWINS = {
    "linear_relu_fwd_triton": "linear_relu_fwd",
    "linear_relu_bwd_triton": "linear_relu_bwd",
    "cross_entropy_fwd_triton": "cross_entropy_fwd",
    "cross_entropy_fwd_inplace_triton": "cross_entropy_fwd_inplace",
    "scale_grad_unless_one_triton": "scale_grad_unless_one_",
    "fused_sgd_triton_": "fused_sgd_",
    "mlp_fwd_triton": "mlp_fwd",
    "mlp_bwd_triton": "mlp_bwd",
}


@pytest.mark.parametrize("triton_op", TRITON_TWINS)
def test_triton_ops_have_their_cpp_twins_schema(triton_op):
    if not _backend.HAS_TRITON:
        pytest.skip("no Triton here")
    assert _backend.HAS_EXTENSION, _backend._EXTENSION_ERROR
    cpp_op = TRITON_TWINS[triton_op]
    triton_schema = torch._C._get_schema(f"fusedmlp::{triton_op}", "")
    cpp_schema = torch._C._get_schema(f"fusedmlp::{cpp_op}", "")
    assert str(triton_schema).replace(triton_op, cpp_op, 1) == str(cpp_schema)
    # Defined from the schema (fusedmlp/ops/_triton_registration.py), not torch.library.custom_op,
    # whose Python kernels on the Autograd key and around the backend cost more than small kernels.
    ops_with_operator_autograd = ("linear_relu_fwd_triton", "cross_entropy_fwd_triton")
    has_autograd = torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedmlp::{triton_op}", "Autograd")
    assert has_autograd == (triton_op in ops_with_operator_autograd)


@pytest.mark.parametrize("op", CUDA_OPS)
def test_cuda_kernels_registered(op):
    if not _cuda_build_expected():
        pytest.skip("no nvcc or no CUDA build of torch here, so the CUDA kernels are not built")
    assert _backend.HAS_CUDA_KERNELS, "nvcc is present but fusedmlp._C was built without CUDA kernels"
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedmlp::{op}", "CUDA")


def test_extension_exports_no_cxx_runtime():
    """_C must not export a libstdc++ of its own: where the compiler links libstdc++ statically
    (the H200 machine), the exported copy's references got bound to torch's libstdc++.so and
    every TORCH_CHECK message that formatted a number segfaulted. setup.py hides static
    archives' symbols (--exclude-libs). Two of the runtime's own functions stand for all."""
    from fusedmlp import _C

    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) not found")
    exported = subprocess.run([nm, "-D", "--defined-only", _C.__file__], capture_output=True, text=True, check=True)
    runtime = ("_ZNSo9_M_insertIlEERSoT_", "_ZNSt6locale7classicEv")  # ostream << long, locale::classic
    leaked = [line for line in exported.stdout.splitlines() if line.split()[-1] in runtime]
    assert not leaked, f"{_C.__file__} exports libstdc++'s own symbols:\n" + "\n".join(leaked)


def test_cpp_error_messages_format_numbers():
    """The symptom of an exported second libstdc++: numbers in C++ error messages came out empty
    (here, with -static-libstdc++) or crashed the process (the H200 machine)."""
    with pytest.raises(RuntimeError, match=r"layer 0: mat1 and mat2 shapes cannot be multiplied \(3x4 and 6x5\)"):
        torch.ops.fusedmlp.mlp_fwd(torch.ones(3, 4), [torch.ones(5, 6)], [])


def test_ptxas_rejects_spills():
    """Every CUDA kernel built into fusedmlp._C compiled with ptxas --warn-on-spills
    --warning-as-error, so a kernel that spills registers fails the build instead of shipping."""
    with open(os.path.join(ROOT, "setup.py")) as f:
        source = f.read()
    assert 'PTXAS_FLAGS = "-Xptxas=--warn-on-spills,--warning-as-error"' in source
    assert "PTXAS_FLAGS]" in source  # passed to nvcc


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd="/",  # away from the source tree, so only the installed package is importable
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_import_without_extension_says_how_to_fix():
    """Without the compiled extension "auto" runs the torch reference and says so (one
    RuntimeWarning naming the import error and the fix); asking for "cpu" raises with both."""
    code = (
        "import sys; sys.modules['fusedmlp._C'] = None\n"  # makes `from fusedmlp import _C` fail
        "import torch, fusedmlp\n"
        "backends = fusedmlp.available_backends('cpu')\n"
        "assert 'cpu' not in backends and backends[0] == 'torch', backends\n"
        "x = torch.randn(2, 3); w = torch.randn(4, 3)\n"
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    for _ in range(2):\n"
        "        assert fusedmlp.functional.linear_relu(x, w, backend='auto').shape == (2, 4)\n"
        "messages = [str(w.message) for w in caught]\n"
        "assert len(messages) == 1, messages\n"
        "assert 'plain-PyTorch reference' in messages[0] and 'pip install' in messages[0], messages\n"
        "try:\n"
        "    fusedmlp.functional.linear_relu(x, w, backend='cpu')\n"
        "except RuntimeError as e:\n"
        "    assert 'failed to import' in str(e) and 'pip install' in str(e), str(e)\n"
        "else:\n"
        "    raise SystemExit('backend=cpu ran without the extension')\n"
    )
    result = _run_python(code)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow
def test_no_top_level_triton_kernels_module():
    result = _run_python(
        "import importlib.util, fusedmlp.triton_kernels\n"
        "assert importlib.util.find_spec('triton_kernels') is None\n"
        "print(fusedmlp.triton_kernels.__name__)"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fusedmlp.triton_kernels"


def _cuobjdump() -> str | None:
    """cuobjdump from PATH, the CUDA toolkit, or the copy Triton ships."""
    candidates = [shutil.which("cuobjdump")]
    if os.environ.get("CUDA_HOME"):
        candidates.append(os.path.join(os.environ["CUDA_HOME"], "bin", "cuobjdump"))
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.origin is not None:
        candidates.append(os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump"))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _cuobjdump_by_arch_and_function(option: str, binary: str | None = None) -> dict[str, dict[str, str]]:
    """{"sm_80": {mangled kernel name: its part of `cuobjdump <option>`}, ...} for every kernel in
    `binary` (default: fusedmlp._C; -sass: its SASS; -res-usage: its resource line); skips the
    test without CUDA kernels or a cuobjdump."""
    if not _backend.HAS_CUDA_KERNELS:
        pytest.skip("fusedmlp._C was built without CUDA kernels")
    tool = _cuobjdump()
    if tool is None:
        pytest.skip("no cuobjdump (CUDA toolkit or Triton's copy) to read the CUDA kernels")
    if binary is None:
        from fusedmlp import _C

        binary = _C.__file__
    result = subprocess.run([tool, option, binary], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    kernels: dict[str, dict[str, str]] = {}
    arch = function = None
    for line in result.stdout.splitlines():
        arch_match = re.match(r"\s*arch = (sm_\d+)", line)
        # "Function : <name>" in -sass, "Function <name>:" in -res-usage
        function_match = re.match(r"\s*Function(?: :)? (\S+?):?\s*$", line)
        if arch_match:
            arch, function = arch_match.group(1), None
        elif function_match and arch is not None:
            function = function_match.group(1)
            kernels.setdefault(arch, {})[function] = ""
        elif function is not None:
            kernels[arch][function] += line + "\n"
    return kernels


def _mlp_kernel(kernels: dict[str, str], name: str, dtype: str, width: int) -> str:
    # Itanium mangling of name<dtype, width>: ...<name>I<dtype>Li<width>EE...; dtype is
    # N3c104HalfE / N3c108BFloat16E for the c10 types, f / d for float / double.
    pattern = re.compile(rf"{name}I(N3{dtype}E|{dtype})Li{width}E")
    matches = [sass for function, sass in kernels.items() if pattern.search(function)]
    assert len(matches) == 1, f"expected one {name}<{dtype}, {width}> kernel, found {len(matches)}"
    return matches[0]


@pytest.mark.slow
def test_fused_mlp_kernels_built_for_sm80_sm90_with_tensor_cores():
    """The whole-network MLP kernels exist for sm_80 and sm_90 for every dtype and tile width;
    the fp16 / bf16 ones multiply on tensor cores (HMMA), the fp32 ones do not (no TF32), and
    the fp64 ones use fp64 FMAs (DFMA)."""
    kernels_by_arch = _cuobjdump_by_arch_and_function("-sass")
    for arch in ("sm_80", "sm_90"):
        assert arch in kernels_by_arch, f"no {arch} code in fusedmlp._C: {sorted(kernels_by_arch)}"
        kernels = kernels_by_arch[arch]
        for name in ("mlp_fwd_kernel", "mlp_bwd_kernel"):
            for width in MLP_TILE_WIDTHS:
                for dtype in MLP_TENSOR_CORE_DTYPES:
                    assert "HMMA" in _mlp_kernel(kernels, name, dtype, width), f"{arch} {name}<{dtype}, {width}>"
                sass_fp32 = _mlp_kernel(kernels, name, "f", width)
                assert "HMMA" not in sass_fp32 and "FFMA" in sass_fp32, f"{arch} {name}<float, {width}>"
                assert "DFMA" in _mlp_kernel(kernels, name, "d", width), f"{arch} {name}<double, {width}>"


# Resident blocks per SM (128 threads each) that the fp32 whole-network kernels were measured
# with on the H200 at tile widths 32 and 64 (the benchmark's networks; 16 is held to the same),
# and must keep: the forward at 5 (a version at 110-128 registers, 4 blocks, ran up to 7% slower
# there, bench/results/gpu/mlp_probe.json); the backward at 4, its persistent grid's blocks per
# SM (shared memory allows no more at W = 64).
FP32_MLP_RESIDENT_BLOCKS = {"mlp_fwd_kernel": 5, "mlp_bwd_kernel": 4}


@pytest.mark.slow
def test_fp32_mlp_kernels_keep_their_measured_occupancy():
    """The fp32 whole-network kernels fit the registers of the occupancy they were measured at:
    a change that adds registers (as 16-byte loads did) shows here, on the CPU, before a GPU
    run shows it slower. Registers are allocated per warp in units of 256 (8 per thread)."""
    usage_by_arch = _cuobjdump_by_arch_and_function("-res-usage")
    for arch in ("sm_80", "sm_90"):
        _assert_fp32_mlp_kernels_fit_their_occupancy(usage_by_arch[arch], arch)


def _assert_fp32_mlp_kernels_fit_their_occupancy(usage: dict[str, str], label: str) -> None:
    """`usage`: one architecture's `cuobjdump -res-usage` lines by kernel."""
    for name, blocks in FP32_MLP_RESIDENT_BLOCKS.items():
        budget = 65536 // (blocks * 128) // 8 * 8
        for width in (16, 32, 64):
            registers = int(re.search(r"REG:(\d+)", _mlp_kernel(usage, name, "f", width)).group(1))
            assert registers <= budget, (
                f"{label} {name}<float, {width}> uses {registers} registers: more than {budget}, "
                f"so fewer than {blocks} blocks fit an SM"
            )


def _ninja_variable(build_ninja: str, name: str) -> list[str]:
    """A variable of build.ninja as the arguments the shell makes of it."""
    with open(build_ninja) as f:
        match = re.search(rf"^{name} = (.*)$", f.read(), re.MULTILINE)
    return shlex.split(match.group(1)) if match else []


# What the fp32 kernels of each experimental MLP build (support.MLP_BUILD_OPTIONS) multiply with.
MLP_BUILD_FP32_PRODUCTS = {
    "vector_loads": "FFMA",  # 16-byte shared loads, fp32 FMAs
    "tf32x3": "HMMA.1688.F32.TF32",  # fp32 as 3xTF32 on tensor cores (mma.sync m16n8k8)
}


@pytest.mark.slow
@pytest.mark.parametrize("build", list(MLP_BUILD_OPTIONS))
def test_mlp_build_option_compiles_at_the_measured_occupancy(tmp_path, build):
    """An experimental build of csrc/cuda/mlp.cu compiles for sm_90 without spills, its fp32
    kernels multiply as the option says, and they fit the registers of the default's occupancy;
    compiled here with the flags of this checkout's own build (build/temp/build.ninja)."""
    build_ninja = os.path.join(ROOT, "build", "temp", "build.ninja")
    if not _backend.HAS_CUDA_KERNELS or not os.path.exists(build_ninja):
        pytest.skip("needs this checkout's CUDA build (build/temp/build.ninja)")
    flags = _ninja_variable(build_ninja, "cuda_cflags") + [
        f
        for f in _ninja_variable(build_ninja, "cuda_post_cflags")
        if not f.startswith(("-gencode", *(f"-D{o}" for o in MLP_BUILD_OPTIONS.values())))
    ]
    obj = str(tmp_path / "mlp.o")
    option = MLP_BUILD_OPTIONS[build]
    command = ["nvcc", *flags, "-gencode=arch=compute_90,code=sm_90", f"-D{option}=1"]
    result = subprocess.run(
        [*command, "-c", os.path.join(ROOT, "csrc", "cuda", "mlp.cu"), "-o", obj],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sass = _cuobjdump_by_arch_and_function("-sass", obj)["sm_90"]
    product = MLP_BUILD_FP32_PRODUCTS[build]
    for name in FP32_MLP_RESIDENT_BLOCKS:
        for width in (16, 32, 64, 128):
            assert product in _mlp_kernel(sass, name, "f", width), f"{option}: {name}<float, {width}>"
    usage = _cuobjdump_by_arch_and_function("-res-usage", obj)["sm_90"]
    _assert_fp32_mlp_kernels_fit_their_occupancy(usage, f"{option}, sm_90")


@pytest.mark.slow
def test_sgd_kernels_read_the_inline_table_in_place():
    """The CUDA SGD step passes a small group's table in the kernel's arguments and each block
    indexes it at run time (csrc/cuda/sgd.cu): it must read the entries where they are (LDC),
    with no stack frame or local memory holding a per-thread copy of the 1.3 KB table."""
    usage_by_arch = _cuobjdump_by_arch_and_function("-res-usage")
    for arch in ("sm_80", "sm_90"):
        inline = {
            name: usage
            for name, usage in usage_by_arch[arch].items()
            if "fused_sgd_kernel" in name and "InlineTable" in name
        }
        assert len(inline) == 4, f"{arch}: expected the inline-table SGD kernel for 4 dtypes, found {sorted(inline)}"
        for name, usage in inline.items():
            assert re.search(r"STACK:0\b", usage) and re.search(r"LOCAL:0\b", usage), f"{arch} {name}: {usage}"


@pytest.mark.parametrize("widths,match", UNCOVERED_MLP_SHAPES)
def test_cuda_mlp_host_checks_reject_uncovered_shapes_without_a_gpu(widths, match):
    """The CUDA MLP kernels' host-side coverage checks, run here without a GPU: fake CUDA tensors
    (shapes and device, no memory) sent to the CUDA dispatch key (directly, and through the
    autograd fallback), so the kernels' host code runs up to the check and raises. (On the
    first H200 run the first of these calls crashed the process; this shows the host path
    itself raises cleanly, with the torch here.)"""
    if not (_backend.HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("fusedmlp::mlp_fwd", "CUDA")):
        pytest.skip("fusedmlp._C was built without CUDA kernels")
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(3, widths[0], device="cuda")
        weights = [torch.empty(n_out, n_in, device="cuda") for n_in, n_out in zip(widths[:-1], widths[1:])]
        biases = [torch.empty(n_out, device="cuda") for n_out in widths[1:]]
        activations = [torch.empty(3, n, device="cuda") for n in widths[1:-1]]
        grad_output = torch.empty(3, widths[-1], device="cuda")
    cuda = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    # Straight to the kernel, and through the autograd fallback first, as a real call goes.
    keysets = [cuda, cuda | torch._C.DispatchKeySet(torch._C.DispatchKey.AutogradCUDA)]
    layers = len(weights)
    calls = {
        "mlp_fwd": (x, weights, biases),
        "mlp_bwd": (grad_output, x, weights, activations, True, [True] * layers, [True] * layers),
    }
    for keyset in keysets:
        for op, args in calls.items():
            with pytest.raises(RuntimeError, match=match) as error:
                getattr(torch.ops.fusedmlp, op).default._handle.redispatch_boxed(keyset, *args)
            assert str(error.value).startswith(f"{op}: ") and "layer by layer" in str(error.value)


@pytest.mark.slow
def test_gpu_error_probe_runs_here():
    """The GPU kit's C++ errors probe (bench/gpu_error_probe.py) works before a GPU run needs
    it: its CPU cases raise RuntimeError cleanly, from torch and from the extension's C++
    files, and its GPU cases are skipped here."""
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "gpu_error_probe.py")], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    cases = result.stdout.split("-- toolchain")[0]
    lines = dict(line.split(": ", 1) for line in cases.splitlines() if line.startswith(("torch ", "fusedmlp ")))
    assert lines["torch on CPU (ATen)"].startswith("raised RuntimeError")
    assert lines["fusedmlp csrc/cpu (mlp_fwd, shape check)"].startswith("raised RuntimeError: mlp: layer 0")
    assert lines["fusedmlp csrc/autograd (mlp, shape check)"].startswith("raised RuntimeError: mlp: layer 0")
    if not torch.cuda.is_available():
        assert lines["fusedmlp csrc/cuda/mlp.cu (coverage check, the first run's crash)"] == "skipped (no GPU)"
    assert "CRASH" not in result.stdout
    assert "-- toolchain" in result.stdout
