"""FusedSGD: torch.optim.SGD with one fused update per (device, dtype) group of tensors."""

from __future__ import annotations

import operator
from itertools import repeat
from typing import Any, Callable, Optional

import torch
from torch import Tensor
from torch.optim.optimizer import (
    Optimizer,
    ParamsT,
    _global_optimizer_post_hooks,
    _global_optimizer_pre_hooks,
)

from fusedmlp._backend import check_backend_name, resolve_backend
from fusedmlp.ops import sgd as sgd_ops

__all__ = ["FusedSGD"]


def _step_wrapper_needed() -> bool:
    """Whether torch.optim's step wrapper has work: global step hooks, or a profiler running."""
    return bool(_global_optimizer_pre_hooks or _global_optimizer_post_hooks) or torch.autograd._profiler_enabled()


# torch's own step wrapper (profiler range, step hooks) around FusedSGD._step.
_hooked_step = Optimizer.profile_hook_step(lambda self, closure=None: self._step(closure))

# Group keys torch.optim.SGD writes. FusedSGD stores torch's defaults for the ones that pick
# torch's implementation, so a FusedSGD checkpoint loads into torch.optim.SGD as a default
# SGD, and its own step always runs the fused kernels whatever a loaded checkpoint says.
_TORCH_IMPL_KEYS = {"foreach": None, "differentiable": False, "fused": None}


class FusedSGD(Optimizer):
    """Implements stochastic gradient descent (optionally with momentum), exactly as
    :class:`torch.optim.SGD`, with one fused kernel launch per (device, dtype) group.

    Arguments are torch.optim.SGD's; ``backend`` picks the kernels ("auto", "cuda", "triton",
    "cpu" or "torch"; see ``fusedmlp.available_backends``). Works with
    ``torch.amp.GradScaler``: the unscaling and the skip of a step with inf/NaN gradients
    happen inside the kernel, without a host sync, and a skipped first step leaves the
    momentum buffers unset, so the next real step starts them as torch.optim.SGD would.
    The state_dict has torch.optim.SGD's format and loads into it, and back.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = 1e-3,
        momentum: float = 0,
        dampening: float = 0,
        weight_decay: float = 0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        backend: str = "auto",
    ) -> None:
        if isinstance(lr, Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.backend = check_backend_name(backend)
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
            **_TORCH_IMPL_KEYS,
        }
        super().__init__(params, defaults)
        # GradScaler.step then hands over grad_scale/found_inf as attributes instead of
        # unscaling the grads and syncing on found_inf itself.
        self._step_supports_amp_scaling = True
        self._init_fused_state()

    def _init_fused_state(self) -> None:
        # param -> 0-dim float tensor on its device, nonzero while that param's momentum buffer
        # was created at a step GradScaler skipped (so it holds no momentum yet). Kept on the
        # device so the skip decision never syncs; not part of the state_dict.
        self._first_step_skipped: dict[Tensor, Tensor] = {}
        self._resolved_backends: dict[torch.device, str] = {}
        # id(param group) -> (its params, the calls of the last step: [device, params, momentum
        # buffers, situation, per-param state dicts], whether momentum was on); see _step_group
        # and _plan_holds.
        self._plans: dict[int, tuple[tuple[Tensor, ...], list[list], bool]] = {}
        # (self.state, its per-param dicts) when the plans were made; None: snapshot after the
        # next step.
        self._planned_state: Optional[tuple[dict, list[dict]]] = None

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("maximize", False)
            group.update(_TORCH_IMPL_KEYS)
        self.__dict__.setdefault("backend", "auto")
        self._step_supports_amp_scaling = True
        self._init_fused_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group.update(_TORCH_IMPL_KEYS)  # a torch checkpoint's foreach/fused never turn the fused path off
        self._first_step_skipped.clear()
        self._plans.clear()

    def state_dict(self) -> dict[str, Any]:
        state_dict = super().state_dict()
        if not self._first_step_skipped:
            return state_dict
        # A buffer created at a skipped step holds no momentum: leave it out, as torch.optim.SGD
        # would have no buffer. Saving a checkpoint is not a hot path, so this may sync.
        param_ids = {}
        for saved_group, group in zip(state_dict["param_groups"], self.param_groups):
            param_ids.update(zip(group["params"], saved_group["params"]))
        for param, flag in self._first_step_skipped.items():
            saved = state_dict["state"].get(param_ids.get(param))
            if saved is not None and bool(flag.item()):
                saved = {k: v for k, v in saved.items() if k != "momentum_buffer"}
                if saved:
                    state_dict["state"][param_ids[param]] = saved
                else:
                    del state_dict["state"][param_ids[param]]
        return state_dict

    def _backend_for(self, device: torch.device) -> str:
        backend = self._resolved_backends.get(device)
        if backend is None:
            backend = self._resolved_backends[device] = resolve_backend(self.backend, device)
        return backend

    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Performs a single optimization step.

        Args:
            closure (Callable, optional): A closure that reevaluates the model
                and returns the loss.
        """
        # torch.optim.Optimizer wraps every subclass's step in a profiler range and a walk over
        # the step hooks; for a tiny model that wrapper costs more than the fused update.
        # Here it runs only when there is something for it to do, with torch's own wrapper.
        if self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks or _step_wrapper_needed():
            # The hooks see the arguments as step() got them, as with torch's wrapper.
            return _hooked_step(self) if closure is None else _hooked_step(self, closure)
        return self._step(closure)

    step.hooked = True  # keeps Optimizer._patch_step_function from wrapping it unconditionally

    def zero_grad(self, set_to_none: bool = True) -> None:
        r"""Reset the gradients of all optimized :class:`torch.Tensor` s (as
        :meth:`torch.optim.Optimizer.zero_grad`; ``set_to_none=True`` skips its profiler range
        when no profiler runs)."""
        if not set_to_none or torch.autograd._profiler_enabled():
            return super().zero_grad(set_to_none)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def _step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale: Optional[Tensor] = getattr(self, "grad_scale", None)
        found_inf: Optional[Tensor] = getattr(self, "found_inf", None)
        per_device: dict[torch.device, dict[str, Optional[Tensor]]] = {}
        # The update runs without grad mode, as under @torch.no_grad(), whose decorator costs as
        # much as a tiny model's whole fused update.
        grad_enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            if self._plans and not self._state_is_as_planned():
                self._plans.clear()
            for group in self.param_groups:
                self._step_group(group, grad_scale, found_inf, per_device)
            if self._planned_state is None:
                self._planned_state = (self.state, list(self.state.values()))
        finally:
            torch._C._set_grad_enabled(grad_enabled)
        return loss

    def _state_is_as_planned(self) -> bool:
        """Whether self.state is the dict, with the same per-param dicts, that the plans were made
        from: state.clear(), a new state dict or a param's dict replaced invalidate them. C-level
        comparisons: hashing every param (Tensor.__hash__ is Python) cost a quarter of a
        500-tensor step (measured)."""
        if self._planned_state is None:
            return False
        planned, values = self._planned_state
        state = self.state
        return state is planned and len(state) == len(values) and all(map(operator.is_, state.values(), values))

    def _step_group(
        self,
        group: dict[str, Any],
        grad_scale: Optional[Tensor],
        found_inf: Optional[Tensor],
        per_device: dict[torch.device, dict[str, Optional[Tensor]]],
    ) -> None:
        # Steady state (every param has a grad and its buffers exist) reuses the previous
        # step's grouping, so a step costs one list of grads per call in Python.
        plan = self._plans.get(id(group))
        if plan is not None and self._plan_holds(plan, group):
            grads_per_call = [[p.grad for p in call[1]] for call in plan[1]]
            if not any(g is None for grads in grads_per_call for g in grads):
                for call, grads in zip(plan[1], grads_per_call):
                    call[3] = self._launch(
                        group, call[0], call[1], grads, call[2], call[3], grad_scale, found_inf, per_device
                    )
                return
        self._plans.pop(id(group), None)

        momentum = group["momentum"]
        # One call per (device, dtype) and momentum-buffer situation: steady state is one call
        # per (device, dtype); params whose buffers start this step (first step, or a param
        # that got its first grad later) or whose buffers were created at a skipped step go
        # in their own calls, since they need a different first-step rule.
        calls: dict[tuple, list] = {}
        all_have_grads = True
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                all_have_grads = False
                continue
            if grad.is_sparse:
                raise RuntimeError("`FusedSGD` does not support sparse gradients")
            if not p.is_floating_point():
                raise RuntimeError(
                    f"`FusedSGD` requires all the params to be floating point Tensors, but got {p.dtype}"
                )
            situation: Any = None
            buf = None
            param_state = None
            if momentum != 0:
                param_state = self.state[p]
                buf = param_state.get("momentum_buffer")
                if buf is None:
                    # Zero-filled when the step may be skipped, so no uninitialised memory is
                    # ever kept in the state.
                    buf = torch.empty_like(grad) if found_inf is None else torch.zeros_like(grad)
                    param_state["momentum_buffer"] = buf
                    situation = "first"
                else:
                    situation = self._first_step_skipped.get(p)
            key = (p.device, p.dtype, situation if not isinstance(situation, Tensor) else id(situation))
            entry = calls.get(key)
            if entry is None:
                entry = calls[key] = [p.device, [], [], situation, [], []]
            entry[1].append(p)
            entry[2].append(buf)
            entry[4].append(grad)
            entry[5].append(param_state)

        for call in calls.values():
            device, params, bufs, situation, grads, _ = call
            call[3] = self._launch(
                group,
                device,
                params,
                grads,
                bufs if momentum != 0 else [],
                situation,
                grad_scale,
                found_inf,
                per_device,
            )
        if all_have_grads:
            self._plans[id(group)] = (
                tuple(group["params"]),
                [
                    [device, params, bufs if momentum != 0 else [], situation, states]
                    for device, params, bufs, situation, _, states in calls.values()
                ],
                momentum != 0,
            )
            self._planned_state = None  # snapshot again after this step (see _step)

    def _plan_holds(self, plan: tuple, group: dict[str, Any]) -> bool:
        """Whether the last step's grouping still describes `group`: the same params, in the
        same order, momentum still on (or off), and each param's momentum buffer still the
        one in its state (_step checks that the state itself is the same). torch.optim.SGD reads
        the groups and the state every step, so a param swapped into the list, or a reset (a
        buffer deleted or replaced), must be seen here too."""
        planned_params, calls, with_momentum = plan
        params = group["params"]
        if (
            len(params) != len(planned_params)
            or with_momentum != (group["momentum"] != 0)
            or not all(map(operator.is_, params, planned_params))
        ):
            return False
        if with_momentum:
            for call in calls:
                buffers = map(dict.get, call[4], repeat("momentum_buffer"))
                if not all(map(operator.is_, buffers, call[2])):
                    return False
        return True

    def _launch(
        self,
        group: dict[str, Any],
        device: torch.device,
        params: list[Tensor],
        grads: list[Tensor],
        bufs: list[Tensor],
        situation: Any,
        grad_scale: Optional[Tensor],
        found_inf: Optional[Tensor],
        per_device: dict[torch.device, dict[str, Optional[Tensor]]],
    ) -> Any:
        """One fused call; returns the buffers' situation for the next step: None (steady),
        or a device flag that is nonzero while they are still unset."""
        scalars = per_device.get(device)
        if scalars is None:
            # As torch's _fused_sgd: GradScaler's tensors may live on another device.
            scalars = per_device[device] = {
                "grad_scale": None if grad_scale is None else grad_scale.to(device, non_blocking=True),
                "found_inf": None if found_inf is None else found_inf.to(device, non_blocking=True),
            }
        lr = group["lr"]
        lr_tensor = None
        if isinstance(lr, Tensor):
            lr_tensor = lr if lr.device == device else lr.to(device, non_blocking=True)
        is_first_step = situation == "first"
        first_step_skipped = situation if isinstance(situation, Tensor) else None
        sgd_ops.fused_sgd_(
            params,
            grads,
            bufs,
            backend=self._backend_for(device),
            weight_decay=group["weight_decay"],
            momentum=group["momentum"],
            lr_tensor=lr_tensor,
            lr=0.0 if lr_tensor is not None else lr,
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            maximize=group["maximize"],
            is_first_step=is_first_step,
            grad_scale=scalars["grad_scale"],
            found_inf=scalars["found_inf"],
            first_step_skipped=first_step_skipped,
        )
        if not (is_first_step or first_step_skipped is not None):
            return None
        device_found_inf = scalars["found_inf"]
        if device_found_inf is None:
            if first_step_skipped is None:
                return None
            # Without GradScaler nothing is skipped: the buffers are set from now on.
            for p in params:
                self._first_step_skipped.pop(p, None)
            return None
        # Still unset after this step iff it was a first step and it was skipped.
        skipped = (device_found_inf.reshape(()) != 0).to(torch.float32)
        flag = skipped if is_first_step else skipped * first_step_skipped
        for p in params:
            self._first_step_skipped[p] = flag
        return flag
