"""One ``torch.autograd.Function`` per fused op; each calls registered operators only."""

from fusedmlp.autograd.cross_entropy import CrossEntropyFunction
from fusedmlp.autograd.linear_relu import LinearReLUFunction
from fusedmlp.autograd.mlp import MLPFunction

__all__ = ["CrossEntropyFunction", "LinearReLUFunction", "MLPFunction"]
