"""FusedSGD step vs torch.optim.SGD (for-loop, foreach, fused) on MLP-shaped parameter sets.

Run ``python -m fusedmlp.bench.sgd [--quick]``. On CPU it times one thread, as the targets
assume; every provider is checked against torch.optim.SGD(foreach=False) before timing, and
the providers are timed in interleaved rounds so drift hits them alike.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch

import fusedmlp
from fusedmlp._backend import available_backends

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
        "torch_for_loop": lambda ps: torch.optim.SGD(ps, foreach=False, **OPTIONS),
        "torch_foreach": lambda ps: torch.optim.SGD(ps, foreach=True, **OPTIONS),
        "torch_fused": lambda ps: torch.optim.SGD(ps, fused=True, **OPTIONS),
    }
    for backend in available_backends(device):
        if backend == "torch" or (backend == "triton" and device.type == "cpu"):
            continue  # the reference and the interpreter are not what anyone would run for speed
        providers[f"fusedmlp_{backend}"] = lambda ps, b=backend: fusedmlp.FusedSGD(ps, backend=b, **OPTIONS)
    return providers


def _make(shapes, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(device).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(device)
    return params


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_sgd_bench(quick: bool, device: Optional[torch.device | str] = None) -> list[dict]:
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _run(quick, device)
    finally:
        torch.set_num_threads(threads)


def _run(quick: bool, device: torch.device) -> list[dict]:
    providers = _providers(device)
    rounds = 5 if quick else 15
    rows = []
    for case, shapes in CASES.items():
        numel = sum(torch.Size(s).numel() for s in shapes)
        # Correctness first: 3 steps of every provider against the for-loop.
        expected = _make(shapes, device)
        ref = providers["torch_for_loop"](expected)
        for _ in range(3):
            ref.step()
        setups = {}
        for name, factory in providers.items():
            params = _make(shapes, device)
            opt = factory(params)
            for _ in range(3):
                opt.step()
            for a, b in zip(params, expected):
                torch.testing.assert_close(a, b, msg=lambda m, n=name, c=case: f"{n} on {c}: {m}")
            setups[name] = opt
        # Steps per timed batch: about 5 ms of the slowest provider's work, at least 3.
        start = time.perf_counter()
        setups["torch_for_loop"].step()
        _sync(device)
        once = time.perf_counter() - start
        steps = max(3, int(0.005 / max(once, 1e-7)))
        samples = {name: [] for name in setups}
        for _ in range(rounds):
            for name, opt in setups.items():
                _sync(device)
                start = time.perf_counter()
                for _ in range(steps):
                    opt.step()
                _sync(device)
                samples[name].append((time.perf_counter() - start) / steps * 1e3)
        for name, times in samples.items():
            q = statistics.quantiles(times, n=5) if len(times) > 1 else times * 4
            rows.append({
                "case": case, "provider": name, "median_ms": statistics.median(times), "p20_ms": q[0],
                "p80_ms": q[-1], "numel": numel, "tensors": len(shapes), "device": str(device),
            })
        base = {r["provider"]: r["median_ms"] for r in rows if r["case"] == case}
        for r in rows:
            if r["case"] == case:
                r["speedup_vs_fused"] = base["torch_fused"] / r["median_ms"]
                r["speedup_vs_foreach"] = base["torch_foreach"] / r["median_ms"]
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    for row in run_sgd_bench(args.quick, args.device):
        print(f"{row['case']:>14} {row['provider']:>16} {row['median_ms']:9.4f} ms "
              f"(p20 {row['p20_ms']:.4f}, p80 {row['p80_ms']:.4f})  "
              f"x{row['speedup_vs_fused']:.2f} vs fused, x{row['speedup_vs_foreach']:.2f} vs foreach")
