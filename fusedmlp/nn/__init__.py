"""Drop-in ``nn.Module``s."""

from fusedmlp.nn.linear import FusedLinear, FusedLinearReLU

__all__ = ["FusedLinear", "FusedLinearReLU"]
