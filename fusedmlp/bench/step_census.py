"""What one training step dispatches, eager against fusedmlp, counted without a GPU:
`python -m fusedmlp.bench.step_census`.

Counting the floor before timing: the step runs on fake tensors (shapes only, no memory) under
a dispatch mode that records every op that does work (views, metadata queries and bare
allocations are not counted) with the bytes of its tensor arguments and results. That gives,
per step, the kernel launches (on a GPU each op here is one launch or, for cuBLAS and fusedmlp's
MLP backward, about one) and the bytes the ops touch if nothing stays in cache, which is the
memory floor of a large batch.

The fused step is FusedMLP + fusedmlp.functional.cross_entropy + FusedSGD, by default on the C++
ops (backend "cpu"; "triton" under TRITON_INTERPRET=1). Fake tensors take the same path through
them as CUDA tensors do, with one difference: the loss backward's scale shows as `aten.mul` (on a
GPU, `scale_grad_unless_one_`, which exits at once for `loss.backward()`'s 1, so its bytes are
not moved there). tests/test_bench_steps.py pins the fused step's op list per backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import fusedmlp
from fusedmlp.bench.mlp import _sequential

# Ops that launch nothing: metadata, views, allocations without a fill.
_NO_WORK = {
    "prim.device.default",
    "aten.detach.default",
    "aten.t.default",
    "aten.view.default",
    "aten.reshape.default",
    "aten.empty.memory_format",
    "aten.empty_strided.default",
}

NETWORKS = [(2, 30, 20, 2), (50, 30, 20, 3), (64, 64, 64, 64, 64)]


class _OpLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = str(func)
        if name not in _NO_WORK and not name.startswith("profiler."):
            tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            self.ops.append((name, sum(t.numel() * t.element_size() for t in tensors)))
        return out


def step_ops(provider: str, widths: tuple[int, ...], batch: int, backend: str = "cpu") -> list[tuple[str, int]]:
    """(op, bytes) for one steady-state training step of `provider` ("eager": nn.Sequential,
    F.cross_entropy, torch.optim.SGD with foreach as on a GPU; "fusedmlp": fusedmlp's `backend`,
    by default the C++ ops, whose device path fake tensors take), fp32."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.randn(batch, widths[0])
        y = torch.randint(0, widths[-1], (batch,))
        if provider == "eager":
            model: torch.nn.Module = _sequential(widths)
            optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, foreach=True)
            loss_fn = F.cross_entropy
        elif provider == "fusedmlp":
            model = fusedmlp.FusedMLP(widths[0], widths[-1], widths[1:-1], backend=backend)
            optimizer = fusedmlp.FusedSGD(model.parameters(), backend=backend, lr=0.01, momentum=0.9)

            def loss_fn(logits, target):
                return fusedmlp.functional.cross_entropy(logits, target, backend=backend)
        else:
            raise ValueError(f"provider must be 'eager' or 'fusedmlp', got {provider!r}")

        def step() -> None:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()

        for _ in range(2):  # past the first step's state creation
            step()
        log = _OpLog()
        with log:
            step()
    return log.ops


def main() -> None:
    batch = 1 << 20
    print(f"one fp32 training step at batch {batch}: ops that do work, and bytes per row they touch")
    for widths in NETWORKS:
        eager, fused = step_ops("eager", widths, batch), step_ops("fusedmlp", widths, batch)
        eager_bytes = sum(b for _, b in eager) / batch
        fused_bytes = sum(b for name, b in fused if name != "aten.mul.Tensor") / batch
        print(
            f"  {'-'.join(map(str, widths)):<16} eager {len(eager):2d} ops {eager_bytes:6.0f} B/row | "
            f"fusedmlp {len(fused):2d} ops {fused_bytes:6.0f} B/row | bytes ratio {eager_bytes / fused_bytes:.1f}x"
        )
        print("    fusedmlp:", ", ".join(name.split(".")[1] for name, _ in fused))


if __name__ == "__main__":
    main()
