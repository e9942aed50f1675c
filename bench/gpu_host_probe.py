"""Where launch-bound calls spend their host time on a GPU machine: the benchmark's smallest
training step (2-30-20-2 at 2^14 rows, issue 7), whose GPU work a CUDA graph replays in tens of
microseconds while the eager-launched step takes the better part of a millisecond, and the
cross-entropy forward+backward at 4096 x 8192 fp32, where the Triton backend took 1.1 ms against
0.23 ms for the CUDA one (issue 3). For each provider: the wall time per call, then the Python
functions that take that time (cProfile, sorted by own time), so the Triton launchers' host
cost can be told from the framework's. Prints text.

    python bench/gpu_host_probe.py [--device cuda] [--providers eager,fusedmlp:cuda,fusedmlp:triton]

(--device cpu --providers eager,fusedmlp:cpu dry-runs the script without a GPU.)
"""

import argparse
import cProfile
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


def probe(name: str, call, device: torch.device, calls: int = 200, rows: int = 22) -> str:
    for _ in range(20):
        call()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        call()
    synchronize(device)
    wall_us = (time.perf_counter() - start) / calls * 1e6
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        call()
    synchronize(device)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(rows)
    return f"== {name}: {wall_us:.1f} us per call (without the profiler)\n{text.getvalue()}"


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
    for provider in providers:
        call = _cross_entropy_call(provider, device)
        print(probe(f"cross-entropy 4096 x 8192 fp32 fwd+bwd, {provider}", call, device, args.calls), flush=True)


if __name__ == "__main__":
    main()
