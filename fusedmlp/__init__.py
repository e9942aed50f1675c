"""fusedmlp: fused Linear+ReLU, softmax-cross-entropy and SGD kernels for fast MLP training.

Backends: "cuda" (CUDA C++), "triton", "cpu" (C++), "torch" (plain PyTorch reference) and
"auto" (the best one built for the tensor's device). See ``available_backends``.
"""

from fusedmlp import functional, optim
from fusedmlp import ops as _ops  # noqa: F401
from fusedmlp._backend import BACKENDS, available_backends
from fusedmlp.autograd import CrossEntropyFunction, LinearReLUFunction, MLPFunction
from fusedmlp.convert import convert
from fusedmlp.nn import FusedCrossEntropyLoss, FusedLinear, FusedLinearReLU, FusedMLP
from fusedmlp.ops import cross_entropy as _cross_entropy_ops  # noqa: F401  (registers fakes and Triton ops)
from fusedmlp.ops import linear_relu as _linear_relu_ops  # noqa: F401  (registers fakes and Triton ops)
from fusedmlp.ops import mlp as _mlp_ops  # noqa: F401  (registers the whole-network fakes)
from fusedmlp.ops import sgd as _sgd_ops  # noqa: F401  (registers fakes and Triton ops)
from fusedmlp.optim import FusedSGD

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "CrossEntropyFunction",
    "FusedCrossEntropyLoss",
    "FusedLinear",
    "FusedLinearReLU",
    "FusedMLP",
    "FusedSGD",
    "LinearReLUFunction",
    "MLPFunction",
    "available_backends",
    "convert",
    "functional",
    "optim",
]
