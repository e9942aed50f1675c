"""Side-by-side timing: providers interleaved round by round, warm-up excluded, quantiles kept.

Interleaving (A B C, A B C, ...) rather than running each provider to completion makes slow
drift of the machine (frequency, other load) hit every provider alike, so ratios measured in
one run are trustworthy even when absolute times wander.
"""

from __future__ import annotations

import time
from typing import Callable

import torch


def synchronize(device: torch.device) -> None:
    """Wait for `device`'s queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# Bigger than any GPU's L2 (H100/H200: 50-60 MB): writing it evicts what the previous call left.
_L2_FLUSH_BYTES = 256 * 2**20
_l2_flush_buffers: dict[torch.device, torch.Tensor] = {}


def _flush_l2(device: torch.device) -> None:
    """Evict the GPU's L2 so that each timed call starts cold, as triton.testing.do_bench
    does (otherwise a call whose inputs fit in L2 would be timed from cache)."""
    buffer = _l2_flush_buffers.get(device)
    if buffer is None:
        buffer = _l2_flush_buffers[device] = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    buffer.zero_()


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
    round lasts about `target_round_s`). On CPU the batch is timed with perf_counter, so
    microsecond-scale calls are measured above timer resolution. On a GPU every call is timed
    alone with CUDA events after an L2 flush (cold cache, as triton.testing.do_bench); for
    calls so short that launch overhead is the story, the benchmarks add a CUDA-graph provider.
    """
    device = torch.device(device)
    inner: dict[str, int] = {}
    for name, fn in providers.items():
        synchronize(device)
        start, calls = time.perf_counter(), 0
        while True:
            fn()
            calls += 1
            synchronize(device)
            elapsed = time.perf_counter() - start
            if elapsed >= warmup_s and calls >= 3:
                break
        inner[name] = max(1, int(target_round_s / (elapsed / calls)))

    samples: dict[str, list[float]] = {name: [] for name in providers}
    for _ in range(rounds):
        for name, fn in providers.items():
            n = inner[name]
            if device.type == "cuda":
                # Each call timed alone between CUDA events after an L2 flush (not timed).
                events = []
                for _ in range(n):
                    _flush_l2(device)
                    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    begin.record()
                    fn()
                    end.record()
                    events.append((begin, end))
                events[-1][1].synchronize()
                samples[name].append(sum(b.elapsed_time(e) for b, e in events) / n)
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
