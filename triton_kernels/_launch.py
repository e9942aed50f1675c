"""What every Triton launcher here shares."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor


def device_guard(t: Tensor):
    """Context for a launch on `t`'s tensors: Triton launches on torch's current device and
    stream, so the current device is made `t`'s (a no-op for CPU tensors, the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
