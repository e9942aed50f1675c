"""Kernel-level tests of fusedmlp.triton_kernels.mlp, the whole-network MLP kernels (launchers
plus a minimal autograd.Function for gradcheck; the package's own Function is tested elsewhere).

Without a GPU the kernels run under the Triton interpreter on CPU tensors (tests/conftest.py
sets TRITON_INTERPRET=1 before triton is imported); the interpreter tiles are 16 rows, so
batches 15/16/17 are BLOCK-1/BLOCK/BLOCK+1, and backward runs 3 persistent programs, so 70
rows (5 tiles) makes programs accumulate several tiles before the reduction; weight gradients
go in 16-row chunks (several for W >= 32), 128-wide nets take the sliced g @ W_i path
(PROP_CHUNK) that fp32/fp64 use on the GPU at W = 128, and 64-wide nets the row-sliced weight
gradient (ROW_CHUNK = 8: two slices of each 16-row tile). The AOT tests compile every kernel x
dtype x padded width for sm_80 and sm_90 (no GPU needed).
"""

import itertools

import pytest
import torch
from support import (
    AOT_ARCHS,
    TRITON_DEVICE,
    close_to_reference,
    needs_triton_runtime,
    run_triton_aot,
    skip_bf16_under_interpreter,
)

triton = pytest.importorskip("triton")

from fusedmlp.triton_kernels import mlp as tk  # noqa: E402

from fusedmlp.ops.mlp import mlp_bwd_torch  # noqa: E402

# Layer widths [K0, K1, ..., KL]: the padded tile width W is 16/32/64/128 across them, with the
# odd widths both hidden and at the input/output.
NETS = {
    "16x1": [16, 16],
    "2-30-20-2": [2, 30, 20, 2],
    "50-30-20-3": [50, 30, 20, 3],
    "64x4": [64, 64, 64, 64, 64],
    "7-128-5": [7, 128, 5],
    "128-30-128": [128, 30, 128],
}


def _make(dims, M, dtype, *, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, dims[0], generator=g, dtype=torch.float64)
    weights = [torch.randn(o, i, generator=g, dtype=torch.float64) / i**0.5 for i, o in zip(dims, dims[1:])]
    biases = [0.5 * torch.randn(o, generator=g, dtype=torch.float64) for o in dims[1:]] if bias else []
    go = torch.randn(M, dims[-1], generator=g, dtype=torch.float64)
    cast = lambda t: t.to(dtype=dtype, device=TRITON_DEVICE)  # noqa: E731
    return cast(x), [cast(w) for w in weights], [cast(b) for b in biases], cast(go)


def _sequential(weights, biases):
    layers = []
    for i, w in enumerate(weights):
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bool(biases), dtype=w.dtype, device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w)
            if biases:
                lin.bias.copy_(biases[i])
        layers.append(lin)
        if i + 1 < len(weights):
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def _reference(x, weights, biases, go, dtype=None):
    """Output and (dx, dWs, dbs) of nn.Sequential by autograd, computed in `dtype` (default x's)."""
    dtype = dtype or x.dtype
    net = _sequential([w.to(dtype) for w in weights], [b.to(dtype) for b in biases])
    xr = x.detach().to(dtype).requires_grad_()
    out = net(xr)
    out.backward(go.to(dtype))
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    return out.detach(), xr.grad, [m.weight.grad for m in linears], [m.bias.grad for m in linears] if biases else []


def _run(x, weights, biases, go):
    out, acts = tk.mlp_fwd_triton(x, weights, biases)
    L = len(weights)
    dx, dws, dbs = tk.mlp_bwd_triton(go, x, weights, acts, True, [True] * L, [True] * L if biases else [])
    return out, dx, dws, dbs


def _flat(result):
    out, dx, dws, dbs = result
    return [out, dx, *dws, *dbs]


def _assert_matches(result, x, weights, biases, go):
    dtype = x.dtype
    ours = _flat(result)
    if dtype == torch.float64:
        for a, r in zip(ours, _flat(_reference(x, weights, biases, go))):
            torch.testing.assert_close(a, r)
        return
    higher = torch.float64 if dtype == torch.float32 else torch.float32
    floor = 1e-5 if dtype == torch.float32 else 1e-3
    for a, r, t in zip(
        ours, _flat(_reference(x, weights, biases, go, higher)), _flat(_reference(x, weights, biases, go))
    ):
        close_to_reference(a, r, t, floor=floor * max(1.0, r.abs().max().item()))


# ---------------------------------------------------------------------------------------
# Against nn.Sequential.


@needs_triton_runtime
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("M", [1, 16, 33])
@pytest.mark.parametrize("net", list(NETS), ids=list(NETS))
def test_fp64_matches_sequential(net, M, bias):
    x, weights, biases, go = _make(NETS[net], M, torch.float64, bias=bias)
    _assert_matches(_run(x, weights, biases, go), x, weights, biases, go)


@needs_triton_runtime
@pytest.mark.parametrize("M", [15, 17, 70])
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=skip_bf16_under_interpreter)], ids=str
)
@pytest.mark.parametrize("net", ["2-30-20-2", "64x4", "7-128-5"])
def test_low_precision_matches_sequential(net, dtype, M):
    """fp32 within 2x torch-fp32's error of fp64; fp16/bf16 within 2x torch's own error of fp32
    (hidden layers rounded to the dtype as nn.Sequential does)."""
    x, weights, biases, go = _make(NETS[net], M, dtype)
    _assert_matches(_run(x, weights, biases, go), x, weights, biases, go)


@pytest.mark.gpu
@pytest.mark.parametrize("M", [100, 1000, 5000])
@pytest.mark.parametrize("net", ["2-30-20-2", "50-30-20-3", "64x4"])
def test_row_sliced_backward_tiles_match_sequential(net, M, monkeypatch):
    """The fp32 backward at the row-sliced tiles (tk.ROW_SLICED_BWD_TILES: candidates for the
    benchmark's networks, not launched by default) on the GPU, where their tiles apply; under
    the interpreter every 64-wide backward slices rows."""
    if TRITON_DEVICE != "cuda":
        pytest.skip("the GPU tiles apply on a GPU only")
    width = tk._padded_width(NETS[net])
    monkeypatch.setitem(tk._GPU_TILES["bwd"]["fp32"], width, tk.ROW_SLICED_BWD_TILES[width])
    x, weights, biases, go = _make(NETS[net], M, torch.float32)
    _assert_matches(_run(x, weights, biases, go), x, weights, biases, go)


@needs_triton_runtime
def test_activations_are_the_hidden_relu_outputs():
    x, weights, biases, _ = _make(NETS["50-30-20-3"], 17, torch.float64)
    out, acts = tk.mlp_fwd_triton(x, weights, biases)
    hidden = x
    for w, b, act in zip(weights, biases, acts):
        hidden = torch.relu(hidden @ w.t() + b)
        torch.testing.assert_close(act, hidden)
        assert act.is_contiguous() and act.dtype == x.dtype
    assert len(acts) == len(weights) - 1 and out.shape == (17, 3)


@needs_triton_runtime
@pytest.mark.parametrize(("dims", "bias"), [([5, 16, 3], True), ([6, 20, 12, 4], False)], ids=["2layer", "3layer"])
def test_every_subset_of_gradients(dims, bias):
    """Each subset of (input, weight, bias) gradients: the wanted ones match autograd, the others
    are empty; propagation stops once nothing below is wanted (checked by the results of the
    layers below being empty, and the wanted ones still exact)."""
    x, weights, biases, go = _make(dims, 19, torch.float64, bias=bias)
    L = len(weights)
    _, ref_dx, ref_dws, ref_dbs = _reference(x, weights, biases, go)
    _, acts = tk.mlp_fwd_triton(x, weights, biases)
    nflags = 1 + L + (L if bias else 0)
    for flags in itertools.product([False, True], repeat=nflags):
        input_grad, weight_grads, bias_grads = flags[0], list(flags[1 : 1 + L]), list(flags[1 + L :])
        dx, dws, dbs = tk.mlp_bwd_triton(go, x, weights, acts, input_grad, weight_grads, bias_grads)
        label = f"input={input_grad} weights={weight_grads} biases={bias_grads}"
        if input_grad:
            torch.testing.assert_close(dx, ref_dx, msg=label)
        else:
            assert dx.numel() == 0, label
        for got, ref, wanted in zip(dws + dbs, ref_dws + ref_dbs, weight_grads + bias_grads):
            if wanted:
                torch.testing.assert_close(got, ref, msg=label)
            else:
                assert got.numel() == 0, label
        assert len(dws) == L and len(dbs) == len(bias_grads)


# ---------------------------------------------------------------------------------------
# Edge cases.


@needs_triton_runtime
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_batch_zero(dtype, bias):
    x, weights, biases, go = _make([3, 20, 2], 0, dtype, bias=bias)
    out, acts = tk.mlp_fwd_triton(x, weights, biases)
    assert out.shape == (0, 2) and [a.shape for a in acts] == [(0, 20)]
    dx, dws, dbs = tk.mlp_bwd_triton(go, x, weights, acts, True, [True, True], [True, True] if bias else [])
    assert dx.shape == (0, 3)
    for g, w in zip(dws, weights):
        torch.testing.assert_close(g, torch.zeros_like(w), rtol=0, atol=0)
    for g, b in zip(dbs, biases):
        torch.testing.assert_close(g, torch.zeros_like(b), rtol=0, atol=0)


@needs_triton_runtime
def test_deterministic():
    """Weight/bias gradients are reduced in a fixed order: two runs are bitwise equal (70 rows
    are 5 tiles over 3 persistent programs under the interpreter)."""
    x, weights, biases, go = _make(NETS["2-30-20-2"], 70, torch.float32)
    first = _flat(_run(x, weights, biases, go))
    second = _flat(_run(x, weights, biases, go))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@needs_triton_runtime
def test_nan_activation_passes_gradient():
    """threshold_backward's rule: the mask blocks where act <= 0, so NaN passes its gradient;
    a NaN input propagates through the forward like torch.relu (no tl.maximum NaN dropping)."""
    x, weights, biases, go = _make([4, 16, 16, 3], 9, torch.float64)
    x[2, 1] = float("nan")
    out, acts = tk.mlp_fwd_triton(x, weights, biases)
    ref_out, _, _, _ = _reference(x, weights, biases, go)
    torch.testing.assert_close(out, ref_out, equal_nan=True)
    assert out[2].isnan().all() and not out[[0, 1, 3]].isnan().any()

    x, weights, biases, go = _make([4, 16, 16, 3], 9, torch.float64, seed=1)
    _, acts = tk.mlp_fwd_triton(x, weights, biases)
    acts = [a.clone() for a in acts]
    acts[0][3, 5] = float("nan")
    acts[1][4, 7] = float("nan")
    acts[1][5, 2] = 0.0
    flags = (True, [True, True, True], [True, True, True])
    ours = tk.mlp_bwd_triton(go, x, weights, acts, *flags)
    ref = mlp_bwd_torch(go, x, weights, acts, *flags)
    for a, r in zip([ours[0], *ours[1], *ours[2]], [ref[0], *ref[1], *ref[2]]):
        torch.testing.assert_close(a, r, equal_nan=True)


@needs_triton_runtime
def test_non_contiguous_and_canary_views():
    """Operands are strided views into larger NaN-filled buffers (x transposed and sliced,
    weights transposed, grad_output expanded with stride 0): any read outside a view would turn
    a result NaN. Results equal the contiguous call bitwise, and no buffer is written."""
    dims, M = [12, 30, 20, 5], 21
    x, weights, biases, go = _make(dims, M, torch.float64)
    go = go[:1].expand(M, dims[-1])
    want = _flat(_run(x, weights, biases, go.contiguous()))

    def embed_transposed(t, pad):
        big = torch.full(
            (t.shape[1] + 2 * pad, t.shape[0] + 2 * pad), float("nan"), dtype=t.dtype, device=TRITON_DEVICE
        )
        view = big[pad : pad + t.shape[1], pad : pad + t.shape[0]]
        view.copy_(t.t())
        return big, view.t()

    bufs, views = zip(*[embed_transposed(t, 2) for t in [x, *weights]])
    assert not views[0].is_contiguous() and not views[1].is_contiguous()
    before = [b.clone() for b in bufs]
    x_view, w_views = views[0], list(views[1:])
    got = _flat(_run(x_view, w_views, biases, go))
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    _run(x_view, w_views, biases, go)  # backward twice
    for b, b0 in zip(bufs, before):
        torch.testing.assert_close(b, b0, rtol=0, atol=0, equal_nan=True)


# ---------------------------------------------------------------------------------------
# gradcheck through a minimal autograd.Function over the launchers.


class _TritonMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, layers, x, *params):
        weights, biases = list(params[:layers]), list(params[layers:])
        out, acts = tk.mlp_fwd_triton(x, weights, biases)
        ctx.layers, ctx.has_bias = layers, bool(biases)
        ctx.save_for_backward(x, *weights, *acts)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        L = ctx.layers
        saved = ctx.saved_tensors
        x, weights, acts = saved[0], list(saved[1 : 1 + L]), list(saved[1 + L :])
        needs = ctx.needs_input_grad
        dx, dws, dbs = tk.mlp_bwd_triton(
            grad_out, x, weights, acts, needs[1], list(needs[2 : 2 + L]), list(needs[2 + L :]) if ctx.has_bias else []
        )
        none_if_empty = lambda g, wanted: g if wanted else None  # noqa: E731
        grads = [none_if_empty(dx, needs[1])] + [none_if_empty(g, n) for g, n in zip(dws + dbs, needs[2:])]
        return (None, *grads)


@needs_triton_runtime
@pytest.mark.parametrize(("dims", "bias"), [([3, 5, 2], True), ([4, 6, 5, 3], False)], ids=["2layer", "3layer"])
def test_gradcheck_fp64(dims, bias):
    x, weights, biases, _ = _make(dims, 5, torch.float64, bias=bias)
    inputs = [t.detach().requires_grad_() for t in [x, *weights, *biases]]
    assert torch.autograd.gradcheck(lambda *args: _TritonMLP.apply(len(weights), *args), inputs)


# ---------------------------------------------------------------------------------------
# Coverage and bad arguments.


@needs_triton_runtime
def test_covers_and_rejects_uncovered_shapes():
    x, weights, biases, go = _make([8, 16, 4], 3, torch.float64)
    assert tk.covers(x, weights) and tk.uncovered_reason(x, weights) is None
    assert tk.MAX_WIDTH == 128 and tk.MAX_LAYERS == 8
    wide = [
        torch.zeros(129, 8, dtype=x.dtype, device=TRITON_DEVICE),
        torch.zeros(4, 129, dtype=x.dtype, device=TRITON_DEVICE),
    ]
    wide_in = torch.zeros(3, 129, dtype=x.dtype, device=TRITON_DEVICE)
    deep = [torch.zeros(8, 8, dtype=x.dtype, device=TRITON_DEVICE) for _ in range(tk.MAX_LAYERS + 1)]
    cases = [
        (x, wide, "MAX_WIDTH"),
        (wide_in, [torch.zeros(4, 129, dtype=x.dtype, device=TRITON_DEVICE)], "MAX_WIDTH"),
        (x, deep, "MAX_LAYERS"),
        (x[:, :0], [torch.zeros(4, 0, dtype=x.dtype, device=TRITON_DEVICE)], "width"),
        (x.to(torch.int32), [w.to(torch.int32) for w in weights], "dtype"),
    ]
    for inp, ws, match in cases:
        assert not tk.covers(inp, ws)
        assert match in tk.uncovered_reason(inp, ws)
        with pytest.raises(RuntimeError, match=match):
            tk.mlp_fwd_triton(inp, ws, [])
    assert "2-D" in tk.uncovered_reason(x[None], weights)
    with pytest.raises(RuntimeError, match="MAX_WIDTH"):
        tk.mlp_bwd_triton(
            torch.zeros(3, 4, dtype=x.dtype, device=TRITON_DEVICE),
            x,
            wide,
            [torch.zeros(3, 129, dtype=x.dtype, device=TRITON_DEVICE)],
            True,
            [True] * 2,
            [],
        )


@needs_triton_runtime
def test_rejects_bad_arguments():
    x, weights, biases, go = _make([8, 16, 4], 3, torch.float64)
    _, acts = tk.mlp_fwd_triton(x, weights, biases)
    with pytest.raises(RuntimeError, match="layer 1"):
        tk.mlp_fwd_triton(x, [weights[0], weights[1][:, :15]], [])
    with pytest.raises(RuntimeError, match="dtype"):
        tk.mlp_fwd_triton(x, [weights[0].float(), weights[1]], [])
    with pytest.raises(RuntimeError, match="bias 1"):
        tk.mlp_fwd_triton(x, weights, [biases[0], biases[1][:3]])
    with pytest.raises(RuntimeError, match="one bias per weight"):
        tk.mlp_fwd_triton(x, weights, biases[:1])
    with pytest.raises(RuntimeError, match="no weights"):
        tk.mlp_fwd_triton(x, [], [])
    with pytest.raises(RuntimeError, match="grad_output"):
        tk.mlp_bwd_triton(go[:, :3], x, weights, acts, True, [True, True], [])
    with pytest.raises(RuntimeError, match="activation 0"):
        tk.mlp_bwd_triton(go, x, weights, [acts[0][:, :15]], True, [True, True], [])
    with pytest.raises(RuntimeError, match="activations"):
        tk.mlp_bwd_triton(go, x, weights, [], True, [True, True], [])
    with pytest.raises(RuntimeError, match="flags"):
        tk.mlp_bwd_triton(go, x, weights, acts, True, [True], [])


# ---------------------------------------------------------------------------------------
# Launch tables (triton_kernels/_launch.py): the device copies of the launchers' tables, kept
# by content. Without a GPU the CUDA path runs with its three CUDA calls stood in for.


@pytest.fixture
def cuda_stand_ins(monkeypatch):
    """get() on a "cuda" device without a GPU: the current stream, the capture flag and the
    host-to-device copy replaced by settable stand-ins; returns (state, copies made)."""
    from fusedmlp.triton_kernels import _launch

    state = {"stream": 11, "capturing": False}
    copies = []

    def copy(entries, device):
        copies.append(list(entries))
        return torch.tensor(entries, dtype=torch.int64)

    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda index: state["stream"], raising=False)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: state["capturing"])
    monkeypatch.setattr(_launch, "_copy_to_device", copy)
    return state, copies


def test_launch_tables_are_kept_by_content_per_stream(cuda_stand_ins):
    from fusedmlp.triton_kernels._launch import LaunchTables

    state, copies = cuda_stand_ins
    tables, gpu = LaunchTables(capacity=3), torch.device("cuda", 0)
    first = tables.get([1, 2, 3], gpu)
    assert first.tolist() == [1, 2, 3] and first.dtype == torch.int64
    assert tables.get([1, 2, 3], gpu) is first and len(copies) == 1
    assert tables.get([1, 2, 4], gpu).tolist() == [1, 2, 4] and len(copies) == 2
    state["stream"] = 12  # another stream copies its own: only its kernels are ordered after that copy
    assert tables.get([1, 2, 3], gpu) is not first and len(copies) == 3
    assert tables.get([1, 2, 3], torch.device("cuda", 1)) is not first and len(copies) == 4
    assert len(tables) == 3  # capacity: [1, 2, 3] on stream 11 was the least recently used
    state["stream"] = 11
    assert tables.get([1, 2, 3], gpu) is not first and len(copies) == 5


def test_launch_tables_keep_nothing_while_a_graph_is_captured(cuda_stand_ins):
    from fusedmlp.triton_kernels._launch import LaunchTables

    state, copies = cuda_stand_ins
    tables, gpu = LaunchTables(), torch.device("cuda", 0)
    kept = tables.get([5, 6], gpu)
    state["capturing"] = True
    captured = tables.get([5, 6], gpu)
    assert captured is not kept and captured.tolist() == [5, 6] and len(copies) == 2
    assert tables.get([7], gpu).tolist() == [7] and len(tables) == 1
    state["capturing"] = False
    assert tables.get([5, 6], gpu) is kept


def test_launch_tables_on_cpu_are_made_per_launch():
    from fusedmlp.triton_kernels._launch import LaunchTables

    tables = LaunchTables()
    table = tables.get([3, -1, 2**40], torch.device("cpu"))
    assert table.tolist() == [3, -1, 2**40] and len(tables) == 0


@pytest.mark.gpu
def test_a_training_loop_copies_no_launch_table_after_warm_up(monkeypatch):
    """What the cache is for: once the caching allocator has settled, a Triton training step
    (forward, backward, SGD) finds every table it launches with."""
    from fusedmlp.triton_kernels import _launch

    import fusedmlp

    if TRITON_DEVICE != "cuda":
        pytest.skip("needs a CUDA device and the compiled Triton kernels")
    torch.manual_seed(0)
    model = fusedmlp.FusedMLP(2, 2, (30, 20), backend="triton").cuda()
    optimizer = fusedmlp.FusedSGD(model.parameters(), lr=0.1, momentum=0.9, backend="triton")
    loss_fn = fusedmlp.FusedCrossEntropyLoss(backend="triton")
    x, y = torch.randn(4096, 2, device="cuda"), torch.randint(0, 2, (4096,), device="cuda")

    def step():
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()

    for _ in range(3):
        step()
    copies = []
    copy = _launch._copy_to_device
    monkeypatch.setattr(_launch, "_copy_to_device", lambda entries, device: copies.append(1) or copy(entries, device))
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    assert not copies, f"{len(copies)} tables copied in 5 steps after warm-up"


@needs_triton_runtime
@pytest.mark.parametrize("net", ["2-30-20-2", "64x4", "7-128-5"])
def test_fp32_tf32x3_dots_match_sequential(net, monkeypatch):
    """The tf32x3 experiment (FP32_DOT_PRECISION, not launched by default) within fp32's
    tolerances of nn.Sequential. Under the interpreter, whose dots compute in fp32 whatever the
    precision, this checks that the setting reaches every dot of both kernels (the AOT test
    below: that they compile to tensor-core code); on a GPU, the 3xTF32 products themselves."""
    monkeypatch.setattr(tk, "FP32_DOT_PRECISION", "tf32x3")
    assert tk._config("fwd", torch.float32, 64, torch.device(TRITON_DEVICE))[0]["DOT_PRECISION"] == "tf32x3"
    assert tk._config("bwd", torch.float64, 64, torch.device(TRITON_DEVICE))[0]["DOT_PRECISION"] == "ieee"
    x, weights, biases, go = _make(NETS[net], 70, torch.float32)
    _assert_matches(_run(x, weights, biases, go), x, weights, biases, go)


# ---------------------------------------------------------------------------------------
# AOT compile for sm_80 / sm_90, no GPU needed (tests/support.py runs the compile script).


@pytest.fixture(scope="module")
def aot_report(tmp_path_factory):
    return run_triton_aot(tk.__name__, tmp_path_factory.mktemp("triton_mlp_aot"))


def _label(r):
    return f"{r['kernel']}[{r['variant']}] {r['dtype']} sm_{r['arch']} {r['config']} w{r['num_warps']}"


@pytest.mark.slow
class TestAOTCompile:
    def test_every_kernel_dtype_width_compiles(self, aot_report):
        failed = [f"{_label(r)}: {r['error']}" for r in aot_report if "error" in r]
        assert not failed, "\n".join(failed)
        compiled = {(r["kernel"], r["dtype"], r["arch"]) for r in aot_report}
        dtypes = [str(d).replace("torch.", "") for d in tk.SUPPORTED_DTYPES]
        assert compiled == {(k, d, a) for k in tk.KERNELS for d in dtypes for a in AOT_ARCHS}
        widths = {(r["kernel"], r["dtype"], r["config"]["W"]) for r in aot_report if "W" in r["config"]}
        network_kernels = ("_mlp_fwd_kernel", "_mlp_bwd_kernel")
        assert widths == {(k, d, w) for k in network_kernels for d in dtypes for w in (16, 32, 64, 128)}

    def test_no_register_spills(self, aot_report):
        rows = [r for r in aot_report if "error" not in r]
        unknown = [_label(r) for r in rows if r["spills"] is None]
        assert not unknown, "no ptxas spill report for:\n" + "\n".join(unknown)
        spilled = [f"{_label(r)}: {r['spills']} bytes spilled, {r['registers']} regs" for r in rows if r["spills"]]
        assert not spilled, "\n".join(spilled)

    def test_tensor_core_instructions(self, aot_report):
        """What Triton emits: fp16/bf16 and fp64 dots use tensor cores (mma.sync; on sm_90 also
        wgmma for fp16/bf16 when a dot has >= 64 rows and 4+ warps), fp32 dots with
        input_precision="ieee" never do (that would be TF32), and the tf32x3 experiment's do."""
        for r in aot_report:
            if "error" in r or r["kernel"] == "_mlp_grad_reduce_kernel":
                continue
            if r["variant"] == "tf32x3":
                assert r["mma_sync"] or r["wgmma"], _label(r)
            elif r["dtype"] == "float32":
                assert not (r["mma_sync"] or r["wgmma"]), _label(r)
            elif r["arch"] == 80 or r["dtype"] == "float64":
                assert r["mma_sync"] and not r["wgmma"], _label(r)
            else:
                assert r["mma_sync"] or r["wgmma"], _label(r)
                if r["config"]["BLOCK_M"] >= 64 and r["num_warps"] >= 4:
                    assert r["wgmma"], _label(r)
        for dtype in ("float16", "bfloat16"):
            assert any(r["wgmma"] for r in aot_report if r["arch"] == 90 and r["dtype"] == dtype)
