"""The tutorial's training loop under DistributedDataParallel, one process per device.

Run: torchrun --nproc_per_node=2 examples/ddp_train.py
(gloo on CPU; NCCL with one GPU per process when there are enough GPUs.)
"""

import os

import torch
import torch.distributed as dist

# Imported before init_process_group on purpose. DDP's constructor imports it lazily, and
# imported after init, its functions' `group=group.WORLD` defaults hold the default process
# group forever: gloo's threads then outlive destroy_process_group() and the model, into
# interpreter shutdown, where a process can abort ("terminate called without an active
# exception", seen twice in CI). Imported first, the group dies with the model, before exit.
import torch.distributed.nn  # noqa: F401
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from toy_data import ToyDataset, X_test, X_train, compute_accuracy, y_test, y_train
from training_parts import SGD, cross_entropy

import fusedmlp


def main():
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= int(os.environ["LOCAL_WORLD_SIZE"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(123)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = fusedmlp.FusedMLP(num_inputs=2, num_outputs=2).to(device)
    model = DDP(model, device_ids=[local_rank] if use_cuda else None)
    optimizer = SGD(model.parameters(), lr=0.5)

    dataset = ToyDataset(X_train, y_train)
    # Every rank sees its own shard of each epoch.
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=123)
    train_loader = DataLoader(dataset, batch_size=2, shuffle=False, sampler=sampler, drop_last=True)

    num_epochs = 3
    for epoch in range(num_epochs):
        sampler.set_epoch(epoch)
        model.train()
        for features, labels in train_loader:
            features, labels = features.to(device), labels.to(device)
            loss = cross_entropy(model(features), labels)
            optimizer.zero_grad()
            loss.backward()  # DDP averages the gradients across ranks here
            optimizer.step()
            print(f"[rank {rank}] Epoch: {epoch + 1:03d}/{num_epochs:03d} | Train Loss: {loss:.2f}")

    # The replicas stay identical: check it, then evaluate on rank 0.
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world_size)]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(gathered[0], g) for g in gathered), "replicas diverged"
    if rank == 0:
        train = compute_accuracy(model.module, DataLoader(dataset, batch_size=2), device)
        test = compute_accuracy(model.module, DataLoader(ToyDataset(X_test, y_test), batch_size=2), device)
        print(f"world size {world_size} | replicas identical | train accuracy: {train:.2f} | test accuracy: {test:.2f}")
    # Tear down together, so no rank closes its gloo connections while rank 0 still evaluates.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
