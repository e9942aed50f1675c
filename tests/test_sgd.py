"""FusedSGD and the fused_sgd_ op on every backend that runs here, against torch.optim.SGD.

The reference is torch.optim.SGD(foreach=False) (torch's single-tensor loop) fed the same
parameters and gradients. Triton runs under the interpreter on CPU (tests/conftest.py); its
BLOCK there is 32, so sizes 31/32/33 are BLOCK-1/BLOCK/BLOCK+1.
"""

from __future__ import annotations

import collections

import pytest
import torch
from support import AOT_ARCHS, backend_device_params, close_to_reference, require, run_triton_aot

import fusedmlp
from fusedmlp.ops import sgd as sgd_ops

BACKEND_DEVICE = backend_device_params()

# (5, 3) and (33,) make several blocks/chunks; (0,) is a zero-size parameter; the last one
# is non-contiguous (a transposed leaf).
SHAPES = [(5, 3), (7,), (0,), (31,), (32,), (33,)]

OPTIONS = {
    "default": dict(lr=0.1),
    "lr_tensor": dict(lr=torch.tensor(0.05)),
    "weight_decay": dict(lr=0.1, weight_decay=0.3),
    "momentum": dict(lr=0.1, momentum=0.9),
    "dampening": dict(lr=0.1, momentum=0.9, dampening=0.25),
    "nesterov": dict(lr=0.1, momentum=0.8, nesterov=True),
    "maximize": dict(lr=0.1, maximize=True),
    "momentum_weight_decay": dict(lr=0.1, momentum=0.9, weight_decay=0.1),
    "everything": dict(lr=torch.tensor(0.02), momentum=0.7, weight_decay=0.05, nesterov=True, maximize=True),
}


def make_params(device, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype) for s in SHAPES]
    params.append(torch.randn(3, 5, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype).t())
    return [p.requires_grad_() for p in params]


def clone_params(params):
    return [p.detach().clone(memory_format=torch.preserve_format).requires_grad_() for p in params]


def make_grads(params, step):
    gen = torch.Generator().manual_seed(1000 + step)
    grads = []
    for p in params:
        g = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(device=p.device, dtype=p.dtype)
        grads.append(g)
    return grads


def run(optimizer, params, steps, start=0):
    for step in range(start, start + steps):
        for p, g in zip(params, make_grads(params, step)):
            p.grad = g.clone()
        optimizer.step()


def fused(params, backend, **options):
    return fusedmlp.FusedSGD(params, backend=backend, **options)


def reference(params, **options):
    return torch.optim.SGD(params, foreach=False, **options)


def copy_options(options):
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in options.items()}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_trajectory_matches_torch(backend, device, dtype, name):
    require(backend, device)
    options = OPTIONS[name]
    ours = make_params(device, dtype)
    theirs = clone_params(ours)
    opt = fused(ours, backend, **copy_options(options))
    ref = reference(theirs, **copy_options(options))
    run(opt, ours, 4)
    run(ref, theirs, 4)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
        assert a.stride() == b.stride()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(opt.state[a].get("momentum_buffer"), ref.state[b].get("momentum_buffer"))


def _small_sizes_with_empties(count: int) -> list[int]:
    gen = torch.Generator().manual_seed(5)
    sizes = [0, 0, *torch.randint(0, 101, (count - 4,), generator=gen).tolist(), 0, 0]
    sizes[10:13] = [0, 0, 0]
    return sizes


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize(
    "sizes",
    [_small_sizes_with_empties(41), _small_sizes_with_empties(19), [10000, 0, 4096, 4097, 1, 8191]],
    ids=["41-small", "19-small", "several-blocks"],
)
def test_every_block_finds_its_tensor(backend, device, sizes):
    """One launch for a group of tensors, and every block of it finds its tensor (the kernels
    search the tensors' first blocks): 0 to 100 elements with empty tensors first, last and in
    runs (41 of them: the CUDA kernel reads its table from device memory; 19: from its
    arguments, csrc/cuda/sgd.cu), and tensors of several blocks (4096 elements each in the CUDA
    kernel) around the block edges."""
    require(backend, device)
    gen = torch.Generator().manual_seed(6)
    ours = [torch.randn(n, generator=gen, dtype=torch.float64).to(device).requires_grad_() for n in sizes]
    theirs = clone_params(ours)
    options = dict(lr=0.1, momentum=0.9, weight_decay=0.01)
    opt, ref = fused(ours, backend, **options), reference(theirs, **options)
    run(opt, ours, 3)
    run(ref, theirs, 3)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_updates_in_fp32(backend, device, dtype):
    require(backend, device)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip(
            "the Triton interpreter keeps bf16 as raw bits and does not round fp32->bf16 to nearest; "
            "bf16 is covered on GPU and by the AOT compile"
        )
    options = dict(lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)
    ours = make_params(device, dtype)
    torch_lowp = clone_params(ours)
    fp32 = [p.detach().float().requires_grad_() for p in ours]
    opt = fused(ours, backend, **options)
    ref_lowp, ref_fp32 = reference(torch_lowp, **options), reference(fp32, **options)
    for step in range(3):
        grads = make_grads(ours, step)
        for a, b, c, g in zip(ours, torch_lowp, fp32, grads):
            a.grad, b.grad, c.grad = g.clone(), g.clone(), g.float()
        opt.step(), ref_lowp.step(), ref_fp32.step()
    for a, b, c in zip(ours, torch_lowp, fp32):
        assert a.dtype == dtype
        close_to_reference(a, c.detach(), b.detach())


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_canary_views_are_untouched(backend, device):
    require(backend, device)
    storage = torch.full((200,), 7.0, dtype=torch.float32, device=device)
    views = [storage[5:38], storage[50:81], storage[100:100]]  # 33, 31 and 0 elements
    for v in views:
        v.grad = torch.ones_like(v)
    opt = fused(views, backend, lr=0.5, momentum=0.9)
    opt.step()
    opt.step()
    outside = torch.ones(200, dtype=torch.bool, device=device)
    outside[5:38] = outside[50:81] = False
    assert (storage[outside] == 7.0).all()
    assert (storage[~outside] == 7.0 - 0.5 - 0.5 * 1.9).all()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_step_is_seen_by_autograd_as_in_place(backend, device, momentum):
    """A step bumps the version counter of every param (once, as torch.optim.SGD does) and
    momentum buffer, so a graph that saved a param before the step refuses to backpropagate
    through the stepped values, with torch's own error. The reference runs the same checks."""
    require(backend, device)
    for optimizer in (
        lambda p: reference(p, lr=0.1, momentum=momentum),
        lambda p: fused(p, backend, lr=0.1, momentum=momentum),
    ):
        weight = torch.randn(4, 3, device=device, requires_grad=True)
        x = torch.randn(2, 4, device=device, requires_grad=True)
        weight.grad = torch.ones_like(weight)
        opt = optimizer([weight])
        loss = (x @ weight).sum()  # saves weight for x's gradient
        before = weight._version
        opt.step()
        assert weight._version == before + 1
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
        if momentum:
            buffer = opt.state[weight]["momentum_buffer"]
            before = buffer._version
            opt.step()
            assert buffer._version > before


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_param_without_grad_two_groups(backend, device):
    require(backend, device)
    groups_options = [dict(momentum=0.9, dampening=0.1), dict(lr=0.3, weight_decay=0.2, maximize=True)]

    def build(params, factory):
        return factory(
            [dict(params=params[:3], **groups_options[0]), dict(params=params[3:], **groups_options[1])], lr=0.05
        )

    ours = make_params(device, torch.float64)
    theirs = clone_params(ours)
    opt = build(ours, lambda groups, **kw: fused(groups, backend, **kw))
    ref = build(theirs, reference)
    for step in range(3):
        for i, (a, b, g) in enumerate(zip(ours, theirs, make_grads(ours, step))):
            # param 1 never gets a grad; param 4 only from step 1 on (its buffer starts then)
            if i == 1 or (i == 4 and step == 0):
                a.grad = b.grad = None
            else:
                a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
    assert ours[1] not in opt.state
    torch.testing.assert_close(ours[1], make_params(device, torch.float64)[1])


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_grads_disappearing_after_steady_state(backend, device):
    # FusedSGD reuses its grouping while every param has a grad; a missing grad must fall
    # back to the full path, and a param whose grad returns keeps its buffer.
    require(backend, device)
    options = dict(lr=0.1, momentum=0.9, nesterov=True)
    ours = make_params(device, torch.float64)
    theirs = clone_params(ours)
    opt, ref = fused(ours, backend, **options), reference(theirs, **options)
    for step in range(5):
        for i, (a, b, g) in enumerate(zip(ours, theirs, make_grads(ours, step))):
            missing = step == 2 and i in (0, 3)
            a.grad, b.grad = (None, None) if missing else (g.clone(), g.clone())
        opt.step()
        ref.step()
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_first_step_sets_buffer_to_grad(backend, device):
    require(backend, device)
    params = make_params(device, torch.float64)
    before = clone_params(params)
    opt = fused(params, backend, lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.2)
    grads = make_grads(params, 0)
    for p, g in zip(params, grads):
        p.grad = g
    opt.step()
    for p, p0, g in zip(params, before, grads):
        # torch: buf = clone(grad after weight decay); dampening does not apply to the first step
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], g + 0.2 * p0.detach())


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_no_momentum_keeps_no_state(backend, device):
    require(backend, device)
    params = make_params(device, torch.float32)
    opt = fused(params, backend, lr=0.1, weight_decay=0.1)
    run(opt, params, 2)
    assert len(opt.state) == 0
    assert opt.state_dict()["state"] == {}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_nan_grads_propagate(backend, device):
    require(backend, device)
    ours = make_params(device, torch.float32)
    theirs = clone_params(ours)
    opt, ref = fused(ours, backend, lr=0.1, momentum=0.9), reference(theirs, lr=0.1, momentum=0.9)
    for step in range(2):
        for a, b, g in zip(ours, theirs, make_grads(ours, step)):
            if g.numel():
                g.view(-1)[0] = float("nan")
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, equal_nan=True)
        if a.numel():
            assert a.isnan().sum() == 1


def _reset_buffer(optimizer, params):
    optimizer.state[params[2]]["momentum_buffer"] = torch.zeros_like(params[2])


def _swap_param(optimizer, params):
    params[0] = params[0].detach().clone().requires_grad_()
    optimizer.param_groups[0]["params"][0] = params[0]


# Ways a training script resets or edits the optimizer between steps; torch.optim.SGD reads its
# state and groups at every step, so FusedSGD's reuse of the last step's plan must notice each.
STATE_EDITS = {
    "state.clear()": lambda optimizer, params: optimizer.state.clear(),
    "new state dict": lambda optimizer, params: setattr(optimizer, "state", collections.defaultdict(dict)),
    "a param's state replaced": lambda optimizer, params: optimizer.state.__setitem__(params[0], {}),
    "a buffer deleted": lambda optimizer, params: optimizer.state[params[1]].pop("momentum_buffer"),
    "a buffer replaced": _reset_buffer,
    "momentum turned off": lambda optimizer, params: optimizer.param_groups[1].update(momentum=0.0),
    "own state_dict loaded": lambda optimizer, params: optimizer.load_state_dict(optimizer.state_dict()),
    "a param swapped in its group": _swap_param,
}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("edit", list(STATE_EDITS))
def test_state_edits_between_steps_match_torch(backend, device, edit):
    require(backend, device)
    finals = []
    for make in (reference, lambda groups, **o: fused(groups, backend, **o)):
        torch.manual_seed(0)
        params = [torch.randn(5, device=device, requires_grad=True) for _ in range(3)]
        optimizer = make([{"params": params[:2]}, {"params": params[2:]}], lr=0.1, momentum=0.9)
        for step in range(5):
            for k, p in enumerate(params):
                p.grad = torch.full_like(p, float(step + 1) * (k + 1))
            optimizer.step()
            if step == 1:
                STATE_EDITS[edit](optimizer, params)
        finals.append(torch.cat([p.detach() for p in params]))
    torch.testing.assert_close(finals[1], finals[0])


def _add_group(optimizer, params, step):
    if step == 2:
        optimizer.add_param_group({"params": params[3:], "lr": 0.05})


def _edit_hyperparameters(optimizer, params, step):
    if step == 3:
        optimizer.param_groups[0].update(weight_decay=0.1, maximize=True)
    if step == 5:
        optimizer.param_groups[1].update(nesterov=True, dampening=0.0)


# What a training loop changes in the groups as it goes: torch's LR schedulers write lr (and
# OneCycleLR / CyclicLR momentum) every step; groups and options change mid-run.
# name: (scheduler factory or None, edit(optimizer, params, step) or None)
GROUP_EDITS = {
    "StepLR": (lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5), None),
    "OneCycleLR (cycles momentum)": (lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.5, total_steps=10), None),
    "CyclicLR (cycles momentum)": (lambda o: torch.optim.lr_scheduler.CyclicLR(o, 0.01, 0.3, step_size_up=2), None),
    "CosineAnnealingWarmRestarts": (lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, 3), None),
    "add_param_group": (None, _add_group),
    "options edited": (None, _edit_hyperparameters),
}


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("edit", list(GROUP_EDITS))
def test_schedulers_and_group_edits_match_torch(backend, device, edit):
    require(backend, device)
    make_scheduler, edit_groups = GROUP_EDITS[edit]
    finals = []
    for make in (reference, lambda groups, **o: fused(groups, backend, **o)):
        params = make_params(device, torch.float64)
        optimizer = make([{"params": params[:2]}, {"params": params[2:3]}], lr=0.1, momentum=0.9)
        scheduler = make_scheduler(optimizer) if make_scheduler else None
        for step in range(8):
            for p, g in zip(params, make_grads(params, step)):
                p.grad = g
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            if edit_groups is not None:
                edit_groups(optimizer, params, step)
        finals.append([p.detach() for p in params])
    for ours, theirs in zip(finals[1], finals[0]):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_state_dict_round_trip_and_torch_interchange(backend, device):
    require(backend, device)
    options = dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)
    start = make_params(device, torch.float64)

    # Uninterrupted torch trajectory over 4 steps.
    expected = clone_params(start)
    run(reference(expected, **options), expected, 4)

    def resumed(first_factory, second_factory):
        params = clone_params(start)
        first = first_factory(params)
        run(first, params, 2)
        saved = first.state_dict()
        second = second_factory(params)
        second.load_state_dict(saved)
        run(second, params, 2, start=2)
        return params, saved, second

    def ours(p):
        return fused(p, backend, **options)

    def torchs(p):
        return reference(p, **options)

    for first_factory, second_factory in [(ours, ours), (ours, torchs), (torchs, ours)]:
        params, saved, second = resumed(first_factory, second_factory)
        for a, b in zip(params, expected):
            torch.testing.assert_close(a, b)
    # A FusedSGD checkpoint has torch.optim.SGD's keys and per-param state.
    torch_saved = torchs(clone_params(start)).state_dict()
    params = clone_params(start)
    opt = ours(params)
    run(opt, params, 1)
    saved = opt.state_dict()
    assert saved["param_groups"][0].keys() == torch_saved["param_groups"][0].keys()
    assert all(set(s) == {"momentum_buffer"} for s in saved["state"].values())


def test_loading_a_torch_checkpoint_keeps_the_fused_path(monkeypatch):
    params = make_params("cpu", torch.float32)
    ref = torch.optim.SGD(clone_params(params), lr=0.1, momentum=0.9, foreach=False, fused=False)
    opt = fusedmlp.FusedSGD(params, lr=0.1, momentum=0.9)
    opt.load_state_dict(ref.state_dict())
    calls = []
    real = sgd_ops.fused_sgd_
    monkeypatch.setattr(sgd_ops, "fused_sgd_", lambda *a, **kw: calls.append(kw["backend"]) or real(*a, **kw))
    run(opt, params, 1)
    assert calls == ["cpu"]
    assert opt.param_groups[0]["foreach"] is None and opt.param_groups[0]["fused"] is None
    assert opt._step_supports_amp_scaling


def test_step_hooks_profiler_range_and_zero_grad_match_torch():
    # FusedSGD skips torch.optim's step wrapper when it has nothing to do; with hooks or a
    # profiler it must behave exactly as torch.optim.SGD.
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

    params = make_params("cpu", torch.float32)
    for p in params:
        p.grad = torch.ones_like(p)
    seen = []
    for opt in (torch.optim.SGD(clone_params(params), lr=0.1), fusedmlp.FusedSGD(params, lr=0.1)):
        name = type(opt).__name__
        handles = [
            opt.register_step_pre_hook(lambda o, args, kwargs, n=name: seen.append((n, "pre", len(args)))),
            opt.register_step_post_hook(lambda o, args, kwargs, n=name: seen.append((n, "post", len(args)))),
            register_optimizer_step_pre_hook(lambda o, args, kwargs, n=name: seen.append((n, "global pre"))),
            register_optimizer_step_post_hook(lambda o, args, kwargs, n=name: seen.append((n, "global post"))),
        ]
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        opt.step()
        for h in handles:
            h.remove()
        opt.step()  # no hooks left: nothing recorded
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            opt.step()
            opt.zero_grad()
        names = {e.name for e in prof.events()}
        assert f"Optimizer.step#{name}.step" in names and f"Optimizer.zero_grad#{name}.zero_grad" in names
        assert all(p.grad is None for p in opt.param_groups[0]["params"])
        for p in opt.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        opt.zero_grad(set_to_none=False)
        assert all(p.grad is not None and not p.grad.any() for p in opt.param_groups[0]["params"])
    order = [(e[1:]) for e in seen]
    assert order[: len(order) // 2] == order[len(order) // 2 :]  # the same hooks, in the same order
    assert [e[0] for e in seen] == ["SGD"] * 4 + ["FusedSGD"] * 4


# ---------------------------------------------------------------------------------------
# GradScaler


def scaled_training(optimizer_factory, params, inf_step, steps=4):
    opt = optimizer_factory(params)
    scaler = torch.amp.GradScaler(params[0].device.type, init_scale=2.0**4, growth_interval=2)
    for step in range(steps):
        loss = sum((p * g).sum() for p, g in zip(params, make_grads(params, step)))
        scaler.scale(loss).backward()
        if step == inf_step:
            params[0].grad.view(-1)[1] = float("inf")
        scaler.step(opt)
        scaler.update()
        for p in params:
            p.grad = None
    return opt, scaler


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("inf_step", [0, 1])
@pytest.mark.parametrize("dampening", [0.0, 0.5])
def test_grad_scaler_skips_step_with_inf(backend, device, inf_step, dampening):
    require(backend, device)
    options = dict(lr=0.1, momentum=0.9, dampening=dampening, weight_decay=0.01)
    ours = make_params(device, torch.float32)
    theirs = clone_params(ours)
    opt, scaler = scaled_training(lambda p: fused(p, backend, **options), ours, inf_step)
    ref, ref_scaler = scaled_training(lambda p: reference(p, **options), theirs, inf_step)
    assert scaler.get_scale() == ref_scaler.get_scale()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(opt.state[a]["momentum_buffer"], ref.state[b]["momentum_buffer"])


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_grad_scaler_skipped_first_step_leaves_no_buffer_in_checkpoint(backend, device):
    require(backend, device)
    params = make_params(device, torch.float32)
    opt, _ = scaled_training(lambda p: fused(p, backend, lr=0.1, momentum=0.9, dampening=0.5), params, 0, steps=1)
    assert opt.state_dict()["state"] == {}  # torch.optim.SGD would have no momentum yet either
    # and in memory the unset buffers are zeros, never uninitialised memory
    assert all((opt.state[p]["momentum_buffer"] == 0).all() for p in params)


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_op_found_inf_skips_and_grad_scale_unscales(backend, device, momentum):
    require(backend, device)
    params = [p.detach() for p in make_params(device, torch.float32)]
    grads = make_grads(params, 0)
    bufs = [torch.randn_like(p) for p in params] if momentum else []
    kwargs = dict(
        weight_decay=0.0,
        momentum=momentum,
        lr_tensor=None,
        lr=0.5,
        dampening=0.0,
        nesterov=False,
        maximize=False,
        is_first_step=False,
    )
    before = [t.clone() for t in params + bufs]
    skip = torch.ones((), device=device)
    sgd_ops.fused_sgd_(
        params, grads, bufs, backend=backend, **kwargs, found_inf=skip, grad_scale=torch.full((), 4.0, device=device)
    )
    for t, t0 in zip(params + bufs, before):
        assert torch.equal(t, t0)
    sgd_ops.fused_sgd_(
        params,
        [g * 4 for g in grads],
        bufs,
        backend=backend,
        **kwargs,
        found_inf=torch.zeros((), device=device),
        grad_scale=torch.full((), 4.0, device=device),
    )
    expected_params = [t.clone() for t in before[: len(params)]]
    expected_bufs = [t.clone() for t in before[len(params) :]]
    sgd_ops.fused_sgd_torch_(expected_params, grads, expected_bufs, **kwargs)
    for t, e in zip(params + bufs, expected_params + expected_bufs):
        torch.testing.assert_close(t, e)


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICE if p.values[1] == "cuda"])
def test_64bit_indexing(backend, device):
    # A tensor past 2**31 elements: element offsets must be 64-bit in every kernel.
    require(backend, device)
    numel = 2**31 + 64
    param = torch.zeros(numel, dtype=torch.float16, device=device)
    param.grad = torch.ones_like(param)
    fused([param], backend, lr=1.0).step()
    assert param[0].item() == -1 and param[2**31 + 7].item() == -1 and param[-1].item() == -1


# ---------------------------------------------------------------------------------------
# Argument validation: torch.optim.SGD's errors, word for word.


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=-0.1),
        dict(lr=torch.tensor([0.1, 0.2])),
        dict(momentum=-1.0),
        dict(weight_decay=-1.0),
        dict(nesterov=True),
        dict(nesterov=True, momentum=0.9, dampening=0.1),
    ],
    ids=[
        "negative_lr",
        "tensor_lr_2_elements",
        "negative_momentum",
        "negative_weight_decay",
        "nesterov_no_momentum",
        "nesterov_dampening",
    ],
)
def test_bad_arguments_match_torch(kwargs):
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError) as theirs:
        torch.optim.SGD([p], **kwargs)
    with pytest.raises(ValueError, match=f"^{theirs.value.args[0]}$".replace("[", r"\[").replace("]", r"\]")):
        fusedmlp.FusedSGD([p], **kwargs)


def test_duplicate_params_and_bad_backend():
    p, q = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        fusedmlp.FusedSGD([dict(params=[p]), dict(params=[p, q])])
    with pytest.warns(UserWarning, match="duplicate parameters"):
        fusedmlp.FusedSGD([p, p])
    with pytest.raises(ValueError, match="unknown backend"):
        fusedmlp.FusedSGD([p], backend="nope")


def test_sparse_and_integer_params_are_rejected():
    emb = torch.nn.Embedding(4, 3, sparse=True)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        fusedmlp.FusedSGD(emb.parameters(), lr=0.1).step()
    ints = torch.zeros(3, dtype=torch.int64)
    ints.grad = torch.ones(3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="floating point"):
        fusedmlp.FusedSGD([ints], lr=0.1).step()


@pytest.mark.parametrize("backend,device", BACKEND_DEVICE)
def test_op_rejects_mismatched_lists(backend, device):
    require(backend, device)
    p = torch.zeros(4, device=device)
    kwargs = dict(
        weight_decay=0.0,
        momentum=0.9,
        lr_tensor=None,
        lr=0.1,
        dampening=0.0,
        nesterov=False,
        maximize=False,
        is_first_step=True,
    )
    with pytest.raises(RuntimeError, match="momentum buffers"):
        sgd_ops.fused_sgd_([p], [p.clone()], [], backend=backend, **kwargs)
    with pytest.raises(RuntimeError, match="grad 0"):
        sgd_ops.fused_sgd_([p], [torch.zeros(5, device=device)], [p.clone()], backend=backend, **kwargs)
    with pytest.raises(RuntimeError, match="dtype and device of the first"):
        sgd_ops.fused_sgd_([p, p.double()], [p, p.double()], [p, p.double()], backend=backend, **kwargs)


# ---------------------------------------------------------------------------------------
# opcheck and torch.compile


def _op_for(backend):
    if backend == "triton":
        return torch.ops.fusedmlp.fused_sgd_triton_.default
    return torch.ops.fusedmlp.fused_sgd_.default


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICE if p.values[0] != "torch"])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("scaler", [False, True])
def test_opcheck(backend, device, momentum, scaler):
    require(backend, device)
    params = [p.detach() for p in make_params(device, torch.float32)]
    grads = make_grads(params, 0)
    bufs = [torch.randn_like(p) for p in params] if momentum else []
    kwargs = dict(
        weight_decay=0.1,
        momentum=momentum,
        lr_tensor=torch.tensor(0.1, device=device),
        lr=0.0,
        dampening=0.0,
        nesterov=momentum != 0,
        maximize=False,
        is_first_step=False,
    )
    if scaler:
        kwargs.update(
            grad_scale=torch.full((), 2.0, device=device),
            found_inf=torch.zeros((), device=device),
            first_step_skipped=torch.ones((), device=device),
        )
    torch.library.opcheck(_op_for(backend), (params, grads, bufs), kwargs)


@pytest.mark.parametrize("backend,device", [p for p in BACKEND_DEVICE if p.values[0] != "torch"])
def test_torch_compile_fullgraph(backend, device):
    require(backend, device)
    params = [p.detach() for p in make_params(device, torch.float32)]
    grads, bufs = make_grads(params, 0), [torch.zeros_like(p) for p in params]
    expected_params, expected_bufs = [p.clone() for p in params], [b.clone() for b in bufs]
    kwargs = dict(
        weight_decay=0.1,
        momentum=0.9,
        lr_tensor=None,
        lr=0.1,
        dampening=0.0,
        nesterov=True,
        maximize=False,
        is_first_step=False,
    )

    @torch.compile(fullgraph=True, backend="aot_eager")
    def step(params, grads, bufs):
        _op_for(backend)(params, grads, bufs, **kwargs)

    step(params, grads, bufs)
    sgd_ops.fused_sgd_torch_(expected_params, grads, expected_bufs, **kwargs)
    for a, b in zip(params + bufs, expected_params + expected_bufs):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------
# Triton AOT compile for sm_80 / sm_90, no GPU needed (tests/support.py runs the shared compile
# script: a subprocess without TRITON_INTERPRET, ptxas -v log for the spill counts).


@pytest.mark.slow
def test_triton_kernel_aot_compiles_without_spills(tmp_path):
    pytest.importorskip("triton")
    rows = run_triton_aot("fusedmlp.triton_kernels.sgd", tmp_path)
    failed = [r for r in rows if "error" in r]
    assert not failed, failed
    assert {(r["dtype"], r["arch"]) for r in rows} == {
        (str(d).replace("torch.", ""), a)
        for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        for a in AOT_ARCHS
    }
    assert all(r["spills"] == 0 for r in rows), rows
