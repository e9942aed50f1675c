"""Linear(+ReLU): every backend against torch (F.linear + relu), over F.linear's input surface."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from support import backend_device_params, close_to_reference, require

import fusedmlp
from fusedmlp import LinearReLUFunction
from fusedmlp.functional import linear, linear_relu

BACKEND_DEVICE = backend_device_params()
SHAPES = [  # (M, K, N): 1x1, odd and prime sizes, block +-1 around 16/32/64, out_features 1
    (1, 1, 1),
    (7, 13, 5),
    (33, 17, 65),
    (31, 64, 33),
    (65, 63, 1),
    (2, 129, 3),
    (3, 7, 600),  # wider than one CPU bias-gradient block (256 columns)
]


def reference(x, w, b, relu):
    out = F.linear(x, w, b)
    return F.relu(out) if relu else out


def fused(x, w, b, relu, backend):
    return (linear_relu if relu else linear)(x, w, b, backend=backend)


def run_both(x, w, b, relu, backend, grad=None):
    """Forward + backward through fusedmlp and through torch on independent leaf copies."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    ref_leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    out = fused(*leaves, relu, backend)
    ref = reference(*ref_leaves, relu)
    g = torch.randn_like(ref) if grad is None else grad
    out.backward(g)
    ref.backward(g)
    grads = [t.grad if t is not None else None for t in leaves]
    ref_grads = [t.grad if t is not None else None for t in ref_leaves]
    return out, ref, grads, ref_grads


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
def test_matches_torch(backend, device, dtype, shape, relu):
    require(backend, device)
    torch.manual_seed(0)
    M, K, N = shape
    x = torch.randn(M, K, device=device, dtype=dtype)
    w = torch.randn(N, K, device=device, dtype=dtype)
    b = torch.randn(N, device=device, dtype=dtype)
    g = torch.randn(M, N, device=device, dtype=dtype)
    out, torch_out, grads, torch_grads = run_both(x, w, b, relu, backend, grad=g)
    if dtype == torch.float64:
        torch.testing.assert_close(out, torch_out)
        for ours, theirs in zip(grads, torch_grads):
            torch.testing.assert_close(ours, theirs)
        return
    # fp32: reductions of hundreds of terms may be summed in another order than torch's, so
    # compare both against an fp64 reference: our error at most 2x torch's own, plus 1e-5.
    ref, _, ref_grads, _ = run_both(*(t.double() for t in (x, w, b)), relu, "torch", grad=g.double())
    close_to_reference(out, ref, torch_out, floor=1e-5, terms=K)
    # grad_input sums N terms, grad_weight and grad_bias M.
    for ours, theirs, exact, terms in zip(grads, torch_grads, ref_grads, (N, M, M)):
        close_to_reference(ours, exact, theirs, floor=1e-5, terms=terms)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision(backend, device, dtype):
    require(backend, device)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bf16 dots on raw bit patterns; bf16 Triton runs on GPU only")
    torch.manual_seed(0)
    M, K, N = 37, 70, 45
    x32, w32, b32 = (torch.randn(*s, device=device) for s in ((M, K), (N, K), (N,)))
    g32 = torch.randn(M, N, device=device)
    _, ref32, _, ref_grads32 = run_both(x32, w32, b32, True, "torch", grad=g32)
    lowp = [t.to(dtype) for t in (x32, w32, b32)]
    out, torch_out, grads, torch_grads = run_both(*lowp, True, backend, grad=g32.to(dtype))
    assert out.dtype == dtype
    close_to_reference(out, ref32, torch_out)
    for g, t, r in zip(grads, torch_grads, ref_grads32):
        assert g.dtype == dtype
        close_to_reference(g, r, t, floor=1e-2)


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICE if p.values[1] == "cuda"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tall_batch_of_narrow_layer_on_gpu(backend, device, dtype):
    """A 50 -> 30 layer at 40,000 rows: the weight gradient is a 30 x 50 output summed over
    every row, which the GPU kernels split across blocks (split-K) so the GPU is not left to
    one block. Same values as the fp64 reference within torch's own error, and bitwise the
    same twice (the partials are added in a fixed order)."""
    require(backend, device)
    torch.manual_seed(0)
    M, K, N = 40_000, 50, 30
    x, w, b, g = (torch.randn(*s, device=device) for s in ((M, K), (N, K), (N,), (M, N)))
    _, ref, _, ref_grads = run_both(*(t.double() for t in (x, w, b)), True, "torch", grad=g.double())
    args = [t.to(dtype) for t in (x, w, b)]
    out, torch_out, grads, torch_grads = run_both(*args, True, backend, grad=g.to(dtype))
    floor = 1e-5 if dtype == torch.float32 else 1e-2
    close_to_reference(out, ref, torch_out, floor=floor, terms=K)
    # grad_input sums N terms; grad_weight and grad_bias sum every row, in split partials.
    for ours, exact, theirs, terms in zip(grads, ref_grads, torch_grads, (N, M, M)):
        close_to_reference(ours, exact, theirs, floor=floor, terms=terms)
    _, _, again, _ = run_both(*args, True, backend, grad=g.to(dtype))
    for first, second in zip(grads, again):
        assert torch.equal(first, second)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
class TestInputSurface:
    def check(self, x, w, b, backend, relu=True, grad=None):
        out, ref, grads, ref_grads = run_both(x, w, b, relu, backend, grad)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r)

    def test_1d_input(self, backend, device):
        require(backend, device)
        self.check(
            torch.randn(6, device=device), torch.randn(4, 6, device=device), torch.randn(4, device=device), backend
        )

    def test_extra_batch_dims(self, backend, device):
        require(backend, device)
        self.check(torch.randn(2, 3, 5, 6, device=device), torch.randn(4, 6, device=device), None, backend)

    def test_empty_batch(self, backend, device):
        require(backend, device)
        self.check(
            torch.randn(0, 6, device=device), torch.randn(4, 6, device=device), torch.randn(4, device=device), backend
        )

    def test_zero_in_features(self, backend, device):
        require(backend, device)
        self.check(
            torch.randn(3, 0, device=device), torch.randn(4, 0, device=device), torch.randn(4, device=device), backend
        )

    @pytest.mark.parametrize("relu", [True, False])
    def test_no_bias(self, backend, device, relu):
        require(backend, device)
        self.check(torch.randn(5, 6, device=device), torch.randn(4, 6, device=device), None, backend, relu)

    def test_non_contiguous_input_and_weight(self, backend, device):
        require(backend, device)
        x = torch.randn(9, 5, device=device).t()  # [5, 9], transposed
        w = torch.randn(18, 7, device=device)[:, ::2].t()  # [4, 9] non-contiguous view... of shape [4, 9]
        w = torch.randn(9, 8, device=device).t()[::2]  # [4, 9], stride (2, 8)
        assert not x.is_contiguous() and not w.is_contiguous()
        self.check(x, w, torch.randn(4, device=device), backend)

    def test_expanded_grad_output(self, backend, device):
        require(backend, device)
        grad = torch.ones(1, 1, device=device).expand(5, 4)  # what .sum() sends back: stride 0
        self.check(
            torch.randn(5, 6, device=device),
            torch.randn(4, 6, device=device),
            torch.randn(4, device=device),
            backend,
            grad=grad,
        )

    def test_transposed_grad_output(self, backend, device):
        require(backend, device)
        grad = torch.randn(4, 5, device=device).t()
        self.check(
            torch.randn(5, 6, device=device),
            torch.randn(4, 6, device=device),
            torch.randn(4, device=device),
            backend,
            grad=grad,
        )

    def test_only_some_grads_needed(self, backend, device):
        require(backend, device)
        x = torch.randn(5, 6, device=device)
        w = torch.randn(4, 6, device=device, requires_grad=True)
        b = torch.randn(4, device=device)  # frozen bias, input without grad
        linear_relu(x, w, b, backend=backend).sum().backward()
        ref_w = w.detach().clone().requires_grad_(True)
        reference(x, ref_w, b, True).sum().backward()
        torch.testing.assert_close(w.grad, ref_w.grad)

    def test_nan_and_inf_propagate_like_torch(self, backend, device):
        require(backend, device)
        x = torch.randn(5, 6, device=device)
        x[1, 2], x[3, 0] = float("nan"), float("inf")
        grad = torch.randn(5, 4, device=device)
        grad[0, 1] = float("nan")
        out, ref, grads, ref_grads = run_both(
            x, torch.randn(4, 6, device=device), torch.randn(4, device=device), True, backend, grad=grad
        )
        torch.testing.assert_close(out, ref, equal_nan=True)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, equal_nan=True)

    def test_inputs_not_mutated(self, backend, device):
        require(backend, device)
        x = torch.randn(5, 6, device=device, requires_grad=True)
        w = torch.randn(4, 6, device=device, requires_grad=True)
        b = torch.randn(4, device=device, requires_grad=True)
        before = [t.detach().clone() for t in (x, w, b)]
        out = linear_relu(x, w, b, backend=backend)
        grad = torch.randn_like(out)
        grad_before = grad.clone()
        out.backward(grad, retain_graph=True)
        first = [t.grad.clone() for t in (x, w, b)]
        out.backward(grad)  # backward twice: the saved tensors must be intact
        for t, t0, g1 in zip((x, w, b), before, first):
            torch.testing.assert_close(t.detach(), t0, rtol=0, atol=0)
            torch.testing.assert_close(t.grad, 2 * g1)
        torch.testing.assert_close(grad, grad_before, rtol=0, atol=0)

    def test_canary_views(self, backend, device):
        """Operands are views into NaN-filled buffers: reading past a view's edge poisons the result."""
        require(backend, device)
        nan = float("nan")
        xbuf = torch.full((11, 13), nan, device=device)
        wbuf = torch.full((9, 15), nan, device=device)
        xbuf[2:9, 3:10] = torch.randn(7, 7, device=device)
        wbuf[1:6, 4:11] = torch.randn(5, 7, device=device)
        x, w = xbuf[2:9, 3:10], wbuf[1:6, 4:11]
        out, ref, grads, ref_grads = run_both(x, w, None, True, backend)
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads if g is not None)
        torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
def test_gradcheck_fp64(backend, device, relu):
    require(backend, device)
    gen = torch.Generator().manual_seed(1)
    while True:  # keep every pre-activation away from the ReLU kink so finite differences are valid
        x = torch.randn(6, 5, generator=gen, dtype=torch.float64)
        w = torch.randn(4, 5, generator=gen, dtype=torch.float64)
        b = torch.randn(4, generator=gen, dtype=torch.float64)
        if (x @ w.t() + b).abs().min() > 0.05:
            break
    args = [t.to(device).requires_grad_(True) for t in (x, w, b)]
    assert torch.autograd.gradcheck(lambda x, w, b: LinearReLUFunction.apply(x, w, b, relu, backend), args)


def test_double_backward_raises_clearly():
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    out = linear_relu(x, w, backend="torch")
    (gx,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        gx.sum().backward()


def _registered_ops(backend):
    if backend == "triton":
        return torch.ops.fusedmlp.linear_relu_fwd_triton, torch.ops.fusedmlp.linear_relu_bwd_triton
    return torch.ops.fusedmlp.linear_relu_fwd, torch.ops.fusedmlp.linear_relu_bwd


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICE if p.values[0] in ("cpu", "cuda", "triton")])
@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
def test_opcheck(backend, device, layout):
    require(backend, device)
    fwd, bwd = _registered_ops(backend)
    x = torch.randn(5, 6, device=device)
    w = torch.randn(4, 6, device=device)
    g = torch.randn(5, 4, device=device)
    if layout == "permuted":
        x, w, g = x.t().contiguous().t(), w.t().contiguous().t(), g.t().contiguous().t()
    b = torch.randn(4, device=device)
    out = fwd(x, w, b, True)
    for requires_grad in (False, True):
        torch.library.opcheck(fwd, (x.requires_grad_(requires_grad), w, b, True))
        x = x.detach()
    torch.library.opcheck(fwd, (x, w, None, False))
    torch.library.opcheck(bwd, (g, x, w, out, True, [True, True, True]))
    torch.library.opcheck(bwd, (g, x, w, out, False, [False, True, False]))
    if backend != "triton":  # the differentiable op, with its C++ autograd (C++ kernels only)
        for relu, bias in ((True, b), (False, None)):
            grad_args = (x.detach().requires_grad_(), w.detach().requires_grad_(), bias, relu)
            torch.library.opcheck(torch.ops.fusedmlp.linear_relu, grad_args)
            torch.library.opcheck(torch.ops.fusedmlp.linear_relu, (x, w, bias, relu))


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_torch_compile_fullgraph(backend, device):
    require(backend, device)
    torch._dynamo.reset()
    layer = fusedmlp.FusedLinearReLU(6, 4, backend=backend, device=device)
    ref = copy.deepcopy(layer)

    def forward(module, x):
        return module(x)

    # fullgraph: no graph breaks in the forward; AOTAutograd traces the backward from it.
    x = torch.randn(5, 6, device=device)
    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    out = compiled(layer, x)
    out.sum().backward()
    ref_out = forward(ref, x)
    ref_out.sum().backward()
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)
    torch.testing.assert_close(layer.bias.grad, ref.bias.grad)


class TestModule:
    def test_same_init_as_nn_linear(self):
        torch.manual_seed(0)
        fused_layer = fusedmlp.FusedLinearReLU(7, 5)
        torch.manual_seed(0)
        plain = torch.nn.Linear(7, 5)
        torch.testing.assert_close(fused_layer.weight, plain.weight, rtol=0, atol=0)
        torch.testing.assert_close(fused_layer.bias, plain.bias, rtol=0, atol=0)

    def test_state_dict_interchange(self):
        fused_layer, plain = fusedmlp.FusedLinearReLU(7, 5), torch.nn.Linear(7, 5)
        fused_layer.load_state_dict(plain.state_dict(), strict=True)
        plain.load_state_dict(fused_layer.state_dict(), strict=True)
        x = torch.randn(3, 7)
        torch.testing.assert_close(fused_layer(x), F.relu(plain(x)))

    def test_dtype_device_and_repr(self):
        layer = fusedmlp.FusedLinear(3, 2, bias=False, backend="torch", dtype=torch.float64)
        assert layer.bias is None and layer.weight.dtype == torch.float64
        assert "backend='torch'" in repr(layer)
        assert layer.to(torch.float32)(torch.randn(4, 3)).dtype == torch.float32

    def test_unknown_backend_rejected_at_construction(self):
        with pytest.raises(ValueError, match="unknown backend"):
            fusedmlp.FusedLinearReLU(3, 2, backend="cudnn")


class TestBadInput:
    @pytest.mark.parametrize("backend", ["cpu", "torch"])
    def test_shape_mismatch(self, backend):
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            linear_relu(torch.randn(3, 5), torch.randn(2, 4), backend=backend)

    @pytest.mark.parametrize("backend", ["cpu", "torch"])
    def test_dtype_mismatch(self, backend):
        with pytest.raises(RuntimeError, match="dtype"):
            linear_relu(torch.randn(3, 4), torch.randn(2, 4, dtype=torch.float64), backend=backend)

    def test_bias_shape(self):
        with pytest.raises(RuntimeError, match="bias"):
            linear_relu(torch.randn(3, 4), torch.randn(2, 4), torch.randn(3), backend="cpu")

    def test_integer_input(self):
        with pytest.raises(RuntimeError, match="floating"):
            linear_relu(torch.ones(3, 4, dtype=torch.long), torch.ones(2, 4, dtype=torch.long), backend="cpu")

    def test_zero_dim_input(self):
        with pytest.raises(RuntimeError, match="at least 1 dimension"):
            linear_relu(torch.tensor(1.0), torch.randn(2, 1), backend="cpu")

    def test_unknown_backend(self):
        with pytest.raises(ValueError, match="unknown backend"):
            linear_relu(torch.randn(3, 4), torch.randn(2, 4), backend="cudnn")

    def test_cuda_backend_on_cpu_tensors_says_why(self):
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            linear_relu(torch.randn(3, 4), torch.randn(2, 4), backend="cuda")

    def test_triton_on_cpu_without_interpreter_says_how(self, monkeypatch):
        from fusedmlp import _backend

        monkeypatch.setattr(_backend, "TRITON_INTERPRET", False)
        if not _backend.HAS_TRITON:
            pytest.skip("Triton is not installed")
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            linear_relu(torch.randn(3, 4), torch.randn(2, 4), backend="triton")
