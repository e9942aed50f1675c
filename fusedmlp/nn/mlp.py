"""FusedMLP: the tutorial's ``NeuralNetwork`` (Linear, ReLU, ..., Linear) on fused kernels.

``self.layers`` is a faithful ``nn.Sequential(Linear, ReLU, Linear, ReLU, Linear)``: the
Linear slots are ``FusedLinear`` (an ``nn.Linear`` subclass) and the ReLU slots are real,
parameterless ``nn.ReLU`` modules. That keeps the tutorial's structure exactly: the same
parameter creation order and init (same seed, same weights), the state_dict keys
``layers.0.weight ... layers.4.bias``, ``model.layers[0]`` an ``nn.Linear``, and
``model.layers(x)`` still computing the network (unfused). ``FusedMLP.forward`` does not walk
the Sequential: it reads the Linear slots' parameters and runs the whole network either as
one registered op per direction (``fusedmlp.autograd.mlp.mlp``: the C++ autograd op
``torch.ops.fusedmlp.mlp`` or ``MLPFunction``, on backends with a whole-network op) or
layer by layer with fused Linear+ReLU ops. Except when a module hook would run on the
Sequential or a slot (registered on them, or globally): then forward calls ``self.layers``,
so the hooks run and see what they would see in the tutorial's network.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module

from fusedmlp import _autocast
from fusedmlp import functional as F
from fusedmlp._backend import check_backend_name, resolve_backend
from fusedmlp.autograd.mlp import mlp
from fusedmlp.nn.linear import FusedLinear
from fusedmlp.ops.mlp import NETWORK_BACKENDS, fused_kernel_uncovered_reason

__all__ = ["FusedMLP"]


def _check_width(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"FusedMLP: {name} must be a positive integer, got {value!r}")
    return value


class FusedMLP(nn.Module):
    """``FusedMLP(num_inputs, num_outputs, hidden_sizes=(30, 20))``: Linear layers of widths
    ``num_inputs -> *hidden_sizes -> num_outputs`` with ReLU between them (none after the last);
    returns logits. ``FusedMLP(50, 3)`` is the tutorial's ``NeuralNetwork(50, 3)``.

    ``backend``: "auto", "cpu", "cuda", "triton" or "torch" (see ``fusedmlp.available_backends``).
    ``fuse_network``: None (default) runs the whole network as one op per direction when the
    resolved backend has one for this network ("cpu" and "torch": any network; "cuda" and
    "triton": a fully fused kernel for widths <= 128 and <= 8 layers) and layer by layer
    otherwise; True requires the whole-network op (RuntimeError at call time, saying why,
    where there is none); False always runs layer by layer. A forward or backward hook on
    ``model.layers`` or one of its slots (or a global module hook) makes forward call the
    Sequential's modules one by one, so the hooks run. ``model.path(device)`` /
    ``repr(model)`` say which path runs.
    """

    def __init__(
        self,
        num_inputs: int,
        num_outputs: int,
        hidden_sizes: Sequence[int] = (30, 20),
        *,
        bias: bool = True,
        backend: str = "auto",
        fuse_network: Optional[bool] = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        _check_width("num_inputs", num_inputs)
        _check_width("num_outputs", num_outputs)
        if isinstance(hidden_sizes, int) or not isinstance(hidden_sizes, Sequence):
            raise ValueError(f"FusedMLP: hidden_sizes must be a sequence of positive integers, got {hidden_sizes!r}")
        hidden_sizes = tuple(_check_width(f"hidden_sizes[{i}]", w) for i, w in enumerate(hidden_sizes))
        if fuse_network not in (None, True, False):
            raise ValueError(f"FusedMLP: fuse_network must be None, True or False, got {fuse_network!r}")
        check_backend_name(backend)
        self.num_inputs, self.num_outputs, self.hidden_sizes = num_inputs, num_outputs, hidden_sizes
        self.fuse_network = fuse_network
        widths = (num_inputs, *hidden_sizes, num_outputs)
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            if i > 0:
                layers.append(nn.ReLU())  # a real slot: keeps the Linear slots at layers.0/.2/.4
            layers.append(FusedLinear(fan_in, fan_out, bias, backend=backend, device=device, dtype=dtype))
        self.layers = nn.Sequential(*layers)
        self._backend = backend

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, backend: str) -> None:
        self._backend = check_backend_name(backend)
        for linear in self._linears():
            linear.backend = backend

    def _linears(self) -> list[nn.Linear]:
        # Slicing the Sequential itself would build a new Sequential on every forward.
        return list(self.layers._modules.values())[0::2]

    def _resolve(self, device: torch.device, dtype: torch.dtype) -> tuple[str, bool]:
        """(concrete backend, whether the whole-network op runs) for tensors on `device`.
        Memoized per (backend, fuse_network, device, dtype): what it depends on besides those
        (which backends are built and usable) is fixed for the process, and for a tiny network
        resolving on every forward was a tenth of the module's own cost. Not under
        torch.compile, which would guard on the memo's contents."""
        if torch.compiler.is_compiling():
            return self._resolve_now(device, dtype)
        key = (self._backend, self.fuse_network, device, dtype)
        memo = self.__dict__.setdefault("_resolved", {})
        resolved = memo.get(key)
        if resolved is None:
            resolved = memo[key] = self._resolve_now(device, dtype)
        return resolved

    def _resolve_now(self, device: torch.device, dtype: torch.dtype) -> tuple[str, bool]:
        backend = resolve_backend(self._backend, device)
        if backend in NETWORK_BACKENDS:
            why_not = None
        else:
            widths = (self.num_inputs, *self.hidden_sizes, self.num_outputs)
            why_not = fused_kernel_uncovered_reason(backend, widths, dtype)
        if self.fuse_network and why_not is not None:
            raise RuntimeError(
                f"FusedMLP: fuse_network=True but there is no whole-network op for this network on backend "
                f"{backend!r}: {why_not}; set fuse_network=None or False to run layer by layer"
            )
        return backend, why_not is None and self.fuse_network is not False

    def _hooked(self) -> bool:
        """Whether a module hook would run on the Sequential or one of its slots, registered on
        them or globally (the same test nn.Module.__call__ makes before running hooks)."""
        if (
            _module._global_forward_pre_hooks
            or _module._global_forward_hooks
            or _module._global_backward_pre_hooks
            or _module._global_backward_hooks
        ):
            return True
        # A plain loop over _modules: 3 us per forward here, against 4.4 us through
        # nn.Module.__getattr__ and any() (measured); about 1% of a tiny network's CPU step.
        layers = self._modules["layers"]
        for module in (layers, *layers._modules.values()):
            if (
                module._forward_pre_hooks
                or module._forward_hooks
                or module._backward_pre_hooks
                or module._backward_hooks
            ):
                return True
        return False

    def path(self, device: Optional[torch.device | str] = None) -> str:
        """Which path a forward on `device` (default: the parameters' device) takes, e.g.
        ``"network:cpu"`` (one op per direction), ``"network:cuda"`` (the fully fused kernel),
        ``"layers:triton"`` (layer by layer) or ``"modules:cpu"`` (the Sequential's modules one
        by one, while hooks are registered on them)."""
        first = self.layers[0].weight
        device = torch.device(device) if device is not None else first.device
        backend, fused = self._resolve(device, first.dtype)
        if self._hooked():
            return f"modules:{backend}"
        return f"{'network' if fused else 'layers'}:{backend}"

    def forward(self, input: Tensor) -> Tensor:
        if self._hooked():
            # The tutorial's network is the Sequential: a hook on it or on a slot must run, with
            # the slot's own input and output, so its modules are called one by one.
            return self.layers(input)
        linears = self._linears()
        weights = [linear.weight for linear in linears]
        biases = [linear.bias for linear in linears]
        dtype = _autocast.lower_precision_dtype(input)
        if dtype is not None:  # as torch.autocast runs the Sequential's Linears (fusedmlp/_autocast.py)
            device_type = input.device.type
            with _autocast.disabled(device_type):
                weights = [_autocast.cast(w, dtype, device_type) for w in weights]
                biases = [_autocast.cast(b, dtype, device_type) for b in biases]
                return self._forward(_autocast.cast(input, dtype, device_type), weights, biases)
        return self._forward(input, weights, biases)

    def _forward(self, input: Tensor, weights: list[Tensor], biases: list[Optional[Tensor]]) -> Tensor:
        first = weights[0]
        if input.dim() == 0 or input.shape[-1] != self.num_inputs:
            raise RuntimeError(
                f"FusedMLP: expected input with last dimension {self.num_inputs} (num_inputs), "
                f"got shape {list(input.shape)}"
            )
        if input.dtype != first.dtype:
            raise RuntimeError(f"FusedMLP: expected input of dtype {first.dtype} (the parameters'), got {input.dtype}")
        if input.device != first.device:
            raise RuntimeError(
                f"FusedMLP: expected input on {first.device} (the parameters' device), got {input.device}"
            )
        backend, fused = self._resolve(input.device, input.dtype)
        # Like nn.Linear: leading batch dims (or none, for a 1-D input) fold into the GEMMs' rows.
        # A 2-D input goes in as it is: a reshape would add an autograd node per step.
        batched = input.dim() == 2
        hidden = input if batched else input.reshape(-1, self.num_inputs)
        if fused:
            out = mlp(hidden, weights, biases, backend)
        else:
            for weight, bias in zip(weights[:-1], biases[:-1]):
                hidden = F.linear_relu(hidden, weight, bias, backend=backend)
            out = F.linear(hidden, weights[-1], biases[-1], backend=backend)
        return out if batched else out.reshape(*input.shape[:-1], self.num_outputs)

    def extra_repr(self) -> str:
        try:
            path = self.path()
        except RuntimeError as error:  # e.g. fuse_network=True on a backend without a network op
            path = f"unavailable ({error})"
        return f"backend={self._backend!r}, fuse_network={self.fuse_network}, path={path!r}"
