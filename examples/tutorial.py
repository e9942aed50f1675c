"""The PyTorch-basics tutorial's workflow, end to end, with fusedmlp.FusedMLP as the network.

Run: python examples/tutorial.py   (CPU, a few seconds; uses the GPU when there is one)
"""

import os
import tempfile

import torch
from torch.utils.data import DataLoader
from toy_data import ToyDataset, X_test, X_train, compute_accuracy, y_test, y_train
from training_parts import SGD, cross_entropy

import fusedmlp

# 1.3 A multilayer network: FusedMLP(50, 3) is the tutorial's NeuralNetwork(50, 3).
torch.manual_seed(123)
model = fusedmlp.FusedMLP(50, 3)
print(model)
num_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
print("Total number of trainable model parameters:", num_params)
print("layers[0].weight:", tuple(model.layers[0].weight.shape), "layers[0].bias:", tuple(model.layers[0].bias.shape))

X = torch.rand((1, 50))
out = model(X)
print(out)
with torch.no_grad():
    out = model(X)
print(out)
with torch.no_grad():
    out = torch.softmax(model(X), dim=1)
print(out)

# 2. Data loaders.
torch.manual_seed(123)
train_loader = DataLoader(ToyDataset(X_train, y_train), batch_size=2, shuffle=True, num_workers=0, drop_last=True)
test_loader = DataLoader(ToyDataset(X_test, y_test), batch_size=2, shuffle=False, num_workers=0)

# 3. / 5.1 The training loop, on the GPU when there is one.
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.manual_seed(123)
model = fusedmlp.FusedMLP(num_inputs=2, num_outputs=2)
model.to(device)
print("device:", device, "| path:", model.path())
optimizer = SGD(model.parameters(), lr=0.5)
num_epochs = 3
for epoch in range(num_epochs):
    model.train()
    for batch_idx, (features, labels) in enumerate(train_loader):
        features, labels = features.to(device), labels.to(device)
        logits = model(features)
        loss = cross_entropy(logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(
            f"Epoch: {epoch + 1:03d}/{num_epochs:03d}"
            f" | Batch {batch_idx:03d}/{len(train_loader):03d}"
            f" | Train/Val Loss: {loss:.2f}"
        )
    model.eval()

# Predictions and accuracy.
with torch.no_grad():
    outputs = model(X_train.to(device))
probas = torch.softmax(outputs, dim=1)
print(probas)
print("predictions:", torch.argmax(probas, dim=1).tolist())
train_accuracy = compute_accuracy(model, train_loader, device)
test_accuracy = compute_accuracy(model, test_loader, device)
print(f"train accuracy: {train_accuracy:.2f}")
print(f"test accuracy: {test_accuracy:.2f}")

# 4. Save and load: the state_dict is the tutorial NeuralNetwork's, loadable with weights_only=True.
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "model.pth")
    torch.save(model.state_dict(), path)
    loaded = fusedmlp.FusedMLP(2, 2).to(device)  # needs to match the original model exactly
    loaded.load_state_dict(torch.load(path, weights_only=True))
with torch.no_grad():
    assert torch.equal(loaded(X_test.to(device)), model(X_test.to(device)))
print("saved and loaded: same predictions")
