"""Triton kernels and their launchers, one module per op. Installed as
``fusedmlp.triton_kernels``; importing a module here needs Triton, and on CPU tensors the
Triton interpreter (``TRITON_INTERPRET=1`` set before import)."""
