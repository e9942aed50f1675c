"""One ``torch.autograd.Function`` per fused op; each calls registered operators only."""

from fusedmlp.autograd.cross_entropy import CrossEntropyFunction
from fusedmlp.autograd.linear_relu import LinearReLUFunction

__all__ = ["CrossEntropyFunction", "LinearReLUFunction"]
