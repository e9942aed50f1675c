"""Which backends exist, which can run on a device, and why the others cannot.

Availability is decided once, at import: whether the compiled extension loaded, whether it
holds CUDA kernels, whether Triton imports and whether its interpreter is on. Keeping these
as module constants keeps backend choice free of Python side effects under torch.compile.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings

import torch

BACKENDS = ("cuda", "triton", "cpu", "torch")
# The backends whose kernels are C++: each op's differentiable form (``torch.ops.fusedmlp.mlp``,
# ``.cross_entropy``, ``.linear_relu``) has its autograd in C++ too (csrc/autograd/), so no
# Python runs on the way back; the other backends go through the ops' autograd.Functions.
CPP_AUTOGRAD_BACKENDS = ("cpu", "cuda")

try:
    from fusedmlp import _C  # noqa: F401  (loading it registers torch.ops.fusedmlp.*)

    _EXTENSION_ERROR: str | None = None
except ImportError as error:  # the package still works with backend="torch"
    _EXTENSION_ERROR = f"{type(error).__name__}: {error}"

HAS_EXTENSION = _EXTENSION_ERROR is None
HAS_CUDA_KERNELS = HAS_EXTENSION and torch._C._dispatch_has_kernel_for_dispatch_key("fusedmlp::linear_relu_fwd", "CUDA")
HAS_TRITON = importlib.util.find_spec("triton") is not None
# TRITON_INTERPRET must be set before Triton kernels are defined, so reading it once here
# (fusedmlp defines its kernels on import) tells the truth for the whole process.
TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# "auto" prefers hand-written kernels; the Triton interpreter is for testing, never auto.
_AUTO_PREFERENCE = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}


def _unavailable_reason(backend: str, device_type: str) -> str | None:
    """None when `backend` can run on tensors of `device_type`, else why not and the fix."""
    rebuild = "rebuild with `pip install --no-build-isolation -e .`"
    if backend == "torch":
        return None
    if backend == "cpu":
        if device_type != "cpu":
            return f"backend 'cpu' runs the C++ CPU kernels and needs CPU tensors, got {device_type} tensors"
        if not HAS_EXTENSION:
            return f"the compiled extension fusedmlp._C failed to import ({_EXTENSION_ERROR}); {rebuild}"
        return None
    if backend == "cuda":
        if device_type != "cuda":
            return f"backend 'cuda' runs the CUDA C++ kernels and needs CUDA tensors, got {device_type} tensors"
        if not HAS_EXTENSION:
            return f"the compiled extension fusedmlp._C failed to import ({_EXTENSION_ERROR}); {rebuild}"
        if not HAS_CUDA_KERNELS:
            return (
                "fusedmlp._C was built without CUDA kernels; install nvcc and a CUDA build of torch, then "
                f"{rebuild} with FUSEDMLP_BUILD_CUDA=1"
            )
        return None
    if backend == "triton":
        if not HAS_TRITON:
            return "Triton is not installed; `pip install triton`"
        if device_type == "cuda":
            return None
        if device_type == "cpu" and TRITON_INTERPRET:
            return None
        if device_type == "cpu":
            return (
                "backend 'triton' needs CUDA tensors, or CPU tensors under the Triton interpreter "
                "(set TRITON_INTERPRET=1 before importing fusedmlp)"
            )
        return f"backend 'triton' does not support {device_type} tensors"
    raise ValueError(f"unknown backend {backend!r}; expected one of {('auto',) + BACKENDS}")


def available_backends(device: str | torch.device = "cpu") -> list[str]:
    """The backends that can run on `device`, best first (the first is what "auto" picks,
    except that the Triton interpreter on CPU is listed but never picked)."""
    device_type = torch.device(device).type
    order = _AUTO_PREFERENCE.get(device_type, ("torch",))
    ranked = list(order) + [b for b in BACKENDS if b not in order]
    return [b for b in ranked if _unavailable_reason(b, device_type) is None]


# Device types "auto" has already warned about (it falls back to the torch backend once per
# device type, loudly: a missing build must not pass for fused kernels).
_WARNED_UNFUSED: set[str] = set()


def _warn_unfused(device_type: str) -> None:
    if device_type in _WARNED_UNFUSED or torch.compiler.is_compiling():
        return
    _WARNED_UNFUSED.add(device_type)
    reasons = "; ".join(
        f"{candidate}: {_unavailable_reason(candidate, device_type)}"
        for candidate in _AUTO_PREFERENCE.get(device_type, ())
        if candidate != "torch"
    )
    warnings.warn(
        f"fusedmlp: no fused backend can run on {device_type} tensors"
        + (f" ({reasons})" if reasons else "")
        + "; backend 'auto' runs the plain-PyTorch reference ('torch') there, without fused kernels",
        RuntimeWarning,
        stacklevel=3,
    )


def resolve_backend(backend: str, device: torch.device) -> str:
    """The concrete backend for tensors on `device`; raises if `backend` cannot run there.
    "auto" takes the first backend of its preference order that can run, and warns (once per
    device type) when only the plain-PyTorch reference can."""
    if backend == "auto":
        for candidate in _AUTO_PREFERENCE.get(device.type, ("torch",)):
            if candidate == "torch":
                break
            if _unavailable_reason(candidate, device.type) is None:
                return candidate
        _warn_unfused(device.type)
        return "torch"
    reason = _unavailable_reason(backend, device.type)
    if reason is not None:
        raise RuntimeError(f"fusedmlp: backend {backend!r} cannot run here: {reason}")
    return backend


def check_backend_name(backend: str) -> str:
    """Validates a backend name at construction time (modules, optimizers)."""
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {('auto',) + BACKENDS}")
    return backend


def below_autograd():
    """Context for calling a registered op from inside an autograd.Function's forward: skips the
    op's own (Python) autograd kernel, which would only redispatch there at a cost comparable to
    a tiny kernel. Under torch.compile (which cannot trace the guard) it does nothing."""
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    return torch._C._AutoDispatchBelowAutograd()
