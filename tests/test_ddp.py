"""FusedMLP under DistributedDataParallel: DDP on shards equals one process on the full batch,
with no_sync accumulation, gradient_as_bucket_view and static_graph. On CPU with gloo (2
processes); on a GPU with gloo over CUDA tensors (2 processes sharing the GPU) and with NCCL
(1 process: NCCL refuses two ranks on one GPU, so this checks DDP's NCCL path over the CUDA
kernels, not the averaging)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist

# Before any init_process_group (workers import this module first): see examples/ddp_train.py.
import torch.distributed.nn  # noqa: F401
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import fusedmlp
from fusedmlp import FusedMLP

pytestmark = pytest.mark.slow

# name: (process-group backend, device, world size)
SETUPS = {"gloo-cpu": ("gloo", "cpu", 2), "gloo-cuda": ("gloo", "cuda", 2), "nccl-cuda": ("nccl", "cuda", 1)}
STEPS = 3
# The loss and optimizer in one place, so fusedmlp's fused ones can stand in for torch's.
cross_entropy = fusedmlp.functional.cross_entropy
SGD = fusedmlp.FusedSGD
CONFIGS = {
    "network_path": dict(fuse_network=None, no_sync=False, ddp=dict()),
    "layers_path": dict(fuse_network=False, no_sync=False, ddp=dict()),
    "no_sync": dict(fuse_network=None, no_sync=True, ddp=dict()),
    "bucket_view_static_graph": dict(
        fuse_network=None, no_sync=False, ddp=dict(gradient_as_bucket_view=True, static_graph=True)
    ),
    "no_sync_bucket_view": dict(fuse_network=None, no_sync=True, ddp=dict(gradient_as_bucket_view=True)),
}


def make_model(fuse_network, device):
    torch.manual_seed(0)
    return FusedMLP(5, 3, (6, 4), fuse_network=fuse_network).to(device)


def full_batch(device):
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 5, generator=generator), torch.randint(0, 3, (8,), generator=generator)
    return x.to(device), y.to(device)


def make_optimizer(params):
    return SGD(params, lr=0.1, momentum=0.9)


def _worker(rank, port, result_path, setup):
    backend, device, world_size = SETUPS[setup]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, rank=rank, world_size=world_size)
    x, y = full_batch(device)
    shard = slice(rank * len(x) // world_size, (rank + 1) * len(x) // world_size)
    x, y = x[shard], y[shard]
    results = {}
    for name, config in CONFIGS.items():
        model = make_model(config["fuse_network"], device)
        ddp = DDP(model, **config["ddp"])
        optimizer = make_optimizer(ddp.parameters())
        grads_present = []
        for _ in range(STEPS):
            optimizer.zero_grad()
            if config["no_sync"]:  # two micro-batches, gradients synchronized only on the second
                half = len(x) // 2
                with ddp.no_sync():
                    (cross_entropy(ddp(x[:half]), y[:half]) / 2).backward()
                (cross_entropy(ddp(x[half:]), y[half:]) / 2).backward()
            else:
                cross_entropy(ddp(x), y).backward()
            grads_present.append(all(p.grad is not None for p in ddp.parameters()))
            optimizer.step()
        results[name] = dict(
            params=[p.detach().cpu() for p in model.parameters()], grads_present=grads_present, path=model.path()
        )
    dist.barrier()
    dist.destroy_process_group()
    del ddp, model, optimizer
    results["threads_after_teardown"] = _thread_names()
    torch.save(results, f"{result_path}.{rank}")


def _thread_names() -> list[str]:
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):
        return []
    return sorted(open(f"{tasks}/{task}/comm").read().strip() for task in os.listdir(tasks))


_RUNS: dict[str, list[dict]] = {}


def ddp_results(setup, tmp_path_factory):
    """Every rank's results of every config, for one setup (spawned once per module)."""
    if setup not in _RUNS:
        if SETUPS[setup][1] == "cuda" and not torch.cuda.is_available():
            pytest.skip("needs a CUDA device")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        world_size = SETUPS[setup][2]
        result_path = str(tmp_path_factory.mktemp(f"ddp-{setup}") / "results")
        mp.spawn(_worker, args=(port, result_path, setup), nprocs=world_size, join=True)
        _RUNS[setup] = [torch.load(f"{result_path}.{rank}", weights_only=True) for rank in range(world_size)]
    return _RUNS[setup]


def single_process_reference(fuse_network, device):
    model = make_model(fuse_network, device)
    optimizer = make_optimizer(model.parameters())
    x, y = full_batch(device)
    for _ in range(STEPS):
        optimizer.zero_grad()
        cross_entropy(model(x), y).backward()
        optimizer.step()
    return [p.detach().cpu() for p in model.parameters()]


@pytest.mark.parametrize(
    "setup", [pytest.param(name, marks=[pytest.mark.gpu] if s[1] == "cuda" else []) for name, s in SETUPS.items()]
)
@pytest.mark.parametrize("name", list(CONFIGS))
def test_ddp_on_shards_equals_full_batch(setup, name, tmp_path_factory):
    device = SETUPS[setup][1]
    results = ddp_results(setup, tmp_path_factory)
    config = CONFIGS[name]
    reference = single_process_reference(config["fuse_network"], device)
    expected_path = f"layers:{device}" if config["fuse_network"] is False else f"network:{device}"
    for rank_results in results:
        result = rank_results[name]
        assert result["path"] == expected_path
        assert all(result["grads_present"])
        for got, expected in zip(result["params"], reference):
            torch.testing.assert_close(got, expected)
    # The replicas are identical, bit for bit.
    for a, b in zip(results[0][name]["params"], results[-1][name]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_process_group_threads_end_before_interpreter_shutdown(tmp_path_factory):
    """After destroy_process_group() and the DDP model gone, gloo's threads are gone too. Threads
    still running into interpreter shutdown can abort a rank at exit ("terminate called without
    an active exception", twice in CI): torch.distributed.nn imported after init_process_group
    (as DDP's constructor does) pins the default group in its functions' defaults; this module
    imports it first, as examples/ddp_train.py does. Checks the 2-process gloo run on CPU."""
    for rank_results in ddp_results("gloo-cpu", tmp_path_factory):
        names = rank_results["threads_after_teardown"]
        if not names:
            pytest.skip("no /proc/self/task here to list a process's threads")
        assert not [name for name in names if "gloo" in name], names
