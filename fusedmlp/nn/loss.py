"""FusedCrossEntropyLoss: ``nn.CrossEntropyLoss`` computed by fusedmlp's fused kernel."""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from fusedmlp import functional
from fusedmlp._backend import check_backend_name


class FusedCrossEntropyLoss(nn.CrossEntropyLoss):
    """Drop-in for ``nn.CrossEntropyLoss`` (a subclass: same attributes, the same ``weight``
    buffer and state_dict), whose forward is ``fusedmlp.functional.cross_entropy``.
    ``size_average``/``reduce`` (deprecated in torch) are not accepted; ``inplace_backward``
    is documented at ``fusedmlp.functional.cross_entropy``."""

    def __init__(
        self,
        weight: Optional[Tensor] = None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        backend: str = "auto",
        inplace_backward: bool = False,
    ) -> None:
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)
        self.backend = check_backend_name(backend)
        self.inplace_backward = inplace_backward

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return functional.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            backend=self.backend,
            inplace_backward=self.inplace_backward,
        )

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}" + (", inplace_backward=True" if self.inplace_backward else "")
