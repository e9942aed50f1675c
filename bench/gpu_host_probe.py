"""Where launch-bound calls spend their host time on a GPU machine: the benchmark's smallest
training step (2-30-20-2 at 2^14 rows, issue 7), whose GPU work a CUDA graph replays in tens of
microseconds while the eager-launched step takes the better part of a millisecond, and the
cross-entropy forward+backward at 4096 x 8192 fp32, where the Triton backend took 1.1 ms against
0.23 ms for the CUDA one (issue 3). For each provider: the wall time per call, then the Python
functions that take that time (cProfile, sorted by own time), so the Triton launchers' host
cost can be told from the framework's; the garbage collections that land in the timed calls (a
collection is charged to whatever frame allocated, and once put 0.36 ms per call in torch's
custom-op wrapper's own time on the H200's host) and the wall time with the collector off; and
the CUDA runtime and driver calls per call with their host time (torch.profiler; CPU-side
events only: what each launch and copy costs on that host). Prints text.

    python bench/gpu_host_probe.py [--device cuda] [--providers eager,fusedmlp:cuda,fusedmlp:triton]

(--device cpu --providers eager,fusedmlp:cpu dry-runs the script without a GPU.)
"""

import argparse
import cProfile
import gc
import io
import pstats
import time

import torch
import torch.nn.functional as F

import fusedmlp
from fusedmlp.bench.mlp import make_step
from fusedmlp.bench.timing import synchronize

WIDTHS, BATCH = (2, 30, 20, 2), 2**14


def _cross_entropy_call(provider: str, device: torch.device):
    torch.manual_seed(0)
    x = torch.randn(4096, 8192, device=device).requires_grad_(True)
    t = torch.randint(0, 8192, (4096,), device=device)
    if provider == "eager":
        loss_fn = F.cross_entropy
    else:
        backend = provider.split(":")[1]

        def loss_fn(a, b):
            return fusedmlp.functional.cross_entropy(a, b, backend=backend)

    def call():
        x.grad = None
        loss_fn(x, t).backward()

    return call


class _Collections:
    """Garbage collections while active: how many per generation, and their total time."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = 0.0
        self._start = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.count[info["generation"]] += 1
            self.seconds += time.perf_counter() - self._start

    def __enter__(self):
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self._callback)

    def __str__(self) -> str:
        return f"{sum(self.count)} collections (generations 0/1/2: {self.count}), {self.seconds * 1e3:.2f} ms"


def _timed(call, device: torch.device, calls: int) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        call()
    synchronize(device)
    return (time.perf_counter() - start) / calls * 1e6


def _driver_calls(call, device: torch.device, calls: int) -> str:
    """The CUDA runtime/driver API calls of `calls` calls (host-side events of torch.profiler),
    per call: count and host time each."""
    if device.type != "cuda":
        return "(no CUDA API calls off a GPU)"
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(calls):
            call()
        synchronize(device)
    lines = []
    for event in sorted(prof.key_averages(), key=lambda e: -e.cpu_time_total):
        host_side = event.device_type == torch.autograd.DeviceType.CPU  # not the kernels themselves
        if host_side and event.key.startswith("cu") and event.key != "cudaDeviceSynchronize":
            per_call = event.count / calls
            lines.append(
                f"  {event.key:40s} {per_call:5.1f} per call, {event.cpu_time_total / event.count:7.1f} us each"
            )
    return "\n".join(lines) if lines else "(the profiler saw no CUDA API calls)"


def probe(name: str, call, device: torch.device, calls: int = 200, rows: int = 22) -> str:
    for _ in range(20):
        call()
    with _Collections() as collections:
        wall_us = _timed(call, device, calls)
    gc.collect()
    gc.disable()
    try:
        wall_without_gc_us = _timed(call, device, calls)
    finally:
        gc.enable()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        call()
    synchronize(device)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(rows)
    return (
        f"== {name}: {wall_us:.1f} us per call (without the profiler), {wall_without_gc_us:.1f} us with the "
        f"garbage collector off\n"
        f"garbage collection in the {calls} timed calls: {collections}\n"
        f"CUDA API calls per call:\n{_driver_calls(call, device, min(calls, 50))}\n{text.getvalue()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--providers", default="eager,fusedmlp:cuda,fusedmlp:triton")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per provider (and as many profiled)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device(args.device)
    providers = args.providers.split(",")
    for provider in providers:
        step, _ = make_step(provider, WIDTHS, BATCH, device)
        print(probe(f"train step 2-30-20-2 @ 2^14, {provider}", step, device, args.calls), flush=True)
        if provider == "fusedmlp:triton" and device.type == "cuda":
            # The same step copying every launch table again (capacity 0 keeps none): what
            # keeping them saves on this host, side by side.
            from fusedmlp.triton_kernels._launch import LAUNCH_TABLES

            capacity, LAUNCH_TABLES.capacity = LAUNCH_TABLES.capacity, 0
            LAUNCH_TABLES.clear()
            try:
                name = f"train step 2-30-20-2 @ 2^14, {provider}, launch tables not kept"
                print(probe(name, step, device, args.calls), flush=True)
            finally:
                LAUNCH_TABLES.capacity = capacity
    for provider in providers:
        call = _cross_entropy_call(provider, device)
        print(probe(f"cross-entropy 4096 x 8192 fp32 fwd+bwd, {provider}", call, device, args.calls), flush=True)


if __name__ == "__main__":
    main()
