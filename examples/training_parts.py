"""The loss function and optimizer class every example trains with, chosen in one place:
fusedmlp's fused versions, which take exactly the arguments of ``F.cross_entropy`` and
``torch.optim.SGD``."""

import fusedmlp

cross_entropy = fusedmlp.functional.cross_entropy
SGD = fusedmlp.FusedSGD
