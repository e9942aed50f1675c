"""Kernel-level tests of fusedmlp.triton_kernels.linear_relu (launchers, no autograd).

Without a GPU the kernels run under the Triton interpreter on CPU tensors:
tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton. With a GPU they
run on CUDA. The AOT tests compile every kernel x autotune config x dtype for sm_80 and
sm_90 in subprocesses (no GPU needed) and check spills and wgmma.
"""

import pytest
import torch
import torch.nn.functional as F
from support import (
    AOT_ARCHS,
    TRITON_DEVICE,
    needs_triton_runtime,
    run_triton_aot,
    skip_bf16_under_interpreter,
)

triton = pytest.importorskip("triton")

from fusedmlp.triton_kernels import linear_relu as tk  # noqa: E402

DTYPES = [
    torch.float64,
    torch.float32,
    torch.float16,
    pytest.param(torch.bfloat16, marks=skip_bf16_under_interpreter),
]

# (M, K, N). The interpreter config uses 16x16x16 tiles, so 15/16/17 are BLOCK-1/BLOCK/BLOCK+1.
SHAPES = [
    (1, 1, 1),
    (7, 13, 5),
    (33, 17, 65),
    (15, 16, 17),
    (17, 15, 16),
    (16, 17, 15),
    (5, 3, 1),  # out_features 1
]


# ---------------------------------------------------------------------------------------
# Reference and comparison helpers.


def _make(M, K, N, dtype, *, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K, generator=g, dtype=torch.float64)
    w = torch.randn(N, K, generator=g, dtype=torch.float64) / max(K, 1) ** 0.5
    b = torch.randn(N, generator=g, dtype=torch.float64) if bias else None
    go = torch.randn(M, N, generator=g, dtype=torch.float64)
    cast = lambda t: None if t is None else t.to(dtype=dtype, device=TRITON_DEVICE)  # noqa: E731
    return cast(x), cast(w), cast(b), cast(go)


def _torch_linear_relu(x, w, b, relu, go):
    """Forward and (dx, dw, db) of F.linear(+relu) by autograd, in the dtype of x."""
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    b = None if b is None else b.detach().requires_grad_()
    y = F.linear(x, w, b)
    if relu:
        y = torch.relu(y)
    inputs = [x, w] + ([b] if b is not None else [])
    if y.numel():
        grads = torch.autograd.grad(y, inputs, go, allow_unused=True)
    else:
        grads = [torch.zeros_like(t) for t in inputs]
    dx, dw = grads[0], grads[1]
    db = grads[2] if b is not None else None
    return y.detach(), dx, dw, db


def _reference(x, w, b, relu, go):
    """The fp64 reference, from the same (possibly low-precision) values."""
    up = lambda t: None if t is None else t.double()  # noqa: E731
    return _torch_linear_relu(up(x), up(w), up(b), relu, up(go))


def _assert_close(actual, ref64, torch_same_dtype=None, name=""):
    assert actual.dtype == (torch_same_dtype.dtype if torch_same_dtype is not None else actual.dtype)
    if actual.dtype in (torch.float32, torch.float64):
        torch.testing.assert_close(actual, ref64.to(actual.dtype), msg=lambda m: f"{name}: {m}")
        return
    # fp16/bf16, the flash-attention rule: our error against the fp64 reference is at most
    # twice torch's own error in the same dtype, plus a floor of a few ulps of the output scale.
    ours = (actual.double() - ref64).abs().max().item() if actual.numel() else 0.0
    theirs = (torch_same_dtype.double() - ref64).abs().max().item() if actual.numel() else 0.0
    eps = torch.finfo(actual.dtype).eps
    floor = 4 * eps * max(ref64.abs().max().item() if ref64.numel() else 0.0, 1.0)
    assert ours <= 2 * theirs + floor, f"{name}: max error {ours:.3g} > 2 * torch's {theirs:.3g} + {floor:.3g}"


def _check(x, w, b, relu, go, output_mask=(True, True, True), *, y=None):
    """Run our forward+backward and compare with the torch reference."""
    y_ours = tk.linear_relu_fwd_triton(x, w, b, relu) if y is None else y
    M, N = x.shape[0], w.shape[0]
    assert y_ours.shape == (M, N) and y_ours.dtype == x.dtype and y_ours.is_contiguous()
    grads = tk.linear_relu_bwd_triton(go, x, w, y_ours, relu, list(output_mask))
    assert isinstance(grads, tuple) and len(grads) == 3

    ref = _reference(x, w, b, relu, go)
    low = x.dtype in (torch.float16, torch.bfloat16)
    same = _torch_linear_relu(x, w, b, relu, go) if low else (None,) * 4
    _assert_close(y_ours, ref[0], same[0], "output")

    shapes = [tuple(x.shape), tuple(w.shape), (N,)]
    names = ["grad_input", "grad_weight", "grad_bias"]
    for i, (g, needed) in enumerate(zip(grads, output_mask)):
        assert g.dtype == x.dtype and g.device == x.device, names[i]
        if not needed:
            assert g.numel() == 0 and g.shape == (0,), names[i]
            continue
        assert g.shape == shapes[i] and g.is_contiguous(), names[i]
        ref_g = ref[i + 1]
        if ref_g is None:  # bias gradient without a bias: still sum(grad_pre, 0)
            pre = ref[0] if relu else None
            gp = go.double() * (pre > 0) if relu else go.double()
            ref_g = gp.sum(0)
            same_g = None
            if low:
                same_g = (go * (y_ours > 0) if relu else go).float().sum(0).to(x.dtype)
        else:
            same_g = same[i + 1]
        _assert_close(g, ref_g, same_g, names[i])
    return y_ours, grads


# ---------------------------------------------------------------------------------------
# Interpreter / GPU correctness.


@needs_triton_runtime
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_matches_torch(shape, dtype):
    M, K, N = shape
    x, w, b, go = _make(M, K, N, dtype)
    _check(x, w, b, True, go)


@needs_triton_runtime
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_relu_and_bias_flags(relu, bias, dtype):
    x, w, b, go = _make(9, 19, 11, dtype, bias=bias)
    _check(x, w, b, relu, go)


@needs_triton_runtime
@pytest.mark.parametrize(
    "output_mask",
    [(a, b, c) for a in (True, False) for b in (True, False) for c in (True, False)],
    ids=lambda m: "".join("1" if v else "0" for v in m),
)
def test_output_mask(output_mask):
    x, w, b, go = _make(18, 7, 17, torch.float64)
    _check(x, w, b, True, go, output_mask)


@needs_triton_runtime
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_non_contiguous_operands(dtype):
    M, K, N = 19, 21, 18
    x, w, b, go = _make(M, K, N, dtype)
    x_t = x.t().contiguous().t()  # column-major input
    w_t = w.t().contiguous().t()  # column-major weight
    go_t = go.t().contiguous().t()
    b_s = torch.stack([b, torch.full_like(b, float("nan"))], 1)[:, 0]  # bias with stride 2
    assert not x_t.is_contiguous() and not w_t.is_contiguous() and b_s.stride() == (2,)
    _check(x_t, w_t, b_s, True, go_t)
    # A sliced (row-strided) input and weight.
    x_big = torch.randn(2 * M, K + 3, dtype=dtype, device=TRITON_DEVICE)
    _check(x_big[::2, 1 : K + 1], w, b, False, go)


@needs_triton_runtime
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
def test_expanded_grad_output(relu):
    """grad_output of y.sum() is a stride-(0, 0) expanded tensor."""
    M, K, N = 20, 9, 17
    x, w, b, _ = _make(M, K, N, torch.float64)
    go = torch.ones(1, 1, dtype=x.dtype, device=TRITON_DEVICE).expand(M, N)
    assert go.stride() == (0, 0)
    _check(x, w, b, relu, go)
    go_row = torch.randn(1, N, dtype=x.dtype, device=TRITON_DEVICE).expand(M, N)  # stride (0, 1)
    _check(x, w, b, relu, go_row)


@needs_triton_runtime
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_batch_zero(dtype):
    x, w, b, go = _make(0, 6, 5, dtype)
    y = tk.linear_relu_fwd_triton(x, w, b, True)
    assert y.shape == (0, 5)
    dx, dw, db = tk.linear_relu_bwd_triton(go, x, w, y, True, [True, True, True])
    assert dx.shape == (0, 6)
    torch.testing.assert_close(dw, torch.zeros(5, 6, dtype=dtype, device=TRITON_DEVICE), rtol=0, atol=0)
    torch.testing.assert_close(db, torch.zeros(5, dtype=dtype, device=TRITON_DEVICE), rtol=0, atol=0)


@needs_triton_runtime
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_in_features_zero(relu, bias):
    x, w, b, go = _make(4, 0, 5, torch.float64, bias=bias)
    if bias:
        b = torch.tensor([1.0, -2.0, 0.5, -0.25, 3.0], dtype=x.dtype, device=TRITON_DEVICE)
    y, (dx, dw, db) = _check(x, w, b, relu, go)
    assert dx.shape == (4, 0) and dw.shape == (5, 0)


@needs_triton_runtime
def test_out_features_zero():
    x, w, b, go = _make(4, 3, 0, torch.float64)
    y = tk.linear_relu_fwd_triton(x, w, b, True)
    assert y.shape == (4, 0)
    dx, dw, db = tk.linear_relu_bwd_triton(go, x, w, y, True, [True, True, True])
    torch.testing.assert_close(dx, torch.zeros_like(x), rtol=0, atol=0)
    assert dw.shape == (0, 3) and db.shape == (0,)


@needs_triton_runtime
def test_relu_mask_uses_output_sign():
    """Exact zeros in the output block the gradient; the mask comes from `output`."""
    x = torch.tensor([[1.0, -1.0], [2.0, 3.0]], dtype=torch.float64, device=TRITON_DEVICE)
    w = torch.tensor([[1.0, 1.0], [-1.0, 2.0], [0.0, -1.0]], dtype=torch.float64, device=TRITON_DEVICE)
    go = torch.ones(2, 3, dtype=torch.float64, device=TRITON_DEVICE)
    y = tk.linear_relu_fwd_triton(x, w, None, True)
    torch.testing.assert_close(y, torch.relu(x @ w.t()), rtol=0, atol=0)
    assert (y == 0).any()
    _check(x, w, None, True, go, y=y)


@needs_triton_runtime
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_canary_views_and_no_mutation(dtype):
    """Operands are views into larger NaN-filled buffers: any read outside the view that
    reached a result would make it NaN. The buffers (and so the inputs) must be untouched."""
    M, K, N = 17, 18, 15
    x0, w0, b0, go0 = _make(M, K, N, dtype)

    def embed(t, pad):
        big = torch.full(tuple(s + 2 * pad for s in t.shape), float("nan"), dtype=dtype, device=TRITON_DEVICE)
        view = big[tuple(slice(pad, pad + s) for s in t.shape)]
        view.copy_(t)
        return big, view

    bufs = {}
    bufs["x"], x = embed(x0, 3)
    bufs["w"], w = embed(w0, 2)
    bufs["b"], b = embed(b0, 5)
    bufs["go"], go = embed(go0, 1)
    before = {k: v.clone() for k, v in bufs.items()}

    y, grads = _check(x, w, b, True, go)
    tk.linear_relu_bwd_triton(go, x, w, y, True, [True, True, True])  # backward twice
    y_before = y.clone()
    for k in bufs:
        torch.testing.assert_close(bufs[k], before[k], rtol=0, atol=0, equal_nan=True, msg=f"{k} was mutated")
    torch.testing.assert_close(y, y_before, rtol=0, atol=0)
    for g in (y, *grads):
        assert not g.isnan().any()


@needs_triton_runtime
def test_deterministic():
    x, w, b, go = _make(40, 20, 24, torch.float32)
    y1 = tk.linear_relu_fwd_triton(x, w, b, True)
    g1 = tk.linear_relu_bwd_triton(go, x, w, y1, True, [True, True, True])
    y2 = tk.linear_relu_fwd_triton(x, w, b, True)
    g2 = tk.linear_relu_bwd_triton(go, x, w, y2, True, [True, True, True])
    assert torch.equal(y1, y2)
    for a, c in zip(g1, g2):
        assert torch.equal(a, c)


@needs_triton_runtime
def test_rejects_bad_arguments():
    x, w, b, go = _make(3, 4, 5, torch.float64)
    with pytest.raises(RuntimeError, match="in_features"):
        tk.linear_relu_fwd_triton(x, w[:, :3], b, True)
    with pytest.raises(RuntimeError, match="dtype"):
        tk.linear_relu_fwd_triton(x, w.float(), b, True)
    with pytest.raises(RuntimeError, match="unsupported dtype"):
        tk.linear_relu_fwd_triton(x.to(torch.int32), w.to(torch.int32), None, True)
    with pytest.raises(RuntimeError, match="bias"):
        tk.linear_relu_fwd_triton(x, w, b[:4], True)
    y = tk.linear_relu_fwd_triton(x, w, b, True)
    with pytest.raises(RuntimeError, match="grad_output"):
        tk.linear_relu_bwd_triton(go[:, :4], x, w, y, True, [True, True, True])


# ---------------------------------------------------------------------------------------
# dw/db with the reduction over M split across programs (narrow layers, large batch).
#
# The split only pays off at GPU batch sizes; the `split_m` fixture lowers the minimum range
# length to 2 row blocks so that tiny shapes split too (into several ranges and a ragged last
# one), and records every plan and every summing pass.


@pytest.fixture
def split_m(monkeypatch):
    record = {"plans": [], "sums": 0}
    monkeypatch.setattr(tk, "_SPLIT_MIN_ROW_BLOCKS", 2)
    plan, sum_partials = tk._dw_db_split_plan, tk._sum_split_partials

    def recording_plan(*args):
        record["plans"].append(plan(*args))
        return record["plans"][-1]

    def counting_sum(partials, out):
        record["sums"] += 1
        sum_partials(partials, out)

    monkeypatch.setattr(tk, "_dw_db_split_plan", recording_plan)
    monkeypatch.setattr(tk, "_sum_split_partials", counting_sum)
    return record


def _assert_split(record, M, sums):
    """The last backward split M into >= 2 whole-block ranges with `sums` summing passes."""
    splits, rows_per_split = record["plans"][-1]
    assert splits >= 2, record["plans"]
    assert rows_per_split % tk._SPLIT_ROW_QUANTUM == 0
    assert (splits - 1) * rows_per_split < M <= splits * rows_per_split  # no empty range
    assert record["sums"] == sums


# (M, K, N): M = 200 gives 4 full ranges and a ragged 8-row one under the interpreter;
# 192 splits evenly; 17 x 33 outputs are several tiles, each split.
SPLIT_SHAPES = [(200, 7, 5), (192, 3, 1), (130, 33, 17)]


@needs_triton_runtime
@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16], ids=str)
def test_split_m_matches_torch(split_m, shape, dtype):
    M, K, N = shape
    x, w, b, go = _make(M, K, N, dtype)
    _check(x, w, b, True, go)
    _assert_split(split_m, M, sums=2)


@needs_triton_runtime
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_split_m_relu_and_bias_flags(split_m, relu, bias, dtype):
    x, w, b, go = _make(200, 7, 5, dtype, bias=bias)
    _check(x, w, b, relu, go)
    _assert_split(split_m, 200, sums=2)
    assert 200 % split_m["plans"][-1][1] != 0  # the last range is shorter


@needs_triton_runtime
@pytest.mark.parametrize(
    "output_mask",
    [(a, b, c) for a in (True, False) for b in (True, False) for c in (True, False) if b or c],
    ids=lambda m: "".join("1" if v else "0" for v in m),
)
def test_split_m_output_mask(split_m, output_mask):
    """Weight grad only, bias grad only, both: one summing pass per gradient asked for."""
    x, w, b, go = _make(200, 7, 5, torch.float64)
    _check(x, w, b, True, go, output_mask)
    _assert_split(split_m, 200, sums=output_mask[1] + output_mask[2])


@needs_triton_runtime
def test_split_m_bias_grad_with_in_features_zero(split_m):
    """K == 0: no dw to compute, db still splits (one program per N-tile per range)."""
    x, w, b, go = _make(200, 0, 5, torch.float64)
    _, (dx, dw, db) = _check(x, w, b, True, go)
    assert dw.shape == (5, 0)
    _assert_split(split_m, 200, sums=1)


@needs_triton_runtime
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_split_m_non_contiguous_operands(split_m, dtype):
    M, K, N = 200, 7, 5
    x, w, b, go = _make(M, K, N, dtype)
    x_t = x.t().contiguous().t()  # column-major input
    go_t = go.t().contiguous().t()  # column-major grad_output
    _check(x_t, w, b, True, go_t)
    _assert_split(split_m, M, sums=2)
    x_big = torch.randn(2 * M, K + 3, dtype=dtype, device=TRITON_DEVICE)
    _check(x_big[::2, 1 : K + 1], w, b, False, go)  # row-strided, offset input
    go_expanded = torch.randn(1, N, dtype=dtype, device=TRITON_DEVICE).expand(M, N)  # stride (0, 1)
    _check(x, w, b, True, go_expanded)
    assert split_m["sums"] == 6 and all(splits >= 2 for splits, _ in split_m["plans"])


@needs_triton_runtime
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_split_m_batch_zero(split_m, dtype):
    x, w, b, go = _make(0, 7, 5, dtype)
    y = tk.linear_relu_fwd_triton(x, w, b, True)
    dx, dw, db = tk.linear_relu_bwd_triton(go, x, w, y, True, [True, True, True])
    assert dx.shape == (0, 7)
    torch.testing.assert_close(dw, torch.zeros(5, 7, dtype=dtype, device=TRITON_DEVICE), rtol=0, atol=0)
    torch.testing.assert_close(db, torch.zeros(5, dtype=dtype, device=TRITON_DEVICE), rtol=0, atol=0)
    assert split_m["sums"] == 0


@needs_triton_runtime
def test_split_m_is_deterministic_and_close_to_one_pass(split_m, monkeypatch):
    x, w, b, go = _make(200, 7, 5, torch.float32)
    y = tk.linear_relu_fwd_triton(x, w, b, True)
    split1 = tk.linear_relu_bwd_triton(go, x, w, y, True, [False, True, True])
    split2 = tk.linear_relu_bwd_triton(go, x, w, y, True, [False, True, True])
    _assert_split(split_m, 200, sums=4)
    for a, c in zip(split1[1:], split2[1:]):
        assert torch.equal(a, c)  # bitwise: fixed ranges, fixed summing order, no atomics
    monkeypatch.setattr(tk, "_SPLIT_MIN_ROW_BLOCKS", 10**9)  # M too short to split
    whole = tk.linear_relu_bwd_triton(go, x, w, y, True, [False, True, True])
    assert split_m["plans"][-1] == (1, 200) and split_m["sums"] == 4
    for a, c in zip(split1[1:], whole[1:]):
        torch.testing.assert_close(a, c)


@needs_triton_runtime
def test_split_m_through_the_autograd_op(split_m):
    """fusedmlp.functional.linear_relu(backend="triton"): the registered op takes the split
    path too, and passes opcheck there."""
    import fusedmlp.functional as FM

    x, w, b, go = _make(200, 7, 5, torch.float64)
    leaves = [t.detach().requires_grad_() for t in (x, w, b)]
    FM.linear_relu(*leaves, backend="triton").backward(go)
    ref = _reference(x, w, b, True, go)
    for leaf, want in zip(leaves, ref[1:]):
        torch.testing.assert_close(leaf.grad, want)
    _assert_split(split_m, 200, sums=2)
    y = tk.linear_relu_fwd_triton(x, w, b, True)
    torch.library.opcheck(torch.ops.fusedmlp.linear_relu_bwd_triton, (go, x, w, y, True, [True, True, True]))


def test_split_plan(monkeypatch):
    """The plan is a pure function of shapes, dtype and SM count (no device needed)."""
    sms = 8
    monkeypatch.setattr(tk, "_sm_count", lambda device: sms)
    quantum = tk._SPLIT_ROW_QUANTUM
    min_rows = tk._SPLIT_MIN_ROW_BLOCKS * quantum

    def plan(M, N, K, compute_dw=True):
        return tk._dw_db_split_plan(M, N, K, compute_dw, torch.float32, torch.device("cpu"))

    assert plan(2 * min_rows - 1, 1, 1) == (1, 2 * min_rows - 1)  # too short for two ranges
    assert plan(2 * min_rows, 1, 1) == (2, min_rows)
    splits, rows = plan(1 << 20, 1, 1)
    assert splits == min(tk._SPLIT_PROGRAMS_PER_SM * sms, tk._SPLIT_MAX) and rows % quantum == 0
    assert (splits - 1) * rows < 1 << 20 <= splits * rows
    # A tile grid as large as the GPU is never split; without dw only the N-tiles count.
    wide = sms * tk._largest_dw_tile(torch.float32)["BLOCK_K"]
    assert plan(1 << 20, 1, wide) == (1, 1 << 20)
    assert plan(1 << 20, 1, wide, compute_dw=False)[0] > 1


def test_split_plan_h200_narrow_layer(monkeypatch):
    """The case that motivated the split: a 50 -> 30 layer at batch 2**20 on an H200 (132 SMs,
    GPU tiles: one fp32 dw tile covers 30 x 50)."""
    name = "_linear_relu_bwd_dw_db_split_kernel"
    monkeypatch.setattr(tk, "_sm_count", lambda device: 132)
    monkeypatch.setattr(tk, "_largest_dw_tile", lambda dtype: tk.gpu_configs(name, dtype)[0].kwargs)
    gpu_blocks_m = {c.kwargs["BLOCK_M"] for d in tk.SUPPORTED_DTYPES for c in tk.gpu_configs(name, d)}
    monkeypatch.setattr(tk, "_SPLIT_ROW_QUANTUM", max(gpu_blocks_m))  # powers of two: max is the lcm
    cpu = torch.device("cpu")
    splits, rows = tk._dw_db_split_plan(1 << 20, 30, 50, True, torch.float32, cpu)
    assert splits == tk._SPLIT_MAX and rows == (1 << 20) // tk._SPLIT_MAX
    assert tk._dw_db_split_plan(128, 30, 50, True, torch.float32, cpu) == (1, 128)


# ---------------------------------------------------------------------------------------
# AOT compile for sm_80 / sm_90, no GPU needed (tests/support.py runs the compile script).


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory):
    return run_triton_aot(tk.__name__, tmp_path_factory.mktemp("triton_aot"))


def _label(r):
    return (
        f"{r['kernel']}[{r['variant']}, {r['layout']}] {r['dtype']} sm_{r['arch']} {r['config']} "
        f"w{r['num_warps']} s{r['num_stages']}"
    )


@pytest.mark.slow
class TestAOTCompile:
    """Every kernel x autotune config x dtype compiles for sm_80 and sm_90 (no GPU needed)."""

    def test_every_kernel_config_dtype_compiles(self, aot_report):
        failed = [f"{_label(r)}: {r['error']}" for r in aot_report if "error" in r]
        assert not failed, "\n".join(failed)
        compiled = {(r["kernel"], r["dtype"], r["arch"]) for r in aot_report}
        want = {
            (k, str(d).replace("torch.", ""), a) for k in tk.KERNELS for d in tk.SUPPORTED_DTYPES for a in AOT_ARCHS
        }
        assert compiled == want

    def test_no_register_spills(self, aot_report):
        rows = [r for r in aot_report if "error" not in r]
        unknown = [_label(r) for r in rows if r["spills"] is None]
        assert not unknown, "no ptxas spill report for:\n" + "\n".join(unknown)
        spilled = [f"{_label(r)}: {r['spills']} bytes spilled, {r['registers']} regs" for r in rows if r["spills"]]
        assert not spilled, "\n".join(spilled)

    def test_sm90_half_precision_uses_wgmma(self, aot_report):
        rows = [r for r in aot_report if "error" not in r and r["arch"] == 90 and r["dtype"] in ("float16", "bfloat16")]
        rows = [r for r in rows if _has_dot(r)]
        # Triton lowers a dot to wgmma for tiles of >= 64 rows with >= 4 warps; smaller tiles
        # (kept for tiny layers) use mma.sync. Every such config must get wgmma, and every
        # kernel/dtype must have at least one.
        missing = [_label(r) for r in rows if r["num_warps"] >= 4 and _tile_rows(r) >= 64 and not r["wgmma"]]
        assert not missing, "expected wgmma in:\n" + "\n".join(missing)
        for kernel in {r["kernel"] for r in rows}:
            for dtype in ("float16", "bfloat16"):
                assert any(r["wgmma"] for r in rows if r["kernel"] == kernel and r["dtype"] == dtype), (kernel, dtype)

    def test_sm80_uses_tensor_cores_for_half_and_fp64(self, aot_report):
        # fp16/bf16 (and fp64, via DMMA) dots lower to mma.sync on sm_80; fp32 with
        # input_precision="ieee" must NOT (tensor-core fp32 would be TF32).
        for r in aot_report:
            if "error" in r or r["arch"] != 80 or not _has_dot(r):
                continue
            if r["dtype"] == "float32":
                assert not r["mma_sync"], _label(r)
            else:
                assert r["mma_sync"], _label(r)


def _tile_rows(r):
    """Rows of the kernel's output tile (the wgmma M dimension)."""
    rows_name = {
        "_linear_relu_fwd_kernel": "BLOCK_M",
        "_linear_relu_bwd_dx_kernel": "BLOCK_M",
        "_linear_relu_bwd_dw_db_kernel": "BLOCK_N",
        "_linear_relu_bwd_dw_db_split_kernel": "BLOCK_N",
    }[r["kernel"]]
    return r["config"][rows_name]


def _has_dot(r):
    # db_only computes no dw; summing the split partials is elementwise.
    return r["variant"] != "db_only" and r["kernel"] != "_sum_split_partials_kernel"
