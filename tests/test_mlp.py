"""FusedMLP and the whole-network MLP ops against the tutorial's nn.Sequential network."""

from __future__ import annotations

import copy
import io
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from support import backend_device_params, close_to_reference, require

import fusedmlp
from fusedmlp import FusedMLP, MLPFunction
from fusedmlp.autograd.mlp import mlp as network_mlp
from fusedmlp.ops import mlp as mlp_ops

BACKEND_DEVICE = backend_device_params()
NETWORK_BACKEND_DEVICE = [
    p for p in BACKEND_DEVICE if p.values[0] in mlp_ops.NETWORK_BACKENDS + mlp_ops.FUSED_KERNEL_BACKENDS
]


class NeuralNetwork(torch.nn.Module):
    """The tutorial's network, verbatim."""

    def __init__(self, num_inputs, num_outputs):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(num_inputs, 30),
            torch.nn.ReLU(),
            torch.nn.Linear(30, 20),
            torch.nn.ReLU(),
            torch.nn.Linear(20, num_outputs),
        )

    def forward(self, x):
        return self.layers(x)


def sequential(widths, bias=True, **factory):
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i > 0:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(fan_in, fan_out, bias=bias, **factory))
    return torch.nn.Sequential(*layers)


def fused_and_reference(widths, backend, device, dtype, fuse_network=None, bias=True):
    model = FusedMLP(
        widths[0],
        widths[-1],
        widths[1:-1],
        bias=bias,
        backend=backend,
        fuse_network=fuse_network,
        device=device,
        dtype=dtype,
    )
    ref = sequential(widths, bias=bias, device=device, dtype=dtype)
    ref.load_state_dict(model.layers.state_dict(), strict=True)
    return model, ref


def forward_backward_both(model, ref, x, grad=None):
    x1 = x.detach().clone().requires_grad_(True)
    x2 = x.detach().clone().requires_grad_(True)
    out, ref_out = model(x1), ref(x2)
    g = torch.randn_like(ref_out) if grad is None else grad
    out.backward(g)
    ref_out.backward(g)
    return out, ref_out, x1.grad, x2.grad


def assert_grads_match(model, ref, **tol):
    fused_params = dict(model.layers.named_parameters())
    ref_params = dict(ref.named_parameters())
    assert fused_params.keys() == ref_params.keys()
    for name, p in fused_params.items():
        assert p.grad is not None, name
        torch.testing.assert_close(p.grad, ref_params[name].grad, msg=lambda m, n=name: f"{n}: {m}", **tol)


WIDTHS = [
    (50, 30, 20, 3),  # the tutorial's NeuralNetwork(50, 3)
    (2, 30, 20, 2),  # the tutorial's training example
    (7, 5),  # no hidden layer
    (5, 1, 13, 4),  # a width-1 hidden layer
    (33, 17, 65, 1),  # odd sizes, one output
    (3, 300, 520, 2),  # wider than one bias-gradient block (256 columns)
]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("fuse_network", [None, False], ids=["auto_path", "layers"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("widths", WIDTHS, ids=lambda w: "-".join(map(str, w)))
def test_matches_sequential(backend, device, fuse_network, dtype, widths):
    require(backend, device)
    if backend == "triton" and device == "cpu" and widths[0] > 10:
        pytest.skip("keeps the Triton interpreter's share of the suite small")
    torch.manual_seed(0)
    model, ref = fused_and_reference(widths, backend, device, dtype, fuse_network)
    x = torch.randn(6, widths[0], device=device, dtype=dtype)
    out, ref_out, gx, ref_gx = forward_backward_both(model, ref, x)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(gx, ref_gx)
    assert_grads_match(model, ref)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("hook", ["forward", "forward_pre", "full_backward", "global_forward"])
def test_hooks_on_the_sequential_run_as_in_the_tutorial_network(backend, device, hook):
    """A hook on a slot of model.layers (or a global module hook) runs with the arguments it
    gets in the tutorial's nn.Sequential: forward calls the slots while one is registered (path
    "modules:..."), and goes back to its own path once the hook is removed."""
    require(backend, device)
    torch.manual_seed(0)
    model, ref = fused_and_reference((6, 30, 20, 3), backend, device, torch.float32)
    seen = {id(model): [], id(ref): []}

    def record(owner):
        def hook(module, *args):
            seen[owner].append([a.detach().clone() for a in args if isinstance(a, torch.Tensor)] or args)

        return hook

    def register(network, owner):
        slot = network[2]  # the second Linear
        if hook == "forward":
            return slot.register_forward_hook(lambda m, i, o: record(owner)(m, *i, o))
        if hook == "forward_pre":
            return network[1].register_forward_pre_hook(lambda m, i: record(owner)(m, *i))
        if hook == "full_backward":
            return slot.register_full_backward_hook(lambda m, gi, go: record(owner)(m, *gi, *go))
        return torch.nn.modules.module.register_module_forward_hook(
            lambda m, i, o: record(owner)(m, o) if m is network[2] else None
        )

    before = model.path()
    handles = [register(model.layers, id(model)), register(ref, id(ref))]
    try:
        assert model.path() == f"modules:{before.split(':')[1]}"
        x = torch.randn(5, 6, device=device)
        out, ref_out, gx, ref_gx = forward_backward_both(model, ref, x)
    finally:
        for handle in handles:
            handle.remove()
    assert len(seen[id(model)]) == len(seen[id(ref)]) == 1
    for ours, theirs in zip(seen[id(model)], seen[id(ref)], strict=True):
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(gx, ref_gx)
    assert_grads_match(model, ref)
    assert model.path() == before


@pytest.mark.parametrize("backend,device", NETWORK_BACKEND_DEVICE)
class TestNetworkPath:
    def test_path_is_network(self, backend, device):
        require(backend, device)
        model = FusedMLP(4, 3, backend=backend, device=device)
        assert model.path() == f"network:{backend}"
        assert f"path='network:{backend}'" in repr(model)
        assert FusedMLP(4, 3, backend=backend, fuse_network=False, device=device).path() == f"layers:{backend}"

    @pytest.mark.parametrize("bias", [True, False])
    def test_bias_and_batch_shapes(self, backend, device, bias):
        require(backend, device)
        torch.manual_seed(0)
        model, ref = fused_and_reference((6, 5, 4, 3), backend, device, torch.float64, True, bias=bias)
        for shape in [(6,), (2, 3, 6), (0, 6), (1, 6)]:
            model.zero_grad()
            ref.zero_grad()
            x = torch.randn(*shape, device=device, dtype=torch.float64)
            out, ref_out, gx, ref_gx = forward_backward_both(model, ref, x)
            assert out.shape == ref_out.shape
            torch.testing.assert_close(out, ref_out)
            torch.testing.assert_close(gx, ref_gx)
            assert_grads_match(model, ref)

    def test_non_contiguous_input_and_grad(self, backend, device):
        require(backend, device)
        torch.manual_seed(0)
        model, ref = fused_and_reference((5, 8, 3), backend, device, torch.float32, True)
        x = torch.randn(5, 9, device=device).t()  # [9, 5], transposed
        grad = torch.randn(3, 9, device=device).t()
        out, ref_out, gx, ref_gx = forward_backward_both(model, ref, x, grad)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(gx, ref_gx)
        assert_grads_match(model, ref)

    def test_expanded_grad_from_sum(self, backend, device):
        require(backend, device)
        torch.manual_seed(0)
        model, ref = fused_and_reference((5, 8, 3), backend, device, torch.float32, True)
        x = torch.randn(4, 5, device=device)
        model(x).sum().backward()
        ref(x).sum().backward()
        assert_grads_match(model, ref)

    def test_frozen_layers_get_no_grad(self, backend, device):
        require(backend, device)
        torch.manual_seed(0)
        model, ref = fused_and_reference((5, 6, 7, 3), backend, device, torch.float64, True)
        for m in (model.layers, ref):
            m[0].requires_grad_(False)  # frozen first layer, no input grad: backward stops early
            m[2].bias.requires_grad_(False)
        x = torch.randn(4, 5, device=device, dtype=torch.float64)
        grad = torch.randn(4, 3, device=device, dtype=torch.float64)
        model(x).backward(grad)
        ref(x).backward(grad)
        for p, r in zip(model.layers.parameters(), ref.parameters()):
            assert (p.grad is None) == (r.grad is None)
            if r.grad is not None:
                torch.testing.assert_close(p.grad, r.grad)

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
    def test_low_precision(self, backend, device, dtype):
        require(backend, device)
        if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
            pytest.skip("the Triton interpreter cannot run bf16 dots; bf16 is covered on GPU and by the AOT compile")
        torch.manual_seed(0)
        model32, ref32 = fused_and_reference((37, 45, 29, 5), "torch", device, torch.float32, True)
        x = torch.randn(33, 37, device=device)
        g = torch.randn(33, 5, device=device)
        out32, _, gx32, _ = forward_backward_both(model32, ref32, x, g)
        model = copy.deepcopy(model32).to(dtype)
        model.backend = backend
        ref = copy.deepcopy(ref32).to(dtype)
        model.zero_grad()
        ref.zero_grad()
        out, torch_out, gx, torch_gx = forward_backward_both(model, ref, x.to(dtype), g.to(dtype))
        assert out.dtype == dtype and model.path() == f"network:{backend}"
        close_to_reference(out, out32, torch_out)
        close_to_reference(gx, gx32, torch_gx, floor=1e-2)
        for p, t, r in zip(model.layers.parameters(), ref.parameters(), model32.layers.parameters()):
            close_to_reference(p.grad, r.grad, t.grad, floor=1e-2)

    def test_inputs_not_mutated_and_backward_twice(self, backend, device):
        require(backend, device)
        torch.manual_seed(0)
        model = FusedMLP(5, 3, (6, 4), backend=backend, device=device, dtype=torch.float64)
        x = torch.randn(4, 5, device=device, dtype=torch.float64, requires_grad=True)
        before = [t.detach().clone() for t in (x, *model.parameters())]
        out = model(x)
        grad = torch.randn_like(out)
        grad_before = grad.clone()
        out.backward(grad, retain_graph=True)
        first = [t.grad.clone() for t in (x, *model.parameters())]
        out.backward(grad)
        for t, t0, g1 in zip((x, *model.parameters()), before, first):
            torch.testing.assert_close(t.detach(), t0, rtol=0, atol=0)
            torch.testing.assert_close(t.grad, 2 * g1)
        torch.testing.assert_close(grad, grad_before, rtol=0, atol=0)


def _away_from_kinks(widths, generator):
    """fp64 input and parameters whose every hidden pre-activation is at least 0.05 from 0, so
    finite differences never straddle a ReLU kink."""
    while True:
        x = torch.randn(4, widths[0], generator=generator, dtype=torch.float64)
        params, h, ok = [], x, True
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            w = torch.randn(fan_out, fan_in, generator=generator, dtype=torch.float64)
            b = torch.randn(fan_out, generator=generator, dtype=torch.float64)
            pre = h @ w.t() + b
            if i + 2 < len(widths):
                ok = ok and bool(pre.abs().min() > 0.05)
                h = pre.relu()
            params += [w, b]
        if ok:
            return x, params


def _network_entry(entry: str, backend: str):
    """(x, w0, b0, w1, b1, ...) -> output through one of the two differentiable entry points:
    fusedmlp.autograd.mlp.mlp (the C++ autograd op on C++ backends) or MLPFunction."""
    if entry == "MLPFunction":
        return lambda x, *p: MLPFunction.apply(x, backend, *p)
    return lambda x, *p: network_mlp(x, list(p[0::2]), list(p[1::2]), backend)


ENTRIES = ["mlp", "MLPFunction"]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("backend,device", NETWORK_BACKEND_DEVICE)
@pytest.mark.parametrize("widths", [(3, 4, 5, 2), (3, 2)], ids=["two_hidden", "single_layer"])
def test_gradcheck_fp64(backend, device, widths, entry):
    require(backend, device)
    x, params = _away_from_kinks(widths, torch.Generator().manual_seed(3))
    args = [t.to(device).requires_grad_(True) for t in (x, *params)]
    assert torch.autograd.gradcheck(_network_entry(entry, backend), args)


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("backend,device", NETWORK_BACKEND_DEVICE)
def test_gradcheck_fp64_without_some_biases_and_grads(backend, device, entry):
    require(backend, device)
    x, (w0, b0, w1, b1, w2, b2) = _away_from_kinks((3, 4, 5, 2), torch.Generator().manual_seed(4))
    # The input, the first weight and the second bias are constants: their gradients are not
    # asked for, which the backward op must handle.
    x, w0, b1 = x.to(device), w0.to(device), b1.to(device)
    wanted = [t.to(device).requires_grad_(True) for t in (b0, w1, w2, b2)]
    network = _network_entry(entry, backend)

    def f(b0, w1, w2, b2):
        return network(x, w0, b0, w1, b1, w2, b2)

    assert torch.autograd.gradcheck(f, wanted)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_double_backward_raises_clearly(backend):
    require(backend, "cpu")
    model = FusedMLP(3, 2, (4,), backend=backend, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(model(x).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice|does not require grad"):
        gx.sum().backward()


def test_cpp_autograd_op_without_grad_and_in_inference_mode():
    require("cpu", "cpu")
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    weights, biases = [torch.randn(5, 3), torch.randn(2, 5)], [torch.randn(5), torch.randn(2)]
    expected = mlp_ops.mlp_fwd_torch(x, weights, biases)[0]
    out = torch.ops.fusedmlp.mlp(x, weights, biases)
    assert out.grad_fn is None
    torch.testing.assert_close(out, expected)
    with torch.inference_mode():
        torch.testing.assert_close(torch.ops.fusedmlp.mlp(x, weights, biases), expected)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("layout", ["contiguous", "permuted"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_opcheck(layout, bias, backend):
    require(backend, "cpu")
    torch.manual_seed(0)
    x = torch.randn(5, 6)
    weights = [torch.randn(7, 6), torch.randn(4, 7), torch.randn(3, 4)]
    biases = [torch.randn(7), torch.randn(4), torch.randn(3)]
    g = torch.randn(5, 3)
    if layout == "permuted":
        x, g = x.t().contiguous().t(), g.t().contiguous().t()
        weights = [w.t().contiguous().t() for w in weights]
    if not bias:
        biases = []
    suffix = "_triton" if backend == "triton" else ""
    fwd, bwd = getattr(torch.ops.fusedmlp, f"mlp_fwd{suffix}"), getattr(torch.ops.fusedmlp, f"mlp_bwd{suffix}")
    out, activations = fwd(x, weights, biases)
    # Inputs without grad only: mlp_fwd is differentiated through MLPFunction, not at the
    # operator level (see fusedmlp/autograd/mlp.py); gradcheck covers MLPFunction.
    torch.library.opcheck(fwd, (x, weights, biases))
    if backend == "cpu":  # the differentiable op, with its C++ autograd, with and without grad
        grad_args = (x.detach().requires_grad_(), [w.detach().requires_grad_() for w in weights], biases)
        torch.library.opcheck(torch.ops.fusedmlp.mlp, grad_args)
        torch.library.opcheck(torch.ops.fusedmlp.mlp, (x, weights, biases))
    bias_flags = [True, False, True] if bias else []
    torch.library.opcheck(bwd, (g, x, weights, activations, True, [True, True, True], bias_flags))
    torch.library.opcheck(bwd, (g, x, weights, activations, False, [False, True, False], bias_flags[::-1]))


@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize(
    "masks",
    [
        ((True, True, True), (True, True, True)),
        ((False, True, False), (True, False, False)),
        ((False, False, False), (False, False, True)),
    ],
)
def test_mlp_bwd_matches_reference(input_grad, masks):
    require("cpu", "cpu")
    torch.manual_seed(0)
    x = torch.randn(5, 6, dtype=torch.float64)
    weights = [
        torch.randn(7, 6, dtype=torch.float64),
        torch.randn(4, 7, dtype=torch.float64),
        torch.randn(3, 4, dtype=torch.float64),
    ]
    biases = [
        torch.randn(7, dtype=torch.float64),
        torch.randn(4, dtype=torch.float64),
        torch.randn(3, dtype=torch.float64),
    ]
    out, activations = torch.ops.fusedmlp.mlp_fwd(x, weights, biases)
    ref_out, ref_activations = mlp_ops.mlp_fwd_torch(x, weights, biases)
    torch.testing.assert_close(out, ref_out)
    for a, r in zip(activations, ref_activations):
        torch.testing.assert_close(a, r)
    g = torch.randn(5, 3, dtype=torch.float64)
    args = (g, x, weights, activations, input_grad, list(masks[0]), list(masks[1]))
    got = torch.ops.fusedmlp.mlp_bwd(*args)
    expected = mlp_ops.mlp_bwd_torch(*args)
    torch.testing.assert_close(got[0], expected[0])
    assert got[0].numel() == (x.numel() if input_grad else 0)
    for got_list, expected_list, mask in zip(got[1:], expected[1:], masks):
        for a, e, wanted in zip(got_list, expected_list, mask):
            assert (a.numel() > 0) == wanted
            torch.testing.assert_close(a, e)


class TestTutorialCompatibility:
    def test_same_seed_same_parameters_and_output_as_tutorial(self):
        torch.manual_seed(123)
        tutorial = NeuralNetwork(50, 3)
        torch.manual_seed(123)
        model = FusedMLP(50, 3)
        assert (
            list(model.state_dict())
            == list(tutorial.state_dict())
            == [f"layers.{i}.{kind}" for i in (0, 2, 4) for kind in ("weight", "bias")]
        )
        for (name, p), r in zip(model.named_parameters(), tutorial.parameters()):
            torch.testing.assert_close(p, r, rtol=0, atol=0, msg=name)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2213
        assert isinstance(model.layers[0], torch.nn.Linear)
        X = torch.rand((1, 50))
        out = model(X)
        torch.testing.assert_close(out, tutorial(X))
        torch.testing.assert_close(model.layers(X), out)  # the Sequential itself still computes the network

    def test_state_dict_strict_both_ways(self):
        tutorial, model = NeuralNetwork(50, 3), FusedMLP(50, 3)
        model.load_state_dict(tutorial.state_dict(), strict=True)
        x = torch.randn(4, 50)
        torch.testing.assert_close(model(x), tutorial(x))
        other = NeuralNetwork(50, 3)
        other.load_state_dict(FusedMLP(50, 3).state_dict(), strict=True)

    def test_weights_only_save_load(self):
        model = FusedMLP(2, 2)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        loaded = FusedMLP(2, 2)
        loaded.load_state_dict(torch.load(buffer, weights_only=True))
        for p, q in zip(model.parameters(), loaded.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
        buffer.seek(0)
        tutorial = NeuralNetwork(2, 2)
        tutorial.load_state_dict(torch.load(buffer, weights_only=True))

    def test_deepcopy_is_independent(self):
        model = FusedMLP(4, 2, backend="cpu")
        clone = copy.deepcopy(model)
        with torch.no_grad():
            clone.layers[0].weight.add_(1)
        assert not torch.equal(clone.layers[0].weight, model.layers[0].weight)
        assert clone.backend == "cpu" and clone.path() == model.path()

    def test_to_dtype(self):
        model = FusedMLP(4, 2).to(torch.float64)
        assert all(p.dtype == torch.float64 for p in model.parameters())
        assert model(torch.randn(3, 4, dtype=torch.float64)).dtype == torch.float64


class TestModuleOptions:
    def test_backend_setter_reaches_layers(self):
        model = FusedMLP(4, 2, (3,))
        model.backend = "torch"
        assert all(m.backend == "torch" for m in model.layers[0::2])
        assert model.path() == "network:torch"
        with pytest.raises(ValueError, match="unknown backend"):
            model.backend = "cudnn"

    def test_fused_kernel_path_follows_coverage(self):
        # The fused GPU kernels (cuda, triton) cover widths <= 128 and <= 8 layers: wider or
        # deeper networks run layer by layer, and fuse_network=True says why it cannot.
        if fusedmlp._backend._unavailable_reason("triton", "cpu") is not None:
            pytest.skip("needs the Triton interpreter")
        assert FusedMLP(4, 2, (30, 20), backend="triton").path() == "network:triton"
        assert FusedMLP(4, 2, (129,), backend="triton").path() == "layers:triton"
        assert FusedMLP(4, 2, (3,) * 8, backend="triton").path() == "layers:triton"
        assert FusedMLP(4, 2, (30,), backend="triton", fuse_network=False).path() == "layers:triton"
        model = FusedMLP(4, 2, (200,), backend="triton", fuse_network=True)
        with pytest.raises(RuntimeError, match="fuse_network=True .*widths up to 128"):
            model(torch.randn(2, 4))
        assert "unavailable" in repr(model)
        for backend in ("cuda", "triton"):
            assert mlp_ops.fused_kernel_uncovered_reason(backend, (2, 30, 20, 2), torch.float32) is None
            assert "at most 8 layers" in mlp_ops.fused_kernel_uncovered_reason(backend, (2,) * 10, torch.float32)

    def test_unknown_backend(self):
        with pytest.raises(ValueError, match="unknown backend"):
            FusedMLP(4, 2, backend="cudnn")

    def test_cuda_backend_on_cpu_says_why(self):
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            FusedMLP(4, 2, backend="cuda")(torch.randn(3, 4))


class TestBadInput:
    @pytest.mark.parametrize(
        "kwargs",
        [
            dict(num_inputs=0, num_outputs=2),
            dict(num_inputs=3, num_outputs=-1),
            dict(num_inputs=3, num_outputs=2, hidden_sizes=(4, 0)),
            dict(num_inputs=3, num_outputs=2, hidden_sizes=(-3,)),
            dict(num_inputs=3, num_outputs=2, hidden_sizes=5),
            dict(num_inputs=3, num_outputs=2, hidden_sizes=(2.5,)),
            dict(num_inputs=3.0, num_outputs=2),
            dict(num_inputs=3, num_outputs=2, fuse_network="yes"),
        ],
    )
    def test_construction(self, kwargs):
        with pytest.raises(ValueError, match="FusedMLP"):
            FusedMLP(**kwargs)

    @pytest.mark.parametrize("fuse_network", [None, False])
    def test_wrong_width(self, fuse_network):
        with pytest.raises(RuntimeError, match="last dimension 4"):
            FusedMLP(4, 2, fuse_network=fuse_network)(torch.randn(3, 5))
        with pytest.raises(RuntimeError, match="last dimension 4"):
            FusedMLP(4, 2, fuse_network=fuse_network)(torch.tensor(1.0))

    def test_wrong_dtype(self):
        with pytest.raises(RuntimeError, match="dtype torch.float32"):
            FusedMLP(4, 2)(torch.randn(3, 4, dtype=torch.float64))
        with pytest.raises(RuntimeError, match="dtype torch.float32"):
            FusedMLP(4, 2)(torch.ones(3, 4, dtype=torch.long))

    def test_wrong_device(self):
        with pytest.raises(RuntimeError, match="device"):
            FusedMLP(4, 2)(torch.randn(3, 4, device="meta"))

    @pytest.mark.parametrize("backend", ["cpu", "torch"])
    def test_op_level_checks(self, backend):
        x = torch.randn(3, 4)
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            mlp_ops.mlp_fwd(x, [torch.randn(5, 4), torch.randn(2, 6)], [], backend)
        with pytest.raises(RuntimeError, match="dtype"):
            mlp_ops.mlp_fwd(x, [torch.randn(5, 4, dtype=torch.float64)], [], backend)
        if backend == "cpu":
            with pytest.raises(RuntimeError, match="bias"):
                mlp_ops.mlp_fwd(x, [torch.randn(5, 4)], [torch.randn(4)], backend)
            with pytest.raises(RuntimeError, match="one bias per weight or none"):
                mlp_ops.mlp_fwd(x, [torch.randn(5, 4), torch.randn(2, 5)], [torch.randn(5)], backend)
            with pytest.raises(RuntimeError, match="at least one layer"):
                mlp_ops.mlp_fwd(x, [], [], backend)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_torch_compile_fullgraph_training_step(backend, device):
    require(backend, device)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = FusedMLP(5, 3, (6, 4), backend=backend, device=device)
    ref = copy.deepcopy(model)

    def loss_fn(module, x, y):
        return F.cross_entropy(module(x), y)

    x = torch.randn(8, 5, device=device)
    y = torch.randint(0, 3, (8,), device=device)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager" if device == "cpu" else "inductor")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        losses = []
        for m, o, fn in ((model, opt, compiled), (ref, ref_opt, loss_fn)):
            o.zero_grad()
            loss = fn(m, x, y)
            loss.backward()
            o.step()
            losses.append(loss.detach())
        torch.testing.assert_close(*losses)
    for p, r in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, r)


_TRAIN_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.nn.functional as F, fusedmlp
    torch.manual_seed(123)
    model = fusedmlp.FusedMLP(2, 2, backend=sys.argv[1])
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, y = torch.randn(16, 2), torch.randint(0, 2, (16,))
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    sys.stdout.write(",".join(repr(v) for p in model.parameters() for v in p.detach().double().flatten().tolist()))
""")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_same_seed_bit_equal_in_fresh_processes(backend):
    runs = [
        subprocess.run(
            [sys.executable, "-c", _TRAIN_SCRIPT, backend], capture_output=True, text=True, timeout=120, check=True
        ).stdout
        for _ in range(2)
    ]
    assert runs[0] and runs[0] == runs[1]


def test_mlp_function_rejects_mixed_biases():
    x, w, b = torch.randn(3, 4), torch.randn(5, 4), torch.randn(5)
    with pytest.raises(ValueError, match="every bias a tensor or every bias None"):
        MLPFunction.apply(x, "cpu", w, b, torch.randn(2, 5), None)


@pytest.mark.parametrize("fuse_network", [None, False], ids=["auto_path", "layers"])
def test_wide_layers_on_one_thread(fuse_network):
    """One thread gets every column of the bias-gradient reduction: more than one block of them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model, ref = fused_and_reference((4, 600, 700, 2), "cpu", "cpu", torch.float64, fuse_network)
        out, ref_out, gx, ref_gx = forward_backward_both(model, ref, torch.randn(5, 4, dtype=torch.float64))
        torch.testing.assert_close(out, ref_out)
        assert_grads_match(model, ref)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch", [7, 242, 243], ids=lambda b: f"batch{b}")
def test_cpu_op_on_both_sides_of_the_small_gemm_limit(dtype, batch):
    """The CPU op runs narrow networks through its register-blocked GEMM up to 2^19 FMAs per
    pass (242 rows of 50-30-20-3) and through the BLAS above (243 rows); 7 rows leave a partial
    row block and 30/20/3 columns partial vector panels. Both paths match nn.Sequential, and the
    results do not depend on the number of threads."""
    torch.manual_seed(0)
    model, ref = fused_and_reference((50, 30, 20, 3), "cpu", "cpu", dtype)
    x, grad = torch.randn(batch, 50, dtype=dtype), torch.randn(batch, 3, dtype=dtype)
    out, ref_out, gx, ref_gx = forward_backward_both(model, ref, x, grad)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(gx, ref_gx)
    assert_grads_match(model, ref)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            model.zero_grad()
            out, _, gx, _ = forward_backward_both(model, ref, x, grad)
            results.append([out, gx, *(p.grad for p in model.parameters())])
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(*results):
        assert torch.equal(one, two)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_torch_func_transforms_raise(backend, device):
    """torch.func.grad over FusedMLP is not supported: it raises (the C++ autograd node, or the
    Python Function without a setup_context), never returns a gradient computed some other way."""
    require(backend, device)
    model = FusedMLP(4, 3, backend=backend, device=device)
    x = torch.randn(5, 4, device=device)
    params = dict(model.named_parameters())

    def loss(params):
        return torch.func.functional_call(model, params, (x,)).sum()

    with pytest.raises(RuntimeError, match="functorch|torch.func|setup_context"):
        torch.func.grad(loss)(params)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_pruning_works_as_on_the_tutorial_network(backend, device):
    """torch.nn.utils.prune recomputes a pruned weight in a forward pre-hook on its Linear slot:
    FusedMLP runs it (path "modules:..."), matches the pruned Sequential, sends the gradient to
    weight_orig, and returns to its own path once the pruning is made permanent."""
    require(backend, device)
    torch.manual_seed(0)
    model, ref = fused_and_reference((6, 30, 20, 3), backend, device, torch.float32)
    for network in (model.layers, ref):
        prune.l1_unstructured(network[2], "weight", amount=0.5)
    assert model.path().startswith("modules:")
    out, ref_out, gx, ref_gx = forward_backward_both(model, ref, torch.randn(5, 6, device=device))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(gx, ref_gx)
    assert_grads_match(model, ref)
    assert list(model.layers.state_dict()) == list(ref.state_dict())
    prune.remove(model.layers[2], "weight")
    assert not model.path().startswith("modules:")
    assert (model.layers[2].weight == 0).sum() == 300
