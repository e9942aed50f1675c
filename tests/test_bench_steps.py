"""The benchmark's training-step providers (fusedmlp/bench/mlp.py) train what they claim to.

Not timings (those live in bench/): these check the closures the benchmark times, so that a
speedup is never a number for wrong work.
"""

import gc

import pytest
import torch
from support import require

from fusedmlp.bench import mlp as bench_mlp

WIDTHS, BATCH = (50, 30, 20, 3), 32


def _trained_parameters(provider, device, steps=3):
    step, model = bench_mlp.make_step(provider, WIDTHS, BATCH, device)
    for _ in range(steps):
        step()
    return [p.detach().clone() for p in model.parameters()]


def _providers_but_compile(device):
    """The benchmark's providers, eager first (the reference of _check_agreement)."""
    names = [name for name in bench_mlp.providers(torch.device(device)) if name != "torch.compile"]
    assert names[0] == "eager"
    return names


def test_cpu_providers_take_the_same_steps():
    bench_mlp._check_agreement(WIDTHS, BATCH, _providers_but_compile("cpu"), "cpu", steps=3)


@pytest.mark.gpu
def test_cuda_graph_provider_keeps_its_batch_and_optimizer_alive():
    """The captured graph reads the batch and the momentum buffers at fixed addresses: once
    make_step has returned, freeing and reusing that memory must not change what replays train."""
    expected = _trained_parameters("eager", "cuda")
    step, model = bench_mlp.make_step(bench_mlp.EAGER_GRAPH, WIDTHS, BATCH, "cuda")
    gc.collect()
    # Allocations the size of the batch and of every parameter, filled with out-of-range
    # values: they land in any block the step's owners gave back.
    litter = [torch.full((BATCH, WIDTHS[0]), 1e6, device="cuda") for _ in range(4)]
    litter += [torch.full((BATCH,), 10**6, dtype=torch.int64, device="cuda") for _ in range(4)]
    litter += [torch.full_like(p, 1e6) for p in model.parameters() for _ in range(2)]
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    for ours, ref in zip(model.parameters(), expected):
        torch.testing.assert_close(ours.detach(), ref, rtol=1e-4, atol=1e-5)
    del litter


@pytest.mark.gpu
def test_cuda_providers_take_the_same_steps():
    """Every GPU provider (CUDA graph captures included) trains like eager."""
    names = _providers_but_compile("cuda")
    assert bench_mlp.EAGER_GRAPH in names and bench_mlp.FUSED_GRAPH in names
    bench_mlp._check_agreement(WIDTHS, BATCH, names, "cuda", steps=3)


# The fused step's work, op by op, per backend (fake tensors take the device path).
STEP_CENSUS = {
    # One op per kernel, no ATen glue around them.
    "cpu": [
        "fusedmlp.mlp_fwd.default",
        "fusedmlp.cross_entropy_mean_denominator.default",
        "fusedmlp.cross_entropy_fwd.default",
        "fusedmlp.cross_entropy_reduce.default",
        "aten.ones_like.default",  # loss.backward()'s gradient
        "aten.mul.Tensor",  # the loss backward's scale (scale_grad_unless_one_ on real tensors)
        "fusedmlp.mlp_bwd.default",
        "fusedmlp.fused_sgd_.default",
    ],
    # The Triton kernels, with the cross-entropy's "mean" denominator and reduction in ATen.
    "triton": [
        "fusedmlp.mlp_fwd_triton.default",
        "aten.ne.Scalar",
        "aten.sum.default",
        "aten._to_copy.default",
        "aten.reciprocal.default",
        "fusedmlp.cross_entropy_fwd_triton.default",
        "aten.sum.default",
        "aten.div.Tensor",
        "aten.ones_like.default",
        "fusedmlp.scale_grad_unless_one_triton.default",
        "fusedmlp.mlp_bwd_triton.default",
        "fusedmlp.fused_sgd_triton_.default",
    ],
}


@pytest.mark.parametrize("backend", list(STEP_CENSUS))
def test_fused_step_census(backend):
    """A change that adds launches to the fused training step fails here."""
    from fusedmlp.bench.step_census import step_ops

    require(backend, "cpu")
    assert [name for name, _ in step_ops("fusedmlp", WIDTHS, 1 << 14, backend)] == STEP_CENSUS[backend]
    eager = step_ops("eager", WIDTHS, 1 << 14)
    assert len(eager) >= 20, [name for name, _ in eager]


@pytest.mark.gpu
def test_cuda_graph_sgd_providers_take_the_same_steps():
    """The SGD suite's CUDA-graph providers (torch's fused step, FusedSGD's CUDA step, each
    captured once and replayed) update as the uncaptured for-loop optimizer does."""
    require("cuda", "cuda")
    from fusedmlp.bench import sgd as bench_sgd

    device = torch.device("cuda")
    shapes = bench_sgd.CASES["tutorial_2213"]
    providers = bench_sgd._providers(device)
    expected = bench_sgd._make(shapes, device)
    reference = providers["torch.optim.SGD:for-loop"](expected)
    for _ in range(3):
        reference.step()
    for name in bench_sgd.GRAPHED:
        bench_sgd.graphed_step(providers[name], shapes, device, expected, f"{name} CUDA graph")
