"""FusedMLP under DistributedDataParallel (gloo, 2 CPU processes): DDP on shards equals one
process on the full batch, with no_sync accumulation, gradient_as_bucket_view and static_graph."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

import fusedmlp
from fusedmlp import FusedMLP

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
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


def make_model(fuse_network):
    torch.manual_seed(0)
    return FusedMLP(5, 3, (6, 4), fuse_network=fuse_network)


def full_batch():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(8, 5, generator=generator), torch.randint(0, 3, (8,), generator=generator)


def make_optimizer(params):
    return SGD(params, lr=0.1, momentum=0.9)


def _worker(rank, port, result_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    x, y = full_batch()
    shard = slice(rank * len(x) // WORLD_SIZE, (rank + 1) * len(x) // WORLD_SIZE)
    x, y = x[shard], y[shard]
    results = {}
    for name, config in CONFIGS.items():
        model = make_model(config["fuse_network"])
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
            params=[p.detach().clone() for p in model.parameters()], grads_present=grads_present, path=model.path()
        )
    torch.save(results, f"{result_path}.{rank}")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result_path = str(tmp_path_factory.mktemp("ddp") / "results")
    mp.spawn(_worker, args=(port, result_path), nprocs=WORLD_SIZE, join=True)
    return [torch.load(f"{result_path}.{rank}", weights_only=True) for rank in range(WORLD_SIZE)]


def single_process_reference(fuse_network):
    model = make_model(fuse_network)
    optimizer = make_optimizer(model.parameters())
    x, y = full_batch()
    for _ in range(STEPS):
        optimizer.zero_grad()
        cross_entropy(model(x), y).backward()
        optimizer.step()
    return list(model.parameters())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_ddp_on_shards_equals_full_batch(ddp_results, name):
    config = CONFIGS[name]
    reference = single_process_reference(config["fuse_network"])
    expected_path = "layers:cpu" if config["fuse_network"] is False else "network:cpu"
    for rank_results in ddp_results:
        result = rank_results[name]
        assert result["path"] == expected_path
        assert all(result["grads_present"])
        for got, expected in zip(result["params"], reference):
            torch.testing.assert_close(got, expected.detach())
    # The replicas are identical, bit for bit.
    for a, b in zip(ddp_results[0][name]["params"], ddp_results[1][name]["params"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
