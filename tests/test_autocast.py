"""fusedmlp under torch.autocast, on every backend that runs here.

torch.autocast runs ``linear`` in its lower-precision dtype and ``cross_entropy`` in float32
(fusedmlp/_autocast.py). A model swapped to fusedmlp must do the same: the same output, loss and
gradient dtypes as torch's layers in the same region, values within the flash-attention rule
(our error against a float64 run at most twice torch's own autocast error, plus a floor), and
no dtype errors where torch has none (a bfloat16 activation from an nn.Linear entering a fused
layer with float32 weights; the CPU kernels' own GEMMs under autocast).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from support import TRITON_INTERPRET, backend_device_params, close_to_reference, require
from torch import nn

import fusedmlp
from fusedmlp import FusedLinear, FusedLinearReLU, FusedMLP

BACKEND_DEVICE = backend_device_params()
WIDTHS = (6, 30, 20, 3)
MODELS = ["FusedMLP", "FusedMLP layer by layer", "convert", "mixed with nn.Linear"]


def autocast_dtypes():
    return [torch.bfloat16, torch.float16]


def skip_interpreter_bf16(backend: str, dtype: torch.dtype) -> None:
    if backend == "triton" and dtype == torch.bfloat16 and TRITON_INTERPRET:
        pytest.skip("Triton interpreter computes bf16 dot/compare on raw bits")


def tutorial_network(device) -> nn.Sequential:
    torch.manual_seed(0)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        layers += [nn.ReLU()] if i else []
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers).to(device)


def swapped(kind: str, reference: nn.Sequential, backend: str) -> nn.Module:
    device = reference[0].weight.device
    if kind == "convert":
        return fusedmlp.convert(reference, backend=backend)
    if kind.startswith("FusedMLP"):
        fuse = False if kind == "FusedMLP layer by layer" else None
        model = FusedMLP(WIDTHS[0], WIDTHS[-1], WIDTHS[1:-1], backend=backend, fuse_network=fuse, device=device)
    else:  # torch's first layer feeds the fused ones a lower-precision activation
        model = nn.Sequential(
            nn.Linear(WIDTHS[0], WIDTHS[1]),
            nn.ReLU(),
            FusedLinearReLU(WIDTHS[1], WIDTHS[2], backend=backend),
            FusedLinear(WIDTHS[2], WIDTHS[3], backend=backend),
        ).to(device)
    with torch.no_grad():
        for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
            ours.copy_(theirs)
    return model


def training_step(model, loss_fn, x, target, dtype):
    model.zero_grad(set_to_none=True)
    if dtype is None:
        out = model(x)
        loss = loss_fn(out, target)
    else:
        with torch.autocast(x.device.type, dtype=dtype):
            out = model(x)
            loss = loss_fn(out, target)
    loss.backward()
    return [out, loss, *(p.grad for p in model.parameters())]


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("dtype", autocast_dtypes(), ids=str)
@pytest.mark.parametrize("kind", MODELS)
def test_training_step_under_autocast_matches_torch(backend, device, dtype, kind):
    require(backend, device)
    skip_interpreter_bf16(backend, dtype)
    if kind == "convert" and not hasattr(fusedmlp, "convert"):
        pytest.skip("fusedmlp.convert is not available")
    reference = tutorial_network(device)
    model = swapped(kind, reference, backend)
    x = torch.randn(33, WIDTHS[0], device=device)
    target = torch.randint(0, WIDTHS[-1], (33,), device=device)

    def fused_loss(out, t):
        return fusedmlp.functional.cross_entropy(out, t, backend=backend)

    ours = training_step(model, fused_loss, x, target, dtype)
    theirs = training_step(reference, F.cross_entropy, x, target, dtype)
    exact = training_step(copy.deepcopy(reference).double(), F.cross_entropy, x.double(), target, None)
    assert ours[0].dtype == dtype and ours[1].dtype == torch.float32  # Linear low, cross-entropy float32
    names = ["output", "loss"] + [f"grad {name}" for name, _ in reference.named_parameters()]
    for name, actual, torch_autocast, fp64 in zip(names, ours, theirs, exact, strict=True):
        assert actual.dtype == torch_autocast.dtype, name
        close_to_reference(actual, fp64, torch_autocast, floor=1e-2)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("probabilities", [False, True], ids=["indices", "probabilities"])
def test_cross_entropy_under_autocast_runs_in_float32(backend, device, probabilities):
    """Lower-precision logits, class weights and probability targets are cast to float32 as
    torch.autocast casts them for F.cross_entropy: a float32 loss, a gradient in the logits'
    dtype. Values against float64: on CUDA torch's own result is less exact, since with
    label smoothing or probability targets ATen calls log_softmax with dtype=input.dtype, which
    autocast leaves in float16 (seen on the H200: 1e-4 relative); on CPU torch casts first."""
    require(backend, device)
    dtype = torch.float16
    torch.manual_seed(1)
    logits = (4 * torch.randn(17, 9, device=device)).to(dtype).requires_grad_()
    target = torch.softmax(torch.randn(17, 9, device=device), 1).to(dtype) if probabilities else None
    if target is None:
        target = torch.randint(0, 9, (17,), device=device)
    weight = torch.rand(9, device=device).to(dtype)
    results = []
    for fn in (
        lambda *a, **k: fusedmlp.functional.cross_entropy(*a, **k, backend=backend),
        F.cross_entropy,
    ):
        with torch.autocast(device, dtype=dtype):
            loss = fn(logits, target, weight, label_smoothing=0.1)
        (grad,) = torch.autograd.grad(loss, logits)
        results.append((loss, grad))
    (loss, grad), (torch_loss, torch_grad) = results
    assert loss.dtype == torch_loss.dtype == torch.float32
    assert grad.dtype == torch_grad.dtype == dtype
    as64 = [logits.detach().double().requires_grad_(), target.double() if probabilities else target, weight.double()]
    loss64 = F.cross_entropy(*as64, label_smoothing=0.1)
    (grad64,) = torch.autograd.grad(loss64, as64[0])
    close_to_reference(loss, loss64, torch_loss, floor=1e-6)
    close_to_reference(grad, grad64, torch_grad, floor=1e-4)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_float64_is_left_alone_under_autocast(backend, device):
    """autocast does not cast float64: a float64 model computes in float64 inside the region,
    with the same result as outside it."""
    require(backend, device)
    model = FusedMLP(*WIDTHS[::3], WIDTHS[1:3], backend=backend, device=device, dtype=torch.float64)
    x = torch.randn(5, WIDTHS[0], device=device, dtype=torch.float64)
    with torch.autocast(device, dtype=torch.bfloat16):
        inside = model(x)
    assert inside.dtype == torch.float64
    assert torch.equal(inside, model(x))


def test_autocast_on_another_device_type_changes_nothing_here():
    """An autocast region for CUDA does not touch CPU tensors (torch.autocast is per device
    type); checked where CUDA autocast can be entered, i.e. with a GPU present."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device to enter a CUDA autocast region")
    model = FusedMLP(WIDTHS[0], WIDTHS[-1], WIDTHS[1:-1])
    x = torch.randn(5, WIDTHS[0])
    with torch.autocast("cuda", dtype=torch.float16):
        inside = model(x)
    assert inside.dtype == torch.float32
    assert torch.equal(inside, model(x))


def test_torch_compile_fullgraph_under_autocast():
    """The casts and the autocast-off region trace into one graph, with eager's result."""
    require("cpu", "cpu")
    model = FusedMLP(WIDTHS[0], WIDTHS[-1], WIDTHS[1:-1], backend="cpu")
    x = torch.randn(8, WIDTHS[0])
    target = torch.randint(0, WIDTHS[-1], (8,))

    def loss(x, target):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fusedmlp.functional.cross_entropy(model(x), target, backend="cpu")

    compiled = torch.compile(loss, fullgraph=True)(x, target)
    eager = loss(x, target)
    assert compiled.dtype == eager.dtype == torch.float32
    torch.testing.assert_close(compiled, eager)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_mixed_precision_training_loop_matches_torch(backend, device):
    """The usual mixed-precision loop, autocast + GradScaler + SGD, three steps: FusedMLP,
    fused cross-entropy and FusedSGD end where torch's Sequential, F.cross_entropy and
    torch.optim.SGD end (fp16 autocast, float32 parameters)."""
    require(backend, device)
    reference = tutorial_network(device)
    model = swapped("FusedMLP", reference, backend)
    optimizers = [
        fusedmlp.FusedSGD(model.parameters(), lr=0.1, momentum=0.9, backend=backend),
        torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9),
    ]
    scalers = [torch.amp.GradScaler(device, init_scale=2.0**10) for _ in optimizers]
    losses = [fusedmlp.functional.cross_entropy, F.cross_entropy]
    torch.manual_seed(3)
    for _ in range(3):
        x = torch.randn(16, WIDTHS[0], device=device)
        target = torch.randint(0, WIDTHS[-1], (16,), device=device)
        for network, optimizer, scaler, loss_fn in zip((model, reference), optimizers, scalers, losses):
            optimizer.zero_grad()
            with torch.autocast(device, dtype=torch.float16):
                loss = loss_fn(network(x), target)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
    assert scalers[0].get_scale() == scalers[1].get_scale()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=2e-3, atol=2e-3)
