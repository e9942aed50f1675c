"""How the Triton kernels become registered operators: defined from their C++ twins'
schemas, with one Python kernel for the CPU (interpreter) and CUDA dispatch keys.

``torch.library.custom_op`` would infer the schema and wrap the kernel twice: a Python kernel
on the Autograd key that redispatches on every call (even inside an autograd.Function, where
autograd is off), and a backend wrapper that checks the outputs for aliasing and disables
dynamo. For ``mlp_fwd_triton`` that was 74 us a call against 55 us defined from its schema
(kernels stubbed, TRITON_INTERPRET=1, this CPU); on the H200's host cProfile put 0.36 ms per
call in that wrapper's own frame (bench/results/gpu/README.md). ``torch.compile`` and
``torch.library.opcheck`` need only the schema and the fake, registered here too.

What custom_op did that a defined op does itself: an op that writes an argument bumps its
version counter (custom_op's ADInplaceOrView kernel did), so autograd still sees the write.
"""

from __future__ import annotations

from typing import Callable

import torch


def define_triton_op(name: str, schema: str, fake: Callable) -> Callable[[Callable], Callable]:
    """Decorator: defines ``fusedmlp::<name>`` from `schema` (the arguments and returns,
    e.g. ``"(Tensor input) -> Tensor output"``), registers the decorated function as its
    CPU and CUDA kernel and `fake` as its fake, and returns the function unchanged."""
    qualname = f"fusedmlp::{name}"

    def register(kernel: Callable) -> Callable:
        torch.library.define(qualname, schema)
        torch.library.impl(qualname, ("cpu", "cuda"))(kernel)
        torch.library.register_fake(qualname)(fake)
        return kernel

    return register
