"""Side-by-side timing: providers interleaved round by round, warm-up excluded, quantiles kept.

Interleaving (A B C, A B C, ...) rather than running each provider to completion makes slow
drift of the machine (frequency, other load) hit every provider alike, so ratios measured in
one run are trustworthy even when absolute times wander.
"""

from __future__ import annotations

import time
from typing import Callable

import torch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_providers(
    providers: dict[str, Callable[[], object]],
    device: torch.device | str = "cpu",
    *,
    rounds: int = 15,
    target_round_s: float = 0.02,
    warmup_s: float = 0.05,
) -> dict[str, dict[str, float]]:
    """Median, p20 and p80 of one call's time (ms) for each provider.

    Each round calls every provider `inner` times in a row (inner chosen during warm-up so a
    round lasts about `target_round_s`), timing the batch with CUDA events on a GPU and
    perf_counter on CPU, so microsecond-scale calls are measured above timer resolution.
    """
    device = torch.device(device)
    inner: dict[str, int] = {}
    for name, fn in providers.items():
        _synchronize(device)
        start, calls = time.perf_counter(), 0
        while True:
            fn()
            calls += 1
            _synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= warmup_s and calls >= 3:
                break
        inner[name] = max(1, int(target_round_s / (elapsed / calls)))

    samples: dict[str, list[float]] = {name: [] for name in providers}
    for _ in range(rounds):
        for name, fn in providers.items():
            n = inner[name]
            if device.type == "cuda":
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                for _ in range(n):
                    fn()
                end.record()
                end.synchronize()
                samples[name].append(begin.elapsed_time(end) / n)
            else:
                start = time.perf_counter()
                for _ in range(n):
                    fn()
                samples[name].append((time.perf_counter() - start) * 1e3 / n)

    result = {}
    for name, values in samples.items():
        q = torch.tensor(values, dtype=torch.float64).quantile(torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
        result[name] = {"median_ms": q[0].item(), "p20_ms": q[1].item(), "p80_ms": q[2].item()}
    return result


def peak_memory_mb(fn: Callable[[], object], device: torch.device | str) -> float | None:
    """Peak GPU memory (MB) allocated while running `fn` once; None on CPU (not tracked)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20
