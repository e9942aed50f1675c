"""Softmax-cross-entropy: every backend against torch.nn.functional.cross_entropy, over its
whole surface (shapes, target kinds, weight, ignore_index, label smoothing, reductions,
extreme logits, bad input), plus gradcheck, opcheck, the in-place mode and torch.compile."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from support import backend_device_params, close_to_reference, require

import fusedmlp
from fusedmlp.functional import cross_entropy
from fusedmlp.ops import cross_entropy as ops

BACKEND_DEVICE = backend_device_params()
REDUCTIONS = ["mean", "sum", "none"]


def make_target(kind, shape, C, device, dtype, ignore_index=-100, ignore_fraction=0.0, seed=0):
    """Class indices of `shape` (some set to ignore_index) or probabilities of shape+class dim."""
    g = torch.Generator().manual_seed(seed)
    if kind == "index":
        t = torch.randint(0, max(C, 1), shape, generator=g)
        if ignore_fraction:
            t[torch.rand(shape, generator=g) < ignore_fraction] = ignore_index
        return t.to(device)
    return torch.softmax(torch.randn(*shape, C, generator=g, dtype=torch.float64), -1).to(device=device, dtype=dtype)


def prob_layout(target, input_dim):
    """Probability targets are built classes-last; torch wants classes on dim 1."""
    return target.movedim(-1, 1) if input_dim > 2 else target


def both(x, t, backend, grad=None, **kw):
    """(ours, torch's) loss and input gradient on independent leaf copies."""
    a = x.detach().clone().requires_grad_(True)
    b = x.detach().clone().requires_grad_(True)
    out = cross_entropy(a, t, backend=backend, **kw)
    ref = F.cross_entropy(b, t, **kw)
    g = torch.randn_like(ref) if grad is None else grad
    if ref.numel():
        out.backward(g)
        ref.backward(g)
    return out, ref, a.grad, b.grad


def assert_same(out, ref, ga, gb, **tol):
    assert out.shape == ref.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, equal_nan=True, **tol)
    if gb is not None or ga is not None:
        torch.testing.assert_close(ga, gb, equal_nan=True, **tol)


# -----------------------------------------------------------------------------------------
# The surface, against torch.

SHAPES = [  # input shapes: (C), (N, C) with 1x1, odd, prime, block-ish sizes, (N, C, d1[, d2])
    (5,),
    (1, 1),
    (7, 13),
    (3, 127),
    (2, 128),
    (4, 129),
    (3, 4, 5),
    (2, 3, 2, 3),
]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_matches_torch(backend, device, dtype, shape, kind):
    require(backend, device)
    torch.manual_seed(0)
    x = torch.randn(shape, device=device, dtype=dtype) * 3
    C = shape[0] if len(shape) == 1 else shape[1]
    batch = () if len(shape) == 1 else (shape[0], *shape[2:])
    t = make_target(kind, batch, C, device, dtype)
    if kind == "prob":
        t = prob_layout(t, len(shape))
    for reduction in REDUCTIONS:
        assert_same(*both(x, t, backend, reduction=reduction))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.2])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
def test_weight_ignore_smoothing(backend, device, kind, reduction, label_smoothing, weighted):
    require(backend, device)
    torch.manual_seed(1)
    N, C = 11, 7
    dtype = torch.float64
    x = torch.randn(N, C, device=device, dtype=dtype)
    w = torch.rand(C, device=device, dtype=dtype) + 0.1 if weighted else None
    for ignore_index in (-100, 3, -1) if kind == "index" else (-100,):  # torch refuses others for probabilities
        t = make_target(kind, (N,), C, device, dtype, ignore_index, ignore_fraction=0.4, seed=ignore_index + 200)
        assert_same(
            *both(
                x, t, backend, weight=w, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
            )
        )


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True], ids=["noweight", "weight"])
def test_all_targets_ignored(backend, device, reduction, label_smoothing, weighted):
    require(backend, device)
    x = torch.randn(4, 6, device=device, dtype=torch.float64)
    t = torch.full((4,), -100, device=device)
    w = torch.rand(6, device=device, dtype=torch.float64) if weighted else None
    out, ref, ga, gb = both(x, t, backend, weight=w, reduction=reduction, label_smoothing=label_smoothing)
    assert_same(out, ref, ga, gb)
    if reduction == "mean":
        assert out.isnan().item()
    torch.testing.assert_close(ga, torch.zeros_like(ga), rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_zero_weight_targets_give_nan_like_torch(backend, device):
    require(backend, device)
    x = torch.randn(3, 5, device=device, dtype=torch.float64)
    w = torch.ones(5, device=device, dtype=torch.float64)
    w[1] = 0
    t = torch.tensor([1, 1, -100], device=device)
    assert_same(*both(x, t, backend, weight=w))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("shape", [(0, 5), (0, 5, 3), (3, 0)], ids=["N0", "N0-spatial", "C0"])
def test_empty(backend, device, kind, shape):
    require(backend, device)
    x = torch.randn(shape, device=device)
    batch = (shape[0], *shape[2:])
    if kind == "index":
        t = (
            torch.full(batch, -100, dtype=torch.long, device=device)
            if shape[1] == 0
            else torch.zeros(batch, dtype=torch.long, device=device)
        )
    else:
        t = torch.rand(shape, device=device)
    for reduction in REDUCTIONS:
        out, ref, ga, gb = both(x, t, backend, reduction=reduction)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, equal_nan=True)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_extreme_logits(backend, device, label_smoothing, kind):
    require(backend, device)
    cases = [
        (torch.float32, [[1e30, -1e30, 0.0, 5.0], [-1e30, -1e30, 1e30, 1e30]]),
        (torch.float32, [[-math.inf, 1.0, 2.0, 3.0], [0.5, -math.inf, -math.inf, 4.0]]),
        (torch.float32, [[math.nan, 1.0, 2.0, 3.0], [0.5, 1.5, -2.0, 4.0]]),
        (torch.float16, [[1e4, -1e4, 0.0, 5.0], [-1e4, 1e4, 1e4, 0.0]]),
    ]
    for dtype, rows in cases:
        x = torch.tensor(rows, dtype=dtype, device=device)
        t = (
            torch.tensor([1, 2], device=device)
            if kind == "index"
            else torch.softmax(torch.randn(2, 4, device=device), 1).to(dtype)
        )
        for reduction in ("none", "sum"):
            go = torch.ones((2,) if reduction == "none" else (), dtype=dtype, device=device)
            out, ref, ga, gb = both(x, t, backend, grad=go, reduction=reduction, label_smoothing=label_smoothing)
            if dtype == torch.float16:
                # torch overflows fp16 while summing log-probabilities of -2e4 (inf); we
                # accumulate in fp32, so compare with torch computed in fp32.
                _, ref, _, gb = both(
                    x.float(),
                    t.float() if kind == "prob" else t,
                    "torch",
                    grad=go.float(),
                    reduction=reduction,
                    label_smoothing=label_smoothing,
                )
                ref = ref.half()
            torch.testing.assert_close(out.float(), ref.float(), equal_nan=True, rtol=2e-3, atol=1e-3)
            torch.testing.assert_close(ga.float(), gb.float(), equal_nan=True, rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_ignored_nan_row_gradient(backend, device):
    """torch's log_softmax backward turns an ignored row that holds a NaN into NaN."""
    require(backend, device)
    x = torch.randn(3, 5, device=device)
    x[0, 1] = math.nan
    x[2, 2] = math.nan
    t = torch.tensor([1, 3, -100], device=device)
    assert_same(*both(x, t, backend, reduction="none", grad=torch.ones(3, device=device)))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_low_precision(backend, device, dtype, kind):
    require(backend, device)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 on raw bits")
    torch.manual_seed(2)
    N, C = 9, 67
    x32 = torch.randn(N, C, device=device) * 4
    t32 = make_target(kind, (N,), C, device, torch.float32)
    g32 = torch.randn(N, device=device)
    _, ref32, _, grad32 = both(x32, t32, "torch", grad=g32, reduction="none", label_smoothing=0.1)
    t = t32 if kind == "index" else t32.to(dtype)
    out, torch_out, ga, gb = both(x32.to(dtype), t, backend, grad=g32.to(dtype), reduction="none", label_smoothing=0.1)
    assert out.dtype == dtype and ga.dtype == dtype
    close_to_reference(out, ref32, torch_out)
    close_to_reference(ga, grad32, gb)


# -----------------------------------------------------------------------------------------
# Layouts, gradients of odd strides, no mutation.


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_non_contiguous_inputs_and_grad_output(backend, device):
    require(backend, device)
    torch.manual_seed(3)
    big = torch.randn(13, 2 * 9, device=device, dtype=torch.float64)
    x = big[:, ::2]  # column stride 2
    t = torch.randint(0, 9, (26,), device=device)[::2]
    w = torch.rand(18, device=device, dtype=torch.float64)[::2]
    assert not x.is_contiguous() and not t.is_contiguous()
    assert_same(*both(x, t, backend, weight=w))
    xt = torch.randn(9, 13, device=device, dtype=torch.float64).t()  # transposed
    assert_same(
        *both(xt, t, backend, reduction="none", grad=torch.ones(1, device=device, dtype=torch.float64).expand(13))
    )
    q = torch.softmax(torch.randn(9, 13, device=device, dtype=torch.float64), 0).t()
    assert_same(*both(xt, q, backend, label_smoothing=0.2))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_no_input_mutation_and_backward_twice(backend, device):
    require(backend, device)
    x = torch.randn(6, 10, device=device, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 10, (6,), device=device)
    w = torch.rand(10, device=device, dtype=torch.float64)
    before = [v.detach().clone() for v in (x, t, w)]
    loss = cross_entropy(x, t, w, label_smoothing=0.1, backend=backend)
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)
    for v, b in zip((x, t, w), before):
        torch.testing.assert_close(v.detach(), b, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_backward_with_a_scale_other_than_one(backend, device, reduction):
    """The saved gradient is scaled in place only when the graph is freed after the backward:
    a retained graph gives the same gradient on every backward, a scale of 1 leaves it as is."""
    require(backend, device)
    torch.manual_seed(7)
    x = torch.randn(6, 10, device=device, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 10, (6,), device=device)
    ref = F.cross_entropy(x, t, reduction=reduction, label_smoothing=0.1)
    (g1,) = torch.autograd.grad(ref, x)
    for scale in (1.0, 2.5, -0.5, 0.0):
        loss = cross_entropy(x, t, reduction=reduction, label_smoothing=0.1, backend=backend)
        grad_output = torch.tensor(scale, device=device, dtype=torch.float64)
        (once,) = torch.autograd.grad(loss, x, grad_output, retain_graph=True)
        (twice,) = torch.autograd.grad(loss, x, grad_output, retain_graph=True)
        (last,) = torch.autograd.grad(loss, x, grad_output)
        for g in (once, twice, last):
            torch.testing.assert_close(g, g1 * scale)
    loss = cross_entropy(x, t, reduction=reduction, backend=backend)
    (g,) = torch.autograd.grad(loss, x, torch.tensor(float("nan"), device=device, dtype=torch.float64))
    assert g.isnan().all()
    # Backward hands out the saved gradient itself when the graph is not retained.
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda v: saved.append(v.data_ptr()) or v, lambda v: v):
        loss = cross_entropy(x, t, reduction=reduction, backend=backend)
    (g,) = torch.autograd.grad(loss, x, torch.tensor(2.0, device=device, dtype=torch.float64))
    assert g.data_ptr() in saved


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_scale_grad_unless_one(backend, device, dtype):
    require(backend, device)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16 arithmetic")
    g = torch.randn(300, 7, device=device, dtype=dtype)
    before = g.clone()
    ops.scale_grad_unless_one_(g, torch.ones(1, device=device, dtype=dtype), backend)
    assert torch.equal(g, before)
    version = g._version
    ops.scale_grad_unless_one_(g, torch.full((1,), 2.5, device=device, dtype=dtype), backend)
    assert torch.equal(g, before * torch.tensor(2.5, device=device, dtype=dtype))
    assert g._version > version  # autograd sees the write, as after an ATen in-place op
    ops.scale_grad_unless_one_(g, torch.full((), float("nan"), device=device, dtype=dtype), backend)
    assert g.isnan().all()
    if backend == "torch":
        return  # plain ATen, no registered op
    op = (
        torch.ops.fusedmlp.scale_grad_unless_one_triton
        if backend == "triton"
        else torch.ops.fusedmlp.scale_grad_unless_one_
    )
    torch.library.opcheck(op.default, (before.clone(), torch.full((1,), 3.0, device=device, dtype=dtype)))
    with pytest.raises(RuntimeError, match="contiguous"):
        op(before.t(), torch.ones(1, device=device, dtype=dtype))
    with pytest.raises(RuntimeError, match="one-element scale"):
        op(before, torch.ones(2, device=device, dtype=dtype))
    with pytest.raises(RuntimeError, match="dtype and device"):
        op(before, torch.ones(1, device=device, dtype=torch.float16))


CPP_BACKEND_DEVICE = [p for p in BACKEND_DEVICE if p.values[0] in ("cpu", "cuda")]
# Batch sizes for the reduction ops: empty, the tutorial's, one block's worth exactly (8192
# items), and past it (two launches on a GPU: per-block partial sums, then their sum).
REDUCE_ROWS = [0, 1, 64, 8192, 8193, 50_000]


@pytest.mark.parametrize("backend,device", CPP_BACKEND_DEVICE)
@pytest.mark.parametrize("rows", REDUCE_ROWS)
@pytest.mark.parametrize("acc", [torch.float32, torch.float64], ids=str)
def test_mean_denominator_op(backend, device, rows, acc):
    """torch's "mean" denominator (the summed weight of the targets not ignored, their count
    without weight, N for probabilities) and its reciprocal, against a float64 reference."""
    require(backend, device)
    op = torch.ops.fusedmlp.cross_entropy_mean_denominator
    C = 7
    g = torch.Generator().manual_seed(rows)
    t = torch.randint(0, C, (rows,), generator=g)
    t[torch.rand(rows, generator=g) < 0.3] = -1
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    valid = t != -1
    cases = [
        (t, None, valid.sum().double()),
        (t, w.to(torch.float16), w.to(torch.float16).double()[t.clamp(min=0)][valid].sum()),
        (t, w.to(acc), w.to(acc).double()[t.clamp(min=0)][valid].sum()),
        (torch.rand(rows, C, generator=g).to(acc), None, torch.tensor(float(rows), dtype=torch.float64)),
    ]
    for target, weight, expected in cases:
        weight = None if weight is None else weight.to(device)
        denominator, reciprocal = op(target.to(device), weight, -1, acc)
        assert denominator.shape == reciprocal.shape == (1,) and denominator.dtype == reciprocal.dtype == acc
        torch.testing.assert_close(denominator.cpu(), expected.to(acc).reshape(1))
        torch.testing.assert_close(reciprocal.cpu(), 1 / expected.to(acc).reshape(1))
    # Every target ignored, or no classes: 0, whose reciprocal (and so the mean) is not finite.
    all_ignored = torch.full((rows,), -1, device=device)
    assert op(all_ignored, None, -1, acc)[0].item() == 0
    assert op(torch.empty(rows, 0, device=device, dtype=acc), None, -1, acc)[0].item() == 0
    torch.library.opcheck(op.default, (t.to(device), w.to(device), -1, acc))
    torch.library.opcheck(op.default, (t.to(device), None, -1, acc))


@pytest.mark.parametrize("backend,device", CPP_BACKEND_DEVICE)
@pytest.mark.parametrize("rows", REDUCE_ROWS)
@pytest.mark.parametrize("acc", [torch.float32, torch.float64], ids=str)
def test_reduce_op(backend, device, rows, acc):
    """sum(loss_rows) [/ denominator] as a 0-d tensor of the logits' dtype: torch's
    loss_rows.sum() / denominator, then .to(dtype)."""
    require(backend, device)
    op = torch.ops.fusedmlp.cross_entropy_reduce
    g = torch.Generator().manual_seed(rows)
    loss_rows = (torch.rand(rows, generator=g, dtype=torch.float64) * 5).to(acc).to(device)
    denominator = torch.tensor([max(rows, 1) * 0.75], dtype=acc, device=device)
    out_dtypes = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
    for out_dtype in out_dtypes:
        for d in (None, denominator):
            out = op(loss_rows, d, out_dtype)
            expected = loss_rows.double().sum()
            expected = expected.to(acc) if d is None else expected.to(acc) / d.reshape(())
            assert out.shape == () and out.dtype == out_dtype and out.device.type == device
            torch.testing.assert_close(
                out, expected.to(out_dtype), rtol=1e-6 if acc == torch.float32 else 1e-12, atol=0
            )
    # An empty batch: a sum of 0, a mean of 0 / 0.
    empty = loss_rows[:0]
    assert op(empty, None, acc).item() == 0
    assert op(empty, torch.zeros(1, dtype=acc, device=device), acc).isnan()
    torch.library.opcheck(op.default, (loss_rows, denominator, torch.float16))
    torch.library.opcheck(op.default, (loss_rows, None, acc))
    with pytest.raises(RuntimeError, match="per-row losses"):
        op(loss_rows.to(torch.float16), None, acc)
    with pytest.raises(RuntimeError, match="one-element denominator"):
        op(loss_rows, torch.ones(2, dtype=acc, device=device), acc)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_canary_views(backend, device):
    """Logits as a view into a NaN-filled buffer: nothing outside the view is read or written."""
    require(backend, device)
    N, C = 5, 17
    big = torch.full((N + 4, C + 6), math.nan, device=device, dtype=torch.float64)
    x = big[2 : 2 + N, 3 : 3 + C]
    x.copy_(torch.randn(N, C, dtype=torch.float64))
    snapshot = big.clone()
    t = torch.randint(0, C, (N,), device=device)
    out, ref, ga, gb = both(x, t, backend)
    assert_same(out, ref, ga, gb)
    torch.testing.assert_close(big, snapshot, rtol=0, atol=0, equal_nan=True)


# -----------------------------------------------------------------------------------------
# gradcheck, opcheck, module, compile.


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(backend, device, kind, reduction):
    require(backend, device)
    torch.manual_seed(4)
    x = torch.randn(4, 5, device=device, dtype=torch.float64, requires_grad=True)
    t = make_target(kind, (4,), 5, device, torch.float64, ignore_fraction=0.3 if kind == "index" else 0.0, seed=7)
    w = torch.rand(5, device=device, dtype=torch.float64) + 0.5
    assert torch.autograd.gradcheck(
        lambda v: cross_entropy(v, t, w, reduction=reduction, label_smoothing=0.1, backend=backend), (x,)
    )


def test_double_backward_raises():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(cross_entropy(x, torch.tensor([0, 1, 2]), backend="cpu"), x, create_graph=True)
    with pytest.raises(RuntimeError, match="does not require grad|once_differentiable|double backward"):
        g.sum().backward()


def _opcheck_cases(device):
    torch.manual_seed(5)
    x = torch.randn(6, 9, device=device, dtype=torch.float64)
    t = torch.randint(0, 9, (6,), device=device)
    t[2] = -100
    q = torch.softmax(torch.randn(6, 9, device=device, dtype=torch.float64), 1)
    w = torch.rand(9, device=device, dtype=torch.float64)
    scale = torch.tensor([0.25], device=device, dtype=torch.float64)
    xp = torch.randn(9, 6, device=device, dtype=torch.float64).t()  # permuted
    for logits in (x, xp):
        for req in (False, True):
            yield (logits.clone().requires_grad_(req), t, None, -100, 0.0, None, True)
            yield (logits.clone().requires_grad_(req), t, w, -100, 0.1, scale, True)
            yield (logits.clone().requires_grad_(req), q, w, -100, 0.2, None, True)
        yield (logits.clone(), t, w, -100, 0.0, None, False)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_opcheck(backend, device):
    require(backend, device)
    if backend == "torch":
        pytest.skip("the torch backend is a composite of ATen ops, not a registered op")
    suffix = "_triton" if backend == "triton" else ""
    op = getattr(torch.ops.fusedmlp, f"cross_entropy_fwd{suffix}")
    inplace = getattr(torch.ops.fusedmlp, f"cross_entropy_fwd_inplace{suffix}")
    for args in _opcheck_cases(device):
        torch.library.opcheck(op, args)
        if not args[0].requires_grad and args[0].is_contiguous():
            torch.library.opcheck(inplace, (args[0].clone(), *args[1:6]))
        if backend != "triton":  # the differentiable op with its C++ autograd (C++ kernels only)
            for reduction in REDUCTIONS:
                torch.library.opcheck(torch.ops.fusedmlp.cross_entropy, (*args[:5], reduction))


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICE if p.values[0] == "triton"])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("weighted,smoothing", [(False, 0.0), (True, 0.1)])
def test_triton_rows_split_across_programs(backend, device, kind, weighted, smoothing, monkeypatch):
    """Few wide rows: each row split into column ranges (three launches) must give what one
    program per row gives, and torch's values, including in-place mode, ignored and -inf."""
    require(backend, device)
    from fusedmlp.triton_kernels import cross_entropy as tk

    launches = []
    real_split = tk._cross_entropy_split
    monkeypatch.setattr(tk, "_cross_entropy_split", lambda *a: launches.append(a[-1]) or real_split(*a))
    monkeypatch.setattr(tk, "SPLIT_MIN_COLUMNS", 16)
    # 32-column chunks on a GPU too (the interpreter uses them anyway): 150 columns are then
    # several chunks, so they can be split across programs.
    monkeypatch.setitem(tk._MAX_BLOCK_C, torch.float64, 32)
    torch.manual_seed(11)
    x = torch.randn(3, 150, device=device, dtype=torch.float64)
    x[0, 7] = float("-inf")
    t = make_target(kind, (3,), 150, device, torch.float64, ignore_fraction=0.0, seed=3)
    if kind == "index":
        t[1] = -100
    w = torch.rand(150, device=device, dtype=torch.float64) + 0.5 if weighted else None
    for reduction in REDUCTIONS:
        xr, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        loss = cross_entropy(xr, t, w, reduction=reduction, label_smoothing=smoothing, backend=backend)
        expected = F.cross_entropy(xe, t, w, reduction=reduction, label_smoothing=smoothing)
        torch.testing.assert_close(loss, expected)
        (g,), (ge,) = torch.autograd.grad(loss.sum(), xr), torch.autograd.grad(expected.sum(), xe)
        torch.testing.assert_close(g, ge)
        again = cross_entropy(x.clone(), t, w, reduction=reduction, label_smoothing=smoothing, backend=backend)
        assert torch.equal(again, loss.detach())  # fixed-order combination: deterministic
    inplace = x.clone().requires_grad_()
    loss = cross_entropy(inplace, t, w, label_smoothing=smoothing, backend=backend, inplace_backward=True)
    torch.testing.assert_close(loss, F.cross_entropy(x, t, w, label_smoothing=smoothing))
    assert launches and all(split_c < 150 for split_c in launches)


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICE if p.values[0] == "triton"])
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("weighted,smoothing", [(False, 0.0), (True, 0.1)])
@pytest.mark.parametrize("C", [1, 3, 20, 32])
def test_triton_row_in_registers_and_chunked_rows_agree(backend, device, kind, weighted, smoothing, C, monkeypatch):
    """Rows that fit one program's registers (the resident kernel; under the interpreter up to
    32 columns, four rows per program, so 6 rows leave two past the batch) against the chunked
    online-softmax kernel forced on the same rows, and torch, with ignored rows, -inf entries,
    a row of only -inf, NaN and the in-place mode."""
    require(backend, device)
    from fusedmlp.triton_kernels import cross_entropy as tk

    torch.manual_seed(17)
    x = torch.randn(6, C, device=device, dtype=torch.float64) * 3
    x[0, 0] = float("-inf")
    x[4, :] = float("-inf")
    x[5, C - 1] = float("nan")
    t = make_target(kind, (6,), C, device, torch.float64, seed=4)
    if kind == "index":
        t[1] = -100
    w = torch.rand(C, device=device, dtype=torch.float64) + 0.5 if weighted else None
    chosen = []
    real_choice = tk._resident_config
    monkeypatch.setattr(tk, "_resident_config", lambda *a: chosen.append(real_choice(*a)) or chosen[-1])
    results = {}
    for forced in (False, True):
        if forced:  # the chunked kernel for the same rows
            monkeypatch.setattr(tk, "_resident_config", lambda *a: None)
        xr = x.clone().requires_grad_()
        loss = cross_entropy(xr, t, w, reduction="none", label_smoothing=smoothing, backend=backend)
        (g,) = torch.autograd.grad(loss.sum(), xr)
        inplace = x.clone().requires_grad_()
        loss_inplace = cross_entropy(
            inplace, t, w, reduction="none", label_smoothing=smoothing, backend=backend, inplace_backward=True
        )
        results[forced] = (loss.detach(), g, loss_inplace.detach())
    assert chosen and all(c is not None for c in chosen)
    for resident, chunked in zip(results[False], results[True]):
        torch.testing.assert_close(resident, chunked, equal_nan=True)
    xe = x.clone().requires_grad_()
    expected = F.cross_entropy(xe, t, w, reduction="none", label_smoothing=smoothing)
    (ge,) = torch.autograd.grad(expected.sum(), xe)
    torch.testing.assert_close(results[False][0], expected.detach(), equal_nan=True)
    torch.testing.assert_close(results[False][1], ge, equal_nan=True)


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICE if p.values[1] == "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_few_wide_rows_are_split_on_gpu(backend, device, dtype, kind):
    """4 rows x 40000 classes: below four rows per SM and above the split width, so both GPU
    backends split every row across blocks/programs (three launches)."""
    require(backend, device)
    torch.manual_seed(12)
    x = (torch.randn(4, 40000, device=device) * 3).to(dtype)
    x[0, 9] = float("-inf")
    t = make_target(kind, (4,), 40000, device, dtype, seed=5)
    if kind == "index":
        t[2] = -100
    w = torch.rand(40000, device=device, dtype=dtype) + 0.5
    for weight, smoothing in ((None, 0.0), (w, 0.1)):
        xr = x.clone().requires_grad_()
        loss = cross_entropy(xr, t, weight, label_smoothing=smoothing, backend=backend)
        (g,) = torch.autograd.grad(loss, xr)
        x64 = x.double().requires_grad_()
        t64 = t.double() if kind == "prob" else t
        ref = F.cross_entropy(x64, t64, None if weight is None else weight.double(), label_smoothing=smoothing)
        (g64,) = torch.autograd.grad(ref, x64)
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=tol, atol=tol)
        torch.testing.assert_close(g.double(), g64, rtol=tol, atol=tol * 1e-3)
        again = cross_entropy(x.clone(), t, weight, label_smoothing=smoothing, backend=backend)
        assert torch.equal(again, loss.detach())
        inplace = x.clone()
        loss_inplace = cross_entropy(
            inplace.requires_grad_(), t, weight, label_smoothing=smoothing, backend=backend, inplace_backward=True
        )
        assert torch.equal(loss_inplace.detach(), loss.detach())


# Rows of (N, C) that the GPU kernels handle in different ways: with many rows (no split) the
# CUDA kernel keeps rows of up to 512 threads x 8 16-byte vectors in registers when C is a
# multiple of the vector width; the others (C % 4 != 0, too wide for float64, a misaligned
# buffer) take the two-pass kernel.
WIDE_ROW_CASES = [
    (600, 1032, torch.float32, False),  # just above the warp-per-row width: 256 threads
    (600, 8192, torch.float32, False),  # 256 threads x 8 vectors
    (530, 16384, torch.float32, False),  # 512 threads x 8 vectors
    (530, 32000, torch.bfloat16, False),  # the vocabulary: 512 threads x 8 (7) vectors
    (530, 2056, torch.float16, False),
    (530, 4104, torch.float64, False),
    (530, 16400, torch.float64, False),  # too wide for float64's registers: two passes
    (600, 1030, torch.float32, False),  # not a multiple of the vector: two passes
    (600, 2048, torch.float32, True),  # a buffer 4 bytes off 16-byte alignment: two passes
]


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICE if p.values[1] == "cuda"])
@pytest.mark.parametrize("N,C,dtype,misaligned", WIDE_ROW_CASES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_wide_rows_on_gpu(backend, device, N, C, dtype, misaligned, kind):
    require(backend, device)
    torch.manual_seed(13)
    x = (torch.randn(N, C, device=device) * 4).to(dtype)
    if misaligned:
        x = torch.cat([x.new_zeros(1), x.flatten()])[1:].view(N, C)
        assert x.data_ptr() % 16 != 0
    x[0, 5] = float("-inf")
    x[1, :] = float("-inf")
    x[1, 3] = 0.0
    t = make_target(kind, (N,), C, device, dtype, seed=3)
    if kind == "index":
        t[2] = -100
        t[3] = C - 1
    w = (torch.rand(C, device=device) + 0.5).to(dtype)
    tol = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 2e-2}[dtype]
    # Class-index targets without smoothing take the CUDA resident kernel's hard-target path,
    # with and without a weight.
    for weight, smoothing in ((None, 0.0), (w, 0.0), (w, 0.1)):
        xr = x.detach().clone().requires_grad_()
        loss = cross_entropy(xr, t, weight, reduction="none", label_smoothing=smoothing, backend=backend)
        g_out = torch.rand(N, device=device, dtype=dtype)
        (g,) = torch.autograd.grad(loss, xr, g_out)
        x64 = x.detach().double().requires_grad_()
        t64 = t.double() if kind == "prob" else t
        w64 = None if weight is None else weight.double()
        ref = F.cross_entropy(x64, t64, w64, reduction="none", label_smoothing=smoothing)
        (g64,) = torch.autograd.grad(ref, x64, g_out.double())
        torch.testing.assert_close(loss.double(), ref.detach(), rtol=tol, atol=tol)
        torch.testing.assert_close(g.double(), g64, rtol=tol, atol=tol * 1e-2)
        with torch.no_grad():  # the loss alone: the kernels skip the gradient
            loss_only = cross_entropy(x, t, weight, reduction="none", label_smoothing=smoothing, backend=backend)
        torch.testing.assert_close(loss_only.double(), ref.detach(), rtol=tol, atol=tol)
        inplace = x.detach().clone().contiguous().requires_grad_()
        loss_inplace = cross_entropy(
            inplace, t, weight, reduction="none", label_smoothing=smoothing, backend=backend, inplace_backward=True
        )
        (g_inplace,) = torch.autograd.grad(loss_inplace, inplace, g_out)
        torch.testing.assert_close(loss_inplace.double(), ref.detach(), rtol=tol, atol=tol)
        torch.testing.assert_close(g_inplace.double(), g64, rtol=tol, atol=tol * 1e-2)


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICE if p.values[0] in ("cpu", "cuda")])
def test_cpp_autograd_op_inference_mode_and_bad_reduction(backend, device):
    require(backend, device)
    x = torch.randn(5, 4, device=device)
    t = torch.tensor([0, 3, -100, 1, 2], device=device)
    with torch.inference_mode():
        for reduction in REDUCTIONS:
            torch.testing.assert_close(
                torch.ops.fusedmlp.cross_entropy(x, t, None, -100, 0.0, reduction),
                F.cross_entropy(x, t, reduction=reduction),
            )
    with pytest.raises(ValueError, match="is not a valid value for reduction"):
        torch.ops.fusedmlp.cross_entropy(x, t, None, -100, 0.0, "avg")


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_module_matches_nn(backend, device):
    require(backend, device)
    w = torch.rand(7, device=device)
    ours = fusedmlp.FusedCrossEntropyLoss(w, ignore_index=2, reduction="sum", label_smoothing=0.1, backend=backend)
    ref = torch.nn.CrossEntropyLoss(w, ignore_index=2, reduction="sum", label_smoothing=0.1)
    assert isinstance(ours, torch.nn.CrossEntropyLoss)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(ours.state_dict())
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 7, device=device, requires_grad=True)
    t = torch.tensor([0, 2, 6, 3, 2], device=device)
    torch.testing.assert_close(ours(x, t), ref(x, t))
    assert "backend" in repr(ours)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("kind", ["index", "prob"])
def test_torch_compile_fullgraph(backend, device, kind):
    require(backend, device)
    torch._dynamo.reset()
    x = torch.randn(6, 9, device=device, requires_grad=True)
    t = make_target(kind, (6,), 9, device, torch.float32)
    w = torch.rand(9, device=device)

    def step(v):
        return cross_entropy(v, t, w, label_smoothing=0.1, backend=backend) * 2

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (g,) = torch.autograd.grad(out, x)
    ref = F.cross_entropy(x, t, w, label_smoothing=0.1) * 2
    (g_ref,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(out, ref)
    # Regression (torch 2.11, the GPU machine's): a forward returning `loss.to(same dtype)`, an
    # alias of an intermediate, made the compiled graph's logits gradient all zeros.
    torch.testing.assert_close(g, g_ref)


# -----------------------------------------------------------------------------------------
# The in-place gradient mode.


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_inplace_backward(backend, device, reduction):
    require(backend, device)
    torch.manual_seed(6)
    w = torch.randn(8, 5, device=device, dtype=torch.float64, requires_grad=True)
    h = torch.randn(7, 8, device=device, dtype=torch.float64)
    t = torch.tensor([0, 1, 4, -100, 2, 3, 3], device=device)
    logits = h @ w  # the mm backward does not need its output, so it may be overwritten
    loss = cross_entropy(logits, t, reduction=reduction, label_smoothing=0.1, backend=backend, inplace_backward=True)
    go = torch.randn_like(loss)
    loss.backward(go)
    w_ref = w.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(h @ w_ref, t, reduction=reduction, label_smoothing=0.1)
    ref.backward(go)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(w.grad, w_ref.grad)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_inplace_backward_is_seen_by_autograd(backend, device):
    """Writing the gradient over the logits bumps their version counter, so a graph that saved
    the logits (here exp, whose backward reads its output) refuses to backpropagate through the
    overwritten values, with torch's own error, instead of a silently wrong gradient."""
    require(backend, device)
    z = torch.randn(4, 5, device=device, requires_grad=True)
    logits = z.exp()
    before = logits._version
    loss = cross_entropy(logits, torch.tensor([0, 1, 2, 3], device=device), backend=backend, inplace_backward=True)
    assert logits._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_inplace_backward_refuses_second_backward(backend, device):
    require(backend, device)
    x = torch.randn(4, 6, device=device, requires_grad=True)
    logits = x * 1.0
    loss = cross_entropy(logits, torch.tensor([0, 1, 2, 3], device=device), backend=backend, inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second backward"):
        loss.backward()
    with pytest.raises(RuntimeError, match="contiguous"):
        cross_entropy(
            torch.randn(6, 4, device=device).t(),
            torch.zeros(4, dtype=torch.long, device=device),
            backend=backend,
            inplace_backward=True,
        )


# -----------------------------------------------------------------------------------------
# Bad input: torch's exception types, nothing launched.


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_bad_input(backend, device):
    require(backend, device)
    x = torch.randn(3, 5, device=device)
    t = torch.tensor([0, 1, 2], device=device)
    if device == "cpu":
        for bad in ([0, 5, 1], [0, -3, 1]):
            with pytest.raises(IndexError, match=f"Target {bad[1]} is out of bounds."):
                cross_entropy(x, torch.tensor(bad, device=device), backend=backend)
    else:
        with pytest.raises(IndexError, match="Target 5 is out of bounds."):
            cross_entropy(x, torch.tensor([0, 5, 1], device=device), backend=backend, validate=True)
    with pytest.raises(RuntimeError, match="expected target dtype to be Long or Byte, but got Int"):
        cross_entropy(x, t.int(), backend=backend)
    with pytest.raises(RuntimeError, match="expected target dtype to be Long or Byte, but got Float"):
        cross_entropy(x, t.float(), backend=backend)
    with pytest.raises(ValueError, match=r"Expected input batch_size \(3\) to match target batch_size \(2\)"):
        cross_entropy(x, t[:2], backend=backend)
    with pytest.raises(RuntimeError, match="multi-target not supported"):
        cross_entropy(x, torch.zeros(3, 4, dtype=torch.long, device=device), backend=backend)
    with pytest.raises(RuntimeError, match=r"Expected target size \[2, 3\], got \[2, 4\]"):
        cross_entropy(
            torch.randn(2, 5, 3, device=device), torch.zeros(2, 4, dtype=torch.long, device=device), backend=backend
        )
    with pytest.raises(ValueError, match="bad is not a valid value for reduction"):
        cross_entropy(x, t, reduction="bad", backend=backend)
    with pytest.raises(RuntimeError, match="label_smoothing must be between 0.0 and 1.0"):
        cross_entropy(x, t, label_smoothing=1.5, backend=backend)
    with pytest.raises(RuntimeError, match="weight tensor should be defined either for all 5 classes"):
        cross_entropy(x, t, weight=torch.ones(4, device=device), backend=backend)
    with pytest.raises(RuntimeError, match="expected scalar type"):
        cross_entropy(x, t, weight=torch.ones(5, device=device, dtype=torch.float64), backend=backend)
    with pytest.raises(RuntimeError, match="Expected floating point type for target with class probabilities"):
        cross_entropy(torch.randn(5, device=device), torch.zeros(5, dtype=torch.long, device=device), backend=backend)
    with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point target"):
        cross_entropy(x, torch.rand(3, 5, device=device), ignore_index=1, backend=backend)
    with pytest.raises(RuntimeError, match="not differentiable with respect to argument 'weight'"):
        cross_entropy(x, t, weight=torch.ones(5, device=device, requires_grad=True), backend=backend)


def test_uint8_targets_and_negative_smoothing_like_torch():
    x = torch.randn(4, 6, dtype=torch.float64)
    t = torch.tensor([0, 5, 2, 1], dtype=torch.uint8)
    assert_same(*both(x, t, "cpu"))
    assert_same(*both(x, t.long(), "cpu", label_smoothing=-0.1))


def test_cpu_kernel_rejects_out_of_range_target_directly():
    with pytest.raises(IndexError, match="Target 7 is out of bounds."):
        torch.ops.fusedmlp.cross_entropy_fwd(torch.randn(2, 3), torch.tensor([0, 7]), None, -100, 0.0, None, True)


def test_backend_errors():
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run here"):
        cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), backend="cuda")
    with pytest.raises(ValueError, match="unknown backend"):
        fusedmlp.FusedCrossEntropyLoss(backend="nope")


def test_wide_row():
    """A row wider than the CPU kernel's vector loops and the thread-pool grain. (A probe
    with row offsets past 2**31 needs > 8 GB of logits: not run here.)"""
    C = 70000
    x = torch.randn(2, C)
    t = torch.tensor([C - 1, 0])
    assert_same(*both(x, t, "cpu", label_smoothing=0.1))
