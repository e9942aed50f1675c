"""Test setup shared by every test module.

Without a GPU, Triton kernels run on CPU tensors under the Triton interpreter, which must be
switched on before Triton (and so fusedmlp) is imported: that happens here, first.
"""

import os
import sys
import warnings

import torch

if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        warnings.warn("triton was imported before tests/conftest.py could enable TRITON_INTERPRET", stacklevel=1)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fusedmlp  # noqa: E402,F401


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device (run bench/gpu_check.sh on a GPU machine)")
    if not torch.cuda.is_available():
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip_gpu)
