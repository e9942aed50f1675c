"""Optimizers whose step is one fused kernel launch per (device, dtype) group."""

from fusedmlp.optim.sgd import FusedSGD

__all__ = ["FusedSGD"]
