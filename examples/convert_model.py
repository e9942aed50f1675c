"""fusedmlp.convert on an existing model: the tutorial's NeuralNetwork, trained a little with
torch layers, converted in place, trained on with the same optimizer.

Run: python examples/convert_model.py
"""

import torch
from toy_data import X_train, y_train
from training_parts import SGD, cross_entropy

import fusedmlp


class NeuralNetwork(torch.nn.Module):
    def __init__(self, num_inputs, num_outputs):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(num_inputs, 30),
            torch.nn.ReLU(),
            torch.nn.Linear(30, 20),
            torch.nn.ReLU(),
            torch.nn.Linear(20, num_outputs),
        )

    def forward(self, x):
        return self.layers(x)


torch.manual_seed(123)
model = NeuralNetwork(2, 2)
optimizer = SGD(model.parameters(), lr=0.5, momentum=0.9)
for step in range(6):
    if step == 3:
        fusedmlp.convert(model)  # same Parameters: the optimizer and its momentum carry on
        print(model)
    loss = cross_entropy(model(X_train), y_train)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    print(f"step {step} | loss {loss:.4f}")
print("keys:", list(model.state_dict()))
