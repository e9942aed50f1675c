"""convert(): swap a model's Linear(+ReLU) layers for fused ones, in place, keeping its Parameters.

The fused layers take over the very same Parameter objects, so an optimizer built before the
conversion keeps updating the model (its state is keyed by Parameter), a DistributedDataParallel
wrapper keeps its gradient hooks, and the state_dict keys and values do not change.
"""

from __future__ import annotations

from torch import nn

from fusedmlp._backend import check_backend_name
from fusedmlp.nn.linear import FusedLinear, FusedLinearReLU

__all__ = ["FusedReLUSlot", "convert"]


class FusedReLUSlot(nn.Identity):
    """Stands where an ``nn.ReLU`` was after ``convert`` fused it into the preceding
    ``FusedLinearReLU``: keeps the Sequential's indices (and so its state_dict keys) unchanged."""

    def extra_repr(self) -> str:
        return "ReLU fused into the previous layer"


def _fused_from(linear: nn.Linear, cls: type[FusedLinear], backend: str) -> FusedLinear:
    # Built on the meta device so construction neither allocates nor draws from the RNG; the
    # real Parameters are then handed over as they are.
    fused = cls(
        linear.in_features,
        linear.out_features,
        linear.bias is not None,
        backend=backend,
        device="meta",
        dtype=linear.weight.dtype,
    )
    fused.weight = linear.weight
    fused.bias = linear.bias
    fused.train(linear.training)
    return fused


# The hook tables of an nn.Module. A replacement module would start with empty ones.
_HOOK_TABLES = (
    "_forward_pre_hooks",
    "_forward_hooks",
    "_backward_pre_hooks",
    "_backward_hooks",
    "_state_dict_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def _has_hooks(module: nn.Module) -> bool:
    return any(getattr(module, table, None) for table in _HOOK_TABLES)


def _is_plain_linear(module: nn.Module) -> bool:
    # Exactly nn.Linear: subclasses (already fused layers, quantization or attention
    # projections) may rely on behaviour of their own and are left alone, and so is a Linear
    # with hooks (a user's, or weight_norm's pre-hook), which a replacement would drop.
    return type(module) is nn.Linear and not _has_hooks(module)


def convert(module: nn.Module, *, backend: str = "auto") -> nn.Module:
    """Replaces, recursively and in place, every ``nn.Linear`` directly followed by an ``nn.ReLU``
    in an ``nn.Sequential`` with a ``FusedLinearReLU`` (the ReLU slot becomes a parameterless
    ``FusedReLUSlot``), and every other ``nn.Linear`` with a ``FusedLinear``. The fused layers
    share the original Parameters. Other modules are left alone, and so are modules with hooks
    (a Linear with a forward hook, or weight_norm's pre-hook, stays an ``nn.Linear``; a ReLU
    with hooks stays, its Linear becoming a ``FusedLinear``), so every hook keeps running on
    what it saw before. Returns ``module`` (or, when ``module`` itself is an ``nn.Linear``, its
    ``FusedLinear`` replacement)."""
    check_backend_name(backend)
    if _is_plain_linear(module):
        return _fused_from(module, FusedLinear, backend)
    _convert_children(module, backend)
    return module


def _convert_children(module: nn.Module, backend: str) -> None:
    names = list(module._modules)
    for index, name in enumerate(names):
        child = module._modules[name]
        if child is None:
            continue
        if _is_plain_linear(child):
            following = module._modules[names[index + 1]] if index + 1 < len(names) else None
            if isinstance(module, nn.Sequential) and type(following) is nn.ReLU and not _has_hooks(following):
                module._modules[name] = _fused_from(child, FusedLinearReLU, backend)
                module._modules[names[index + 1]] = FusedReLUSlot().train(following.training)
            else:
                module._modules[name] = _fused_from(child, FusedLinear, backend)
        else:
            _convert_children(child, backend)
