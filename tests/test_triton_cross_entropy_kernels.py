"""Ahead-of-time compile of the cross-entropy Triton kernel for sm_80 and sm_90 (no GPU
needed): every dtype x variant compiles, with no register spills (tests/support.py runs
the shared compile script in subprocesses without TRITON_INTERPRET, with ptxas -v logs)."""

import pytest
from support import AOT_ARCHS, run_triton_aot

pytest.importorskip("triton")

from fusedmlp.triton_kernels import cross_entropy as tk  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory):
    return run_triton_aot(tk.__name__, tmp_path_factory.mktemp("triton_ce_aot"))


def _label(r):
    return f"{r['kernel']}[{r['variant']}] {r['dtype']} sm_{r['arch']} {r['config']} w{r['num_warps']}"


@pytest.mark.slow
def test_every_dtype_and_variant_compiles(aot_report):
    failed = [f"{_label(r)}: {r['error']}" for r in aot_report if "error" in r]
    assert not failed, "\n".join(failed)
    compiled = {(r["dtype"], r["variant"], r["arch"]) for r in aot_report}
    variants = [*tk._AOT_VARIANTS, "scale"]  # "scale": the backward's _scale_grad_unless_one_kernel
    want = {(str(d).replace("torch.", ""), v, a) for d in tk.SUPPORTED_DTYPES for v in variants for a in AOT_ARCHS}
    assert compiled == want


@pytest.mark.slow
def test_no_register_spills(aot_report):
    rows = [r for r in aot_report if "error" not in r]
    unknown = [_label(r) for r in rows if r["spills"] is None]
    assert not unknown, "no ptxas spill report for:\n" + "\n".join(unknown)
    spilled = [f"{_label(r)}: {r['spills']} bytes spilled, {r['registers']} regs" for r in rows if r["spills"]]
    assert not spilled, "\n".join(spilled)


def test_label_smoothing_reaches_the_kernels_in_float64():
    """Triton passes an unannotated Python float as fp32: label_smoothing=0.1 rounded so put
    1e-9 relative errors into float64 losses on the H200 (the interpreter keeps the Python
    float, so only the GPU showed it). Every kernel taking `smoothing` declares it fp64, and
    the ahead-of-time specs compile it so."""
    takers = [(name, fn) for name, fn in tk.KERNELS.items() if "smoothing" in fn.arg_names]
    assert takers
    for name, fn in takers:
        # As Triton's JIT reads the annotation (the tests run the kernels interpreted).
        (param,) = [p for p in JITFunction(fn.fn).params if p.name == "smoothing"]
        assert param.annotation_type == "fp64", name
    specs = [spec for spec in tk.aot_compile_specs() if "smoothing" in spec["signature"]]
    assert specs and all(spec["signature"]["smoothing"] == "fp64" for spec in specs)
