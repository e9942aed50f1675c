"""Registered operators: the only way the autograd.Functions reach a kernel.

C++ kernels are ``torch.ops.fusedmlp.*`` (schemas in csrc/fusedmlp.cpp); this package adds
their fakes, registers the Triton kernels as ``torch.library.custom_op``s, and keeps the
plain-PyTorch reference ("torch" backend) beside them, one module per op.
"""
