"""Helpers for the tests: which (backend, device) pairs to run, tolerances, and the Triton
ahead-of-time compile runner shared by every Triton kernel module's build check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fusedmlp import _backend

# Every (backend, device) pair that can exist. Pairs that cannot run in this process are
# skipped with the reason fusedmlp itself gives, so a missing build is visible in the report.
_PAIRS = [
    ("cpu", "cpu"),
    ("torch", "cpu"),
    ("triton", "cpu"),
    ("cuda", "cuda"),
    ("triton", "cuda"),
    ("torch", "cuda"),
]


# Where the kernel-level Triton tests run: CUDA tensors on a GPU, CPU tensors under the Triton
# interpreter (tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported when no GPU
# is present), or nowhere.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_DEVICE = "cpu" if TRITON_INTERPRET else ("cuda" if torch.cuda.is_available() else None)
needs_triton_runtime = pytest.mark.skipif(
    TRITON_DEVICE is None,
    reason="Triton kernels need a CUDA device or TRITON_INTERPRET=1 (set by tests/conftest.py "
    "before triton is imported when no GPU is present)",
)
# The interpreter (Triton 3.8) keeps bf16 as raw uint16 and runs tl.dot and comparisons on
# those bits, so bf16 results there are garbage for reasons that have nothing to do with our
# kernels. bf16 is covered on GPU and by the AOT compile.
skip_bf16_under_interpreter = pytest.mark.skipif(
    TRITON_INTERPRET, reason="Triton interpreter computes bf16 dot/compare on raw bits"
)


def backend_device_params():
    return [
        pytest.param(backend, device, id=f"{backend}-{device}", marks=[pytest.mark.gpu] if device == "cuda" else [])
        for backend, device in _PAIRS
    ]


def require(backend: str, device: str) -> None:
    """Skips the calling test when `backend` cannot run on `device` here, saying why."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    reason = _backend._unavailable_reason(backend, device)
    if reason is not None:
        pytest.skip(reason)


def close_to_reference(
    actual: torch.Tensor,
    reference: torch.Tensor,
    torch_same_dtype: torch.Tensor,
    floor: float = 1e-3,
    terms: int = 1,
) -> None:
    """The flash-attention rule: against a higher-precision reference (fp32 for fp16/bf16, fp64
    for fp32), our error is at most twice torch's own error in the same dtype, plus a floor.

    `terms`: the longest sum behind each value. A kernel that adds them one after another in
    the dtype gains about sqrt(terms) roundings of the running sum, where cuBLAS's split
    reductions may gain far fewer (on the H200 torch's error on a 600-term sum was 4e-6, a
    sequential fp32 sum's 3e-5), so the floor grows to sqrt(terms) * eps * max|reference|."""
    assert actual.shape == reference.shape and actual.dtype == torch_same_dtype.dtype
    ours = (actual.to(reference.dtype) - reference).abs().max().item() if actual.numel() else 0.0
    theirs = (torch_same_dtype.to(reference.dtype) - reference).abs().max().item() if actual.numel() else 0.0
    if terms > 1 and actual.numel():
        rounding = terms**0.5 * torch.finfo(actual.dtype).eps * reference.abs().max().item()
        floor = max(floor, rounding)
    assert ours <= 2 * theirs + floor, f"max error {ours:.3e} > 2 x torch's {theirs:.3e} + {floor:.1e}"


# setup.py's experimental builds of the CUDA fused MLP (csrc/cuda/mlp.cu), each built with its
# option set to 1 beside the default (bench/gpu_check.sh): name -> option.
MLP_BUILD_OPTIONS = {"vector_loads": "FUSEDMLP_MLP_VECTOR_LOADS", "tf32x3": "FUSEDMLP_MLP_TF32X3"}


# ---------------------------------------------------------------------------------------
# Networks the fused whole-network CUDA kernels do not cover, with the message their coverage
# check gives: (widths, regex), one pytest.param each.
UNCOVERED_MLP_SHAPES = [
    pytest.param((129, 8, 2), "covers widths up to 128, got 129 input features", id="wide_input"),
    pytest.param((8, 200, 2), "covers widths up to 128, got 200 out features in layer 0", id="wide_hidden"),
    pytest.param((4,) * 10, "covers at most 8 layers, got 9", id="deep"),
]


# Triton AOT compile for sm_80 / sm_90, no GPU needed.

AOT_ARCHS = (80, 90)

# Runs in a subprocess without TRITON_INTERPRET (under the interpreter the kernels are not
# JITFunctions). It compiles every spec of `module.aot_compile_specs()` (dicts with kernel, fn,
# dtype, variant, signature, constexprs, attrs, num_warps, num_stages, config and optionally
# layout) for each arch. A fresh TRITON_CACHE_DIR makes every compile run ptxas, whose `-v` log
# (printed with TRITON_DUMP_PTXAS_LOG=1) gives the spill counts: CompiledKernel.n_spills is only
# filled in when a binary is loaded onto a GPU.
_AOT_SCRIPT = textwrap.dedent(r"""
    import contextlib, importlib, io, json, re, subprocess, sys, tempfile, time
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    modname, archs, report_path = sys.argv[1], [int(a) for a in sys.argv[2].split(",")], sys.argv[3]
    shard, num_shards = (int(v) for v in sys.argv[4].split("/"))
    tk = importlib.import_module(modname)

    def ptxas_log_fallback(ptx, cap):
        # Older Triton without TRITON_DUMP_PTXAS_LOG: run ptxas -v on the PTX ourselves.
        from triton.backends.nvidia import compiler as nv
        ptxas = nv.get_ptxas(cap).path if hasattr(nv, "get_ptxas") else nv._path_to_binary("ptxas")[0]
        arch = nv.sm_arch_from_capability(cap)
        with tempfile.TemporaryDirectory() as d:
            src = f"{d}/k.ptx"
            open(src, "w").write(ptx)
            r = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", src, "-o", f"{d}/k.o"],
                               capture_output=True, text=True)
            return r.stderr + r.stdout

    results = []
    jobs = [(spec, cap) for spec in tk.aot_compile_specs() for cap in archs
            if cap in (spec.get("archs") or archs)]
    for spec, cap in jobs[shard::num_shards]:
        row = {k: spec.get(k) for k in ("kernel", "dtype", "variant", "layout", "config", "num_warps", "num_stages")}
        row["arch"] = cap
        buf = io.StringIO()
        start = time.monotonic()
        try:
            src = ASTSource(fn=spec["fn"], signature=spec["signature"], constexprs=spec["constexprs"],
                            attrs=spec["attrs"])
            with contextlib.redirect_stdout(buf):
                compiled = triton.compile(src, target=GPUTarget("cuda", cap, 32),
                                          options={"num_warps": spec["num_warps"],
                                                   "num_stages": spec["num_stages"]})
        except Exception as e:  # report every failure, not just the first
            row["error"] = f"{type(e).__name__}: {e}"[:4000]
            results.append(row)
            continue
        ptx = compiled.asm["ptx"]
        log = buf.getvalue()
        if "spill" not in log:
            log = ptxas_log_fallback(ptx, cap)
        spills = [int(s) + int(l) for s, l in re.findall(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)]
        regs = [int(r) for r in re.findall(r"Used (\d+) registers", log)]
        row.update(compile_s=round(time.monotonic() - start, 1), spills=sum(spills) if spills else None,
                   registers=max(regs) if regs else None, shared=compiled.metadata.shared,
                   wgmma="wgmma.mma_async" in ptx, mma_sync="mma.sync" in ptx)
        results.append(row)
    json.dump(results, open(report_path, "w"), indent=1)
""")


def run_triton_aot(module_name: str, tmp_path, shards: int = 2, timeout: float = 900) -> list[dict]:
    """Compiles every spec of `module_name`'s aot_compile_specs() for AOT_ARCHS in `shards`
    parallel subprocesses (one per CI core) and returns one row per spec x arch: the spec's
    kernel/dtype/variant/layout/config/num_warps/num_stages, arch, and either `error` or
    spills (bytes, None when ptxas gave no report), registers, shared, wgmma, mma_sync, compile_s."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp_path / "cache"), TRITON_DUMP_PTXAS_LOG="1")
    archs = ",".join(map(str, AOT_ARCHS))
    procs = []
    for shard in range(shards):
        report = tmp_path / f"report{shard}.json"
        cmd = [sys.executable, "-c", _AOT_SCRIPT, module_name, archs, str(report), f"{shard}/{shards}"]
        procs.append(
            (report, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        )
    rows = []
    try:
        for report, proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, f"AOT compile script failed:\n{out[-8000:]}"
            rows += json.loads(report.read_text())
    finally:
        for _, proc in procs:  # a timeout or failure must not leave compilers running
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert rows, f"no AOT specs compiled for {module_name}"
    (tmp_path / "report.json").write_text(json.dumps(rows, indent=1))
    return rows
