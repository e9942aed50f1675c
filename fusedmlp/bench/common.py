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
