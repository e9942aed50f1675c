"""Ahead-of-time compile of the cross-entropy Triton kernel for sm_80 and sm_90 (no GPU
needed): every dtype x variant compiles, with no register spills. Reuses the compile
script of tests/test_triton_linear_relu_kernels.py (run in a subprocess without
TRITON_INTERPRET, with ptxas -v logs)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from fusedmlp.triton_kernels import cross_entropy as tk  # noqa: E402
from test_triton_linear_relu_kernels import _AOT_ARCHS, _AOT_SCRIPT  # noqa: E402


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("triton_ce_aot")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_CACHE_DIR=str(tmp / "cache"), TRITON_DUMP_PTXAS_LOG="1")
    report = tmp / "report.json"
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT, tk.__name__, ",".join(map(str, _AOT_ARCHS)), str(report), "0/1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"AOT compile script failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    rows = json.loads(report.read_text())
    assert rows, "no AOT specs compiled"
    return rows


def _label(r):
    return f"{r['kernel']}[{r['variant']}] {r['dtype']} sm_{r['arch']} {r['config']} w{r['num_warps']}"


@pytest.mark.slow
def test_every_dtype_and_variant_compiles(aot_report):
    failed = [f"{_label(r)}: {r['error']}" for r in aot_report if "error" in r]
    assert not failed, "\n".join(failed)
    compiled = {(r["dtype"], r["variant"], r["arch"]) for r in aot_report}
    want = {
        (str(d).replace("torch.", ""), v, a) for d in tk.SUPPORTED_DTYPES for v in tk._AOT_VARIANTS for a in _AOT_ARCHS
    }
    assert compiled == want


@pytest.mark.slow
def test_no_register_spills(aot_report):
    rows = [r for r in aot_report if "error" not in r]
    unknown = [_label(r) for r in rows if r["spills"] is None]
    assert not unknown, "no ptxas spill report for:\n" + "\n".join(unknown)
    spilled = [f"{_label(r)}: {r['spills']} bytes spilled, {r['registers']} regs" for r in rows if r["spills"]]
    assert not spilled, "\n".join(spilled)
