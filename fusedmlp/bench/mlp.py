"""A full MLP training step (forward, cross-entropy, backward, SGD with momentum) on one CPU
thread: FusedMLP against eager PyTorch and torch.compile.

Providers:
- ``eager``: ``nn.Sequential(Linear, ReLU, ..., Linear)`` + ``F.cross_entropy`` + ``torch.optim.SGD``.
- ``compile``: the same model, forward + loss under ``torch.compile`` (inductor); backward and
  the optimizer step eager, as a training loop usually has them.
- ``fusedmlp``: ``FusedMLP`` (whole-network op on CPU) + the loss and optimizer in ``LOSS`` /
  ``OPTIMIZER`` below (torch's until the fused ones are merged in: one line each to swap).
- ``fusedmlp-layers``: ``FusedMLP(fuse_network=False)``, layer by layer, to show what the
  whole-network op buys.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import fusedmlp

LOSS = F.cross_entropy
OPTIMIZER = torch.optim.SGD
SGD_ARGS = dict(lr=0.01, momentum=0.9)

CASES = [  # (name, widths, batch)
    ("tiny 50-30-20-3 b32", (50, 30, 20, 3), 32),
    ("tiny 2-30-20-2 b2", (2, 30, 20, 2), 2),
    ("medium 784-1024-1024-10 b256", (784, 1024, 1024, 10), 256),
]
PROVIDERS = ("eager", "compile", "fusedmlp", "fusedmlp-layers")


def _sequential(widths):
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        if i > 0:
            layers.append(torch.nn.ReLU())
        layers.append(torch.nn.Linear(fan_in, fan_out))
    return torch.nn.Sequential(*layers)


def make_step(provider: str, widths, batch: int) -> tuple[Callable[[], torch.Tensor], torch.nn.Module]:
    """A closure running one training step (returns the loss) and the model it trains. Every
    provider starts from the same weights and data."""
    torch.manual_seed(0)
    reference = _sequential(widths)
    x = torch.randn(batch, widths[0])
    y = torch.randint(0, widths[-1], (batch,))
    if provider in ("fusedmlp", "fusedmlp-layers"):
        model = fusedmlp.FusedMLP(widths[0], widths[-1], widths[1:-1],
                                  fuse_network=None if provider == "fusedmlp" else False)
        model.layers.load_state_dict(reference.state_dict())
        optimizer = OPTIMIZER(model.parameters(), **SGD_ARGS)
        loss_fn = LOSS
    else:
        model = copy.deepcopy(reference)
        optimizer = torch.optim.SGD(model.parameters(), **SGD_ARGS)
        loss_fn = F.cross_entropy

    def forward_loss(x, y):
        return loss_fn(model(x), y)

    if provider == "compile":
        forward_loss = torch.compile(forward_loss, fullgraph=True)

    def step():
        optimizer.zero_grad()
        loss = forward_loss(x, y)
        loss.backward()
        optimizer.step()
        return loss

    return step, model


def _check_agreement(widths, batch, providers) -> None:
    """Two steps of every provider from the same start reach the same parameters."""
    results = {}
    for provider in providers:
        step, model = make_step(provider, widths, batch)
        for _ in range(2):
            step()
        results[provider] = [p.detach() for p in model.parameters()]
    first = results[providers[0]]
    for provider in providers[1:]:
        for a, b in zip(first, results[provider]):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m, p=provider: f"{p}: {m}")


def _percentile(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def run_mlp_bench(quick: bool = True, providers=PROVIDERS, cases=CASES) -> list[dict]:
    """Rows {case, provider, median_ms, p20_ms, p80_ms, speedup_vs_eager, speedup_vs_compile}
    for one training step; providers are interleaved so machine noise hits all alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for name, widths, batch in cases:
            _check_agreement(widths, batch, providers)
            steps = {provider: make_step(provider, widths, batch)[0] for provider in providers}
            tiny = widths[1] <= 64
            inner = (50 if quick else 200) if tiny else (2 if quick else 5)
            repeats = 10 if quick else 30
            for step in steps.values():  # warm-up, compiles included
                for _ in range(max(3, inner // 5)):
                    step()
            samples = {provider: [] for provider in providers}
            for _ in range(repeats):
                for provider, step in steps.items():
                    start = time.perf_counter()
                    for _ in range(inner):
                        step()
                    samples[provider].append((time.perf_counter() - start) / inner * 1e3)
            medians = {p: statistics.median(s) for p, s in samples.items()}
            for provider, values in samples.items():
                values = sorted(values)
                row = dict(case=name, provider=provider, median_ms=medians[provider], p20_ms=_percentile(values, 0.2),
                           p80_ms=_percentile(values, 0.8), threads=1)
                for base in ("eager", "compile"):
                    if base in medians:
                        row[f"speedup_vs_{base}"] = medians[base] / medians[provider]
                rows.append(row)
        return rows
    finally:
        torch.set_num_threads(threads)


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
    for row in run_mlp_bench(quick=True):
        print(f"{row['case']:32s} {row['provider']:16s} {row['median_ms'] * 1e3:9.1f} us"
              f"  x{row.get('speedup_vs_eager', float('nan')):.2f} vs eager"
              f"  x{row.get('speedup_vs_compile', float('nan')):.2f} vs compile")
