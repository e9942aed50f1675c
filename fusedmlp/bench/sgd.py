"""FusedSGD step vs torch.optim.SGD (for-loop, foreach, fused) on MLP-shaped parameter sets.

Run ``python -m fusedmlp.bench --only sgd``. Every provider is checked against
torch.optim.SGD(foreach=False) before timing; providers are timed in interleaved rounds. On a GPU,
torch's fused step and fusedmlp's CUDA step are also timed replayed from a CUDA graph.
"""

from __future__ import annotations

import gc
from typing import Callable

import torch

import fusedmlp
from fusedmlp.bench.common import GRAPH, cuda_graphed, fused_backends
from fusedmlp.bench.timing import time_providers

# The tutorial's NeuralNetwork(50, 3) (50 -> 30 -> 20 -> 3), a 784-1024-1024-10 MLP and many
# small tensors (where per-tensor launch/dispatch overhead dominates).
CASES = {
    "tutorial_2213": [(30, 50), (30,), (20, 30), (20,), (3, 20), (3,)],
    "mlp_1.86M": [(1024, 784), (1024,), (1024, 1024), (1024,), (10, 1024), (10,)],
    "500_small": [(64,)] * 500,
}
OPTIONS = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)


def _providers(device: torch.device) -> dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]:
    providers = {
        "torch.optim.SGD:for-loop": lambda ps: torch.optim.SGD(ps, foreach=False, **OPTIONS),
        "torch.optim.SGD:foreach": lambda ps: torch.optim.SGD(ps, foreach=True, **OPTIONS),
        "torch.optim.SGD:fused": lambda ps: torch.optim.SGD(ps, fused=True, **OPTIONS),
    }
    for backend in fused_backends(device):
        providers[f"fusedmlp:{backend}"] = lambda ps, b=backend: fusedmlp.FusedSGD(ps, backend=b, **OPTIONS)
    return providers


# On a GPU a step over the tutorial's six tensors is microseconds of work behind launch and
# Python overhead: torch's fused step and fusedmlp's CUDA step are also timed captured in a
# CUDA graph and replayed, which shows the kernels alone.
GRAPHED = ("torch.optim.SGD:fused", "fusedmlp:cuda")


def _make(shapes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    return params


def _assert_reached(params: list[torch.Tensor], expected: list[torch.Tensor], label: str) -> None:
    for a, b in zip(params, expected):
        torch.testing.assert_close(a, b, msg=lambda m: f"{label}: {m}")


def graphed_step(
    factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    shapes,
    device: torch.device,
    expected: list[torch.Tensor],
    label: str,
) -> Callable[[], object]:
    """The step of `factory`'s optimizer on fresh parameters, captured in a CUDA graph
    (cuda_graphed), checked before it is timed: three replays must reach `expected`, the
    parameters after three steps of the for-loop optimizer. Garbage is collected between capture
    and replays, so a replay that depended on freed memory would show here."""
    params = _make(shapes, device)
    opt = factory(params)
    replay = cuda_graphed(opt.step, params, opt, device)
    gc.collect()
    for _ in range(3):
        replay()
    _assert_reached(params, expected, label)
    return replay


def run_sgd_bench(quick: bool = True, device: str | torch.device = "cpu") -> list[dict]:
    device = torch.device(device)
    providers = _providers(device)
    rows = []
    for case, shapes in CASES.items():
        numel = sum(torch.Size(s).numel() for s in shapes)
        # Correctness first: 3 steps of every provider against the for-loop.
        expected = _make(shapes, device)
        reference = providers["torch.optim.SGD:for-loop"](expected)
        for _ in range(3):
            reference.step()
        steps = {}
        for name, factory in providers.items():
            params = _make(shapes, device)
            opt = factory(params)
            for _ in range(3):
                opt.step()
            _assert_reached(params, expected, f"{name} on {case}")
            steps[name] = opt.step
        if device.type == "cuda":
            for name in (n for n in GRAPHED if n in providers):
                graphed = f"{name} {GRAPH}"
                steps[graphed] = graphed_step(providers[name], shapes, device, expected, f"{graphed} on {case}")
        times = time_providers(steps, device, rounds=7 if quick else 15)
        # Floor with momentum: read p, g, buf and write p, buf.
        step_bytes = 5 * numel * 4
        for name, t in times.items():
            rows.append(
                {
                    "op": "sgd",
                    "case": f"{case} ({len(shapes)} tensors)",
                    "provider": name,
                    **t,
                    "gbps": step_bytes / (t["median_ms"] * 1e-3) / 1e9,
                    "speedup_vs_fused": times["torch.optim.SGD:fused"]["median_ms"] / t["median_ms"],
                    "speedup_vs_foreach": times["torch.optim.SGD:foreach"]["median_ms"] / t["median_ms"],
                }
            )
    return rows


if __name__ == "__main__":
    torch.set_num_threads(1)
    for row in run_sgd_bench(quick=True, device="cuda" if torch.cuda.is_available() else "cpu"):
        print(
            f"{row['case']:>28} {row['provider']:>26} {row['median_ms']:9.4f} ms "
            f"x{row['speedup_vs_fused']:.2f} vs fused, x{row['speedup_vs_foreach']:.2f} vs foreach"
        )
