"""A full MLP training step (forward, cross-entropy, backward, SGD with momentum) on one CPU
thread: FusedMLP against eager PyTorch and torch.compile.

Providers:
- ``eager``: ``nn.Sequential(Linear, ReLU, ..., Linear)`` + ``F.cross_entropy`` + ``torch.optim.SGD``.
- ``torch.compile``: the same model, forward + loss under ``torch.compile`` (inductor); backward and
  the optimizer step eager, as a training loop usually has them.
- ``fusedmlp:<backend>``: ``FusedMLP`` (the whole-network op where the backend has one) +
  ``fusedmlp.functional.cross_entropy`` + ``fusedmlp.FusedSGD``.
- ``fusedmlp:<backend> layers``: ``FusedMLP(fuse_network=False)``, layer by layer, to show what
  the whole-network op buys.
- On a GPU, ``eager CUDA graph`` and ``fusedmlp:cuda CUDA graph``: each step captured once and
  replayed (PyTorch's whole-network capture recipe), launch overhead gone.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F

import fusedmlp
from fusedmlp.bench.common import GRAPH, cuda_graphed, fused_backends
from fusedmlp.bench.timing import time_providers

SGD_ARGS = dict(lr=0.01, momentum=0.9)

CASES = [  # (name, widths, batch): one CPU thread
    ("tiny 50-30-20-3 b32", (50, 30, 20, 3), 32),
    ("tiny 2-30-20-2 b2", (2, 30, 20, 2), 2),
    ("medium 784-1024-1024-10 b256", (784, 1024, 1024, 10), 256),
]

# On a GPU the narrow networks run at the batches where a whole-network kernel pays (issue 7:
# 2^14 to 2^20 rows). Quick mode: one batch per network, spanning that range (each case costs
# a torch.compile).
_GPU_NARROW = [("2-30-20-2", (2, 30, 20, 2)), ("50-30-20-3", (50, 30, 20, 3)), ("64x4", (64, 64, 64, 64, 64))]
GPU_CASES_QUICK = [
    (f"{name} b{batch}", widths, batch) for (name, widths), batch in zip(_GPU_NARROW, (2**14, 2**17, 2**20))
]
GPU_CASES_FULL = [
    *[(f"{name} b{batch}", widths, batch) for batch in (2**14, 2**17, 2**20) for name, widths in _GPU_NARROW],
    ("medium 784-1024-1024-10 b256", (784, 1024, 1024, 10), 256),
    ("wide 4x4096 b4096", (4096, 4096, 4096, 4096, 4096), 4096),
]

EAGER_GRAPH = f"eager {GRAPH}"
# FusedMLP's step captured the same way: with launch overhead gone, what the kernels themselves
# buy against EAGER_GRAPH. (The Triton launchers copy pointer tables from pinned host memory on
# every call; whether that survives capture is untried, so only the CUDA C++ backend is captured.)
FUSED_GRAPH = f"fusedmlp:cuda {GRAPH}"


def cases(device: torch.device, quick: bool) -> list[tuple[str, tuple[int, ...], int]]:
    if device.type == "cuda":
        return GPU_CASES_QUICK if quick else GPU_CASES_FULL
    return CASES


def providers(device: torch.device) -> list[str]:
    names = ["eager", "torch.compile"]
    if device.type == "cuda":
        # Eager with its launches recorded once and replayed: what launch overhead costs.
        names.append(EAGER_GRAPH)
    for backend in fused_backends(device):
        names += [f"fusedmlp:{backend}", f"fusedmlp:{backend} layers"]
    if "fusedmlp:cuda" in names:
        names.append(FUSED_GRAPH)
    return names


def _sequential(widths):
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i > 0:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(fan_in, fan_out))
    return torch.nn.Sequential(*layers)


def make_step(
    provider: str, widths, batch: int, device: torch.device | str = "cpu"
) -> tuple[Callable[[], torch.Tensor], torch.nn.Module]:
    """A closure running one training step (returns the loss) and the model it trains. Every
    provider starts from the same weights and data."""
    torch.manual_seed(0)
    reference = _sequential(widths).to(device)
    x = torch.randn(batch, widths[0], device=device)
    y = torch.randint(0, widths[-1], (batch,), device=device)
    if provider.startswith("fusedmlp:"):
        backend = provider.split(":")[1].split()[0]
        model = fusedmlp.FusedMLP(
            widths[0],
            widths[-1],
            widths[1:-1],
            backend=backend,
            device=device,
            fuse_network=False if provider.endswith("layers") else None,
        )
        model.layers.load_state_dict(reference.state_dict())
        optimizer = fusedmlp.FusedSGD(model.parameters(), backend=backend, **SGD_ARGS)

        def loss_fn(logits, target):
            return fusedmlp.functional.cross_entropy(logits, target, backend=backend)
    else:
        model = copy.deepcopy(reference)
        optimizer = torch.optim.SGD(model.parameters(), **SGD_ARGS)
        loss_fn = F.cross_entropy

    def forward_loss(x, y):
        return loss_fn(model(x), y)

    if provider == "torch.compile":
        forward_loss = torch.compile(forward_loss, fullgraph=True)

    def step():
        optimizer.zero_grad()
        loss = forward_loss(x, y)
        loss.backward()
        optimizer.step()
        return loss

    if provider.endswith(GRAPH):
        return cuda_graphed(step, list(model.parameters()), optimizer, torch.device(device)), model
    return step, model


def _check_agreement(widths, batch, names, device, steps: int = 2) -> None:
    """`steps` steps of every provider from the same start reach the same parameters."""
    results = {}
    for provider in names:
        step, model = make_step(provider, widths, batch, device)
        for _ in range(steps):
            step()
        results[provider] = [p.detach() for p in model.parameters()]
    first = results[names[0]]
    for provider in names[1:]:
        for a, b in zip(first, results[provider]):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m, p=provider: f"{p}: {m}")


def run_mlp_bench(quick: bool = True, device: str | torch.device = "cpu") -> list[dict]:
    """One training step per provider, interleaved, for each case."""
    device = torch.device(device)
    names = providers(device)
    rows = []
    for name, widths, batch in cases(device, quick):
        _check_agreement(widths, batch, names, device)
        steps = {provider: make_step(provider, widths, batch, device)[0] for provider in names}
        times = time_providers(steps, device, rounds=9 if quick else 21)
        for provider, t in times.items():
            rows.append(
                {
                    "op": "train_step",
                    "case": name,
                    "provider": provider,
                    **t,
                    "speedup_vs_compile": times["torch.compile"]["median_ms"] / t["median_ms"],
                }
            )
    return rows


def profile_step(provider: str, widths=(50, 30, 20, 3), batch: int = 32, steps: int = 200) -> str:
    """Where one provider's training step spends its time (torch.profiler, CPU, one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step, _ = make_step(provider, widths, batch)
        for _ in range(20):
            step()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                step()
        return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    torch.set_num_threads(1)
    for row in run_mlp_bench(quick=True):
        print(
            f"{row['case']:32s} {row['provider']:20s} {row['median_ms'] * 1e3:9.1f} us"
            f"  x{row['speedup_vs_compile']:.2f} vs torch.compile"
        )
