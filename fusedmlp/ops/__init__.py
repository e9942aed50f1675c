"""Registered operators: the only way the autograd.Functions reach a kernel.

C++ kernels are ``torch.ops.fusedmlp.*`` (schemas in csrc/fusedmlp.cpp); this package adds
their fakes, registers the Triton kernels as ops defined from the same schemas
(``_triton_registration.define_triton_op``: why not ``torch.library.custom_op``), and keeps the
plain-PyTorch reference ("torch" backend) beside them, one module per op.
"""
