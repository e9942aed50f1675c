"""Pieces every op benchmark shares: which fusedmlp backends to time, the torch.compile
provider (its compile time reported apart), and the check that runs before any timing."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from fusedmlp import available_backends


def fused_backends(device: torch.device) -> list[str]:
    """fusedmlp's backends worth timing on `device`: the Triton interpreter and the plain
    torch reference are not products, so they are not timed."""
    backends = available_backends(device)
    return [b for b in backends if b != "torch" and not (b == "triton" and device.type == "cpu")]


def compiled(fn: Callable, warm_args: Sequence = ()) -> tuple[Callable, float]:
    """torch.compile(fn) and the seconds its first (compiling) call took."""
    torch._dynamo.reset()
    compiled_fn = torch.compile(fn)
    start = time.perf_counter()
    compiled_fn(*warm_args)
    return compiled_fn, time.perf_counter() - start


def check_close(name: str, actual, expected, dtype: torch.dtype) -> None:
    """Refuses to time a provider whose results differ from eager PyTorch's."""
    tol = {torch.float64: 1e-7, torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float16: 1e-2}[dtype]
    for a, e in zip(actual, expected):
        if a is None and e is None:
            continue
        torch.testing.assert_close(a.float(), e.float(), rtol=tol, atol=tol, msg=lambda m: f"{name}: {m}")


# The suffix of a provider whose call is captured once into a CUDA graph and replayed.
GRAPH = "CUDA graph"


def cuda_graphed(
    step: Callable[[], object],
    parameters: Sequence[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> Callable[[], object]:
    """`step` (which ends with optimizer.step()) captured into one CUDA graph, as in PyTorch's
    whole-network capture recipe: warm up on a side stream (so the optimizer's state exists),
    capture, then every call is one replay, launch overhead gone. The warm-up's updates are
    undone (parameters restored, momentum buffers zeroed, which with dampening 0 gives the same
    next update as a fresh buffer), so the graph trains from the same start as its eager twin."""
    start = [p.detach().clone() for p in parameters]
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    with torch.no_grad():
        for p, p0 in zip(parameters, start):
            p.copy_(p0)
            buffer = optimizer.state[p].get("momentum_buffer")
            if buffer is not None:
                buffer.zero_()

    def replay() -> object:
        graph.replay()
        return static_out

    # The graph reads and writes the step's tensors (batch, parameters, gradients, momentum
    # buffers) at the addresses they had during capture, and `step` is what owns them: without
    # this reference they were freed once the caller returned, their memory was reused, and
    # replays read garbage (the device assert in nll_loss of the first H200 run).
    replay.captured_step = step
    return replay
