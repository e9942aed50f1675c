"""Drop-in ``nn.Module``s."""

from fusedmlp.nn.linear import FusedLinear, FusedLinearReLU
from fusedmlp.nn.mlp import FusedMLP

__all__ = ["FusedLinear", "FusedLinearReLU", "FusedMLP"]
