"""fusedmlp.convert: Linear(+ReLU) layers become fused ones that keep the same Parameters."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fusedmlp
from fusedmlp.convert import FusedReLUSlot
from fusedmlp.nn import FusedLinear, FusedLinearReLU


class NeuralNetwork(nn.Module):
    """The tutorial's network."""

    def __init__(self, num_inputs, num_outputs):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(num_inputs, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, num_outputs)
        )

    def forward(self, x):
        return self.layers(x)


class Mixed(nn.Module):
    """Nested containers, a Linear outside any Sequential, a Linear followed by a non-ReLU, and
    layers convert must leave alone."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Sequential(nn.Linear(8, 8), nn.ReLU()))
        self.gate = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.LayerNorm(8))
        self.head = nn.Linear(8, 3)
        self.attention = nn.MultiheadAttention(8, 2)

    def forward(self, x):
        h = self.gate(self.encoder(x))
        h = h + self.attention(h[None], h[None], h[None], need_weights=False)[0][0]
        return self.head(h)


@pytest.mark.parametrize("backend", ["auto", "cpu", "torch"])
def test_tutorial_network(backend):
    torch.manual_seed(0)
    model = NeuralNetwork(50, 3)
    ref = copy.deepcopy(model)
    params_before = list(model.parameters())
    keys_before = list(model.state_dict())
    assert fusedmlp.convert(model, backend=backend) is model
    layers = model.layers
    assert type(layers[0]) is FusedLinearReLU and type(layers[2]) is FusedLinearReLU
    assert type(layers[4]) is FusedLinear
    assert isinstance(layers[1], FusedReLUSlot) and isinstance(layers[3], FusedReLUSlot)
    assert all(layer.backend == backend for layer in layers[0::2])
    assert all(p is q for p, q in zip(model.parameters(), params_before))
    assert list(model.state_dict()) == keys_before
    ref.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(7, 50)
    y = torch.randint(0, 3, (7,))
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(ref(x), y).backward()
    torch.testing.assert_close(model(x), ref(x))
    for p, r in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, r.grad)


def test_optimizer_built_before_conversion_keeps_training_the_model():
    torch.manual_seed(0)
    model = NeuralNetwork(4, 2)
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for step in range(4):
        if step == 2:  # mid-training, with momentum buffers already in the optimizer state
            fusedmlp.convert(model)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
    for p, r in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, r)
        assert opt.state[p]["momentum_buffer"] is not None


def test_nested_and_mixed_modules():
    torch.manual_seed(0)
    model = Mixed()
    ref = copy.deepcopy(model)
    keys = list(model.state_dict())
    fusedmlp.convert(model)
    assert type(model.encoder[0]) is FusedLinearReLU and isinstance(model.encoder[1], FusedReLUSlot)
    assert type(model.encoder[2][0]) is FusedLinearReLU
    assert type(model.gate[0]) is FusedLinear and type(model.gate[1]) is nn.Tanh  # not followed by a ReLU
    assert type(model.head) is FusedLinear
    # nn.MultiheadAttention's out_proj is an nn.Linear subclass with its own role: untouched.
    assert type(model.attention.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    assert list(model.state_dict()) == keys
    x = torch.randn(5, 6)
    torch.testing.assert_close(model(x), ref(x))


def test_idempotent_and_leaves_fused_modules_alone():
    model = fusedmlp.convert(NeuralNetwork(4, 2))
    layers_before = list(model.layers)
    fusedmlp.convert(model)
    assert all(a is b for a, b in zip(model.layers, layers_before))
    fused = fusedmlp.FusedMLP(4, 2)
    fusedmlp.convert(fused)
    assert type(fused.layers[1]) is nn.ReLU and type(fused.layers[0]) is FusedLinear


def test_bare_linear_and_no_bias_and_dtype():
    torch.manual_seed(0)
    linear = nn.Linear(5, 3, bias=False, dtype=torch.float64)
    fused = fusedmlp.convert(linear, backend="torch")
    assert type(fused) is FusedLinear and fused.weight is linear.weight and fused.bias is None
    x = torch.randn(4, 5, dtype=torch.float64)
    torch.testing.assert_close(fused(x), linear(x))


def test_conversion_consumes_no_random_numbers_and_keeps_train_mode():
    model = NeuralNetwork(4, 2).eval()
    torch.manual_seed(5)
    fusedmlp.convert(model)
    after = torch.rand(3)
    torch.manual_seed(5)
    torch.testing.assert_close(after, torch.rand(3), rtol=0, atol=0)
    assert not any(m.training for m in model.modules())


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        fusedmlp.convert(NeuralNetwork(4, 2), backend="cudnn")


def test_modules_with_hooks_are_left_alone():
    """A replacement would drop a module's hooks: a hooked Linear stays an nn.Linear (and is not
    fused with its ReLU), a hooked ReLU stays (its Linear becomes a FusedLinear), and every hook
    sees what it saw before the conversion."""
    torch.manual_seed(0)
    model = NeuralNetwork(4, 2)
    ref = copy.deepcopy(model)
    seen = {id(model): [], id(ref): []}
    for network in (model, ref):
        record = seen[id(network)]
        network.layers[0].register_forward_hook(lambda m, i, o, record=record: record.append(o.detach().clone()))
        network.layers[3].register_forward_pre_hook(lambda m, i, record=record: record.append(i[0].detach().clone()))
    fusedmlp.convert(model)
    assert [type(m) for m in model.layers] == [nn.Linear, nn.ReLU, FusedLinear, nn.ReLU, FusedLinear]
    x = torch.randn(5, 4)
    torch.testing.assert_close(model(x), ref(x))
    assert len(seen[id(model)]) == len(seen[id(ref)]) == 2
    for ours, theirs in zip(seen[id(model)], seen[id(ref)]):
        torch.testing.assert_close(ours, theirs)
    linear = nn.Linear(3, 2)
    linear.register_forward_pre_hook(lambda m, i: None)
    assert fusedmlp.convert(linear) is linear
