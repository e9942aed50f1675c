"""Drop-in ``nn.Module``s."""

from fusedmlp.nn.linear import FusedLinear, FusedLinearReLU
from fusedmlp.nn.loss import FusedCrossEntropyLoss

__all__ = ["FusedCrossEntropyLoss", "FusedLinear", "FusedLinearReLU"]
