"""One ``torch.autograd.Function`` per fused op; each calls registered operators only."""

from fusedmlp.autograd.linear_relu import LinearReLUFunction

__all__ = ["LinearReLUFunction"]
