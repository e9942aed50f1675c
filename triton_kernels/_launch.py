"""What every Triton launcher here shares."""

from __future__ import annotations

import collections
import contextlib
import functools
from typing import Callable

import torch
import triton.language as tl
from torch import Tensor


def device_guard(t: Tensor):
    """Context for a launch on `t`'s tensors: Triton launches on torch's current device and
    stream, so the current device is made `t`'s (a no-op for CPU tensors, the interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


class LaunchTables:
    """The launchers' int64 tables (addresses, sizes) on the GPU, kept by content.

    A training loop launches with the same tables step after step: the same parameters, and
    activations and gradients that torch's caching allocator hands back at the same addresses.
    A table found here costs a hash of its entries; a new one costs a pinned host buffer and an
    asynchronous copy (on the H200's host ~80 us of the Triton step's host time per table
    under the profiler: bench/results/gpu/README.md). A table is kept per stream and only
    handed out for launches on the stream that copied it, so the copy is ordered before every
    kernel that reads it. While a CUDA graph is being captured nothing is kept or handed out
    (a table evicted later would be freed under the graph's replays): the launch copies its
    own, as before. On CPU (the interpreter) a table is a plain host tensor, made per launch:
    nothing to copy, and glibc's malloc, unlike the caching allocator, seldom hands a loop
    its addresses back. At most `capacity` tables, least recently used out first.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._tables: collections.OrderedDict[tuple, Tensor] = collections.OrderedDict()

    def get(self, entries: list[int], device: torch.device) -> Tensor:
        """`entries` as an int64 tensor on `device`, ready for a launch on its current stream
        (call it with `device` current: the capture test reads the current device's stream)."""
        if device.type != "cuda":
            return torch.tensor(entries, dtype=torch.int64)
        if torch.cuda.is_current_stream_capturing():
            return _copy_to_device(entries, device)
        stream = torch._C._cuda_getCurrentRawStream(device.index)
        return self.find_or_make((device.index, stream, *entries), lambda: _copy_to_device(entries, device))

    def find_or_make(self, key: tuple, make: Callable[[], Tensor]) -> Tensor:
        """The table kept under `key`, or a new one from `make()`, kept (evicting the least
        recently used beyond `capacity`)."""
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = make()
            if len(self._tables) > self.capacity:
                self._tables.popitem(last=False)
        else:
            self._tables.move_to_end(key)
        return table

    def clear(self) -> None:
        self._tables.clear()

    def __len__(self) -> int:
        return len(self._tables)


def _copy_to_device(entries: list[int], device: torch.device) -> Tensor:
    # Pinned memory makes the copy asynchronous: the host does not wait for the stream.
    return torch.tensor(entries, dtype=torch.int64).pin_memory().to(device, non_blocking=True)


LAUNCH_TABLES = LaunchTables()


@functools.cache
def _sm_count_of(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device) -> int:
    """The CUDA device's streaming multiprocessors, by which launchers size persistent and split
    grids on every call (cached: a properties lookup per launch is not free)."""
    return _sm_count_of(device.index if device.index is not None else torch.cuda.current_device())


# Host-side integer helpers. triton.cdiv and triton.next_power_of_2 are ConstexprFunctions in
# Triton 3.8: a call from Python goes through their constexpr unwrapping and costs about 3 us
# (measured here, against 0.04 us for the arithmetic), and the launchers make several per
# launch (six for a six-tensor SGD step).


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for non-negative a and positive b."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= n, for n >= 1."""
    return 1 << (n - 1).bit_length()


def acc_dtype(dtype: torch.dtype):
    """The Triton type the kernels accumulate in for `dtype`: float64 for float64, float32
    otherwise (float16/bfloat16 accumulate in float32, as torch's opmath type)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def aot_spec(
    kernel: str,
    fn,
    dtype: torch.dtype,
    variant: str,
    signature: dict,
    constexprs: dict,
    num_warps: int,
    config: dict,
    *,
    layout: str = "contiguous",
    attrs: dict | None = None,
    num_stages: int = 1,
    archs: tuple[int, ...] | None = None,
) -> dict:
    """One ahead-of-time compile job, as every module's aot_compile_specs yields them for the
    shared runner in tests/support.py (triton.compile(ASTSource(fn, signature, constexprs,
    attrs)) for sm_80 and sm_90, with ptxas spill reports). `archs` restricts a job to the
    compute capabilities (e.g. ``(80,)``) whose launches use its config; None means every one."""
    return {
        "kernel": kernel,
        "fn": fn,
        "dtype": str(dtype).replace("torch.", ""),
        "variant": variant,
        "layout": layout,
        "signature": signature,
        "constexprs": constexprs,
        "attrs": attrs or {},
        "num_warps": num_warps,
        "num_stages": num_stages,
        "config": config,
        "archs": archs,
    }
