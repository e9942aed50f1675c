"""torch.autocast's casting rules for fusedmlp's ops, so that a model swapped to fusedmlp computes
under ``torch.autocast`` in the dtypes torch's own layers would.

torch casts at the dispatcher (its Autocast keys), per op: ``linear`` runs in the autocast dtype
(float16 / bfloat16), ``cross_entropy`` in float32. fusedmlp's ops apply the same rules in their
functional layer (and FusedMLP in its forward, for the whole-network op), before the autograd
Function or the C++ autograd op, and then run with autocast off, as torch's Autocast kernels do:
the kernels' own ATen calls (the CPU GEMMs, the torch backend's composites) must not be cast a
second time. Casts are ``Tensor.to``, so gradients flow back to the parameters in their own dtype,
as with torch.autocast.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _enabled_for(input: Tensor) -> bool:
    # The first test is the cheap one (0.2 us against 1 us for the device's type, measured):
    # it is all a call pays when no autocast region is open.
    return torch._C._is_any_autocast_enabled() and torch.is_autocast_enabled(input.device.type)


def lower_precision_dtype(input: Tensor) -> Optional[torch.dtype]:
    """The dtype torch.autocast runs ``linear`` in on `input`'s device type, or None when
    autocast is off there."""
    return torch.get_autocast_dtype(input.device.type) if _enabled_for(input) else None


def float32_if_autocast(input: Tensor) -> Optional[torch.dtype]:
    """float32 (autocast's dtype for ``cross_entropy``) when autocast is on for `input`'s device
    type, else None."""
    return torch.float32 if _enabled_for(input) else None


def cast(tensor: Optional[Tensor], dtype: torch.dtype, device_type: str) -> Optional[Tensor]:
    """`tensor` in `dtype` where torch.autocast would cast it: a floating tensor on the autocast
    device, except float64, which autocast leaves alone."""
    if (
        tensor is None
        or tensor.dtype == dtype
        or tensor.dtype == torch.float64
        or not tensor.is_floating_point()
        or tensor.device.type != device_type
    ):
        return tensor
    return tensor.to(dtype)


def disabled(device_type: str) -> torch.autocast:
    """The region an op runs in once its inputs are cast: autocast off on `device_type`."""
    return torch.autocast(device_type, enabled=False)
