"""The loss function and optimizer class every example trains with, chosen in one place.

They are torch's for now; fusedmlp's fused versions (``fusedmlp.functional.cross_entropy``
and ``fusedmlp.FusedSGD``) take the same arguments, so switching is one line each.
"""

import torch
import torch.nn.functional as F

cross_entropy = F.cross_entropy
SGD = torch.optim.SGD
