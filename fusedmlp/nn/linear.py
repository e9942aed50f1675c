"""FusedLinearReLU and FusedLinear: ``nn.Linear`` (+ ``nn.ReLU``) on fused kernels.

Both subclass ``nn.Linear``: same Parameters, same init, same state_dict, so a checkpoint of
``nn.Linear`` loads into them and back, and ``isinstance(m, nn.Linear)`` still holds.
"""

from __future__ import annotations

from torch import Tensor, nn

from fusedmlp import functional as F
from fusedmlp._backend import check_backend_name


class FusedLinear(nn.Linear):
    """``nn.Linear`` computed by fusedmlp's kernels (no activation; for output layers)."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, *, backend: str = "auto", device=None, dtype=None
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.backend = check_backend_name(backend)

    def forward(self, input: Tensor) -> Tensor:
        return F.linear(input, self.weight, self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


class FusedLinearReLU(FusedLinear):
    """``nn.Sequential(nn.Linear(in, out), nn.ReLU())`` as one fused layer."""

    def forward(self, input: Tensor) -> Tensor:
        return F.linear_relu(input, self.weight, self.bias, backend=self.backend)
