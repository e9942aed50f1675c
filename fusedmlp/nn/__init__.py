"""Drop-in ``nn.Module``s."""

from fusedmlp.nn.linear import FusedLinear, FusedLinearReLU
from fusedmlp.nn.loss import FusedCrossEntropyLoss
from fusedmlp.nn.mlp import FusedMLP

__all__ = ["FusedCrossEntropyLoss", "FusedLinear", "FusedLinearReLU", "FusedMLP"]
