"""
Per-layer structures with parameter groups
==========================================

Layers differ in width, and a structure that fits one may be wasteful for another. As
with any PyTorch optimizer, :class:`~singd_opt.SINGD` accepts *parameter groups*:
dictionaries with the parameters of some layers and the hyper-parameters to use for
them, ``structures`` included. A layer's weight and bias must be in the same group,
because SINGD preconditions them together.
"""

# %%
# A network with a wide hidden layer
# ----------------------------------
#
# The digits have 64 features; the hidden layer has 256 units. The first layer's input
# factor :math:`K` is only :math:`65 \times 65` (64 inputs and the bias), so a dense
# one is cheap, while its output factor :math:`C` is :math:`256 \times 256`. The second
# layer is the other way round.

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from singd_opt import SINGD

torch.manual_seed(0)

images, labels = load_digits(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(
    images, labels, test_size=0.25, random_state=0, stratify=labels
)
x_train = torch.tensor(x_train, dtype=torch.float32) / 16
x_test = torch.tensor(x_test, dtype=torch.float32) / 16
y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)


def make_model() -> nn.Sequential:
    """Return a fresh 64-256-10 perceptron (same initial weights on every call)."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


# %%
# One group per layer
# -------------------
#
# Keys that a group leaves out take the value passed to the constructor. Here the
# first layer keeps a dense :math:`K` and a hierarchical :math:`C`; the second layer a
# hierarchical :math:`K` and a dense :math:`C` (only :math:`10 \times 10`), and a
# smaller learning rate.

model = make_model()
first, second = model[0], model[2]
optimizer = SINGD(
    model,
    params=[
        {
            "params": first.parameters(),
            "structures": ("dense", "hierarchical15_15"),
        },
        {
            "params": second.parameters(),
            "structures": ("hierarchical15_15", "dense"),
            "lr": 0.02,
        },
    ],
    lr=0.05,
    lr_cov=0.01,
)

for name in optimizer.Ks:
    K, C = optimizer.Ks[name], optimizer.Cs[name]
    print(
        f"layer {name}: K is {type(K).__name__} {tuple(K.shape)}, "
        f"C is {type(C).__name__} {tuple(C.shape)}"
    )
for index, group in enumerate(optimizer.param_groups):
    print(f"group {index}: structures={group['structures']}, lr={group['lr']}")

# %%
# What the choice saves
# ---------------------
#
# Each structured matrix stores a few tensors; counting their elements gives the size
# of the preconditioner (:math:`K, C` and, with ``alpha1 > 0``, their momenta of the
# same structure). Compare with dense factors everywhere:


def factor_numbers(optimizer: SINGD) -> int:
    """Count the numbers stored in all ``K`` and ``C`` factors of ``optimizer``."""
    matrices = [*optimizer.Ks.values(), *optimizer.Cs.values()]
    return sum(t.numel() for matrix in matrices for _, t in matrix.named_tensors())


dense_optimizer = SINGD(make_model(), structures=("dense", "dense"))
print(f"per-layer structures: {factor_numbers(optimizer):,} numbers in K and C")
print(
    f"dense everywhere:     {factor_numbers(dense_optimizer):,} numbers in K and C"
)

# %%
# Training
# --------
#
# The training loop does not change. For comparison we train the same network with
# dense factors in every layer.


def train(optimizer: SINGD, model: nn.Module, epochs: int = 4) -> list[float]:
    """Train ``model``; return the test accuracy after each epoch."""
    torch.manual_seed(0)
    accuracies = []
    for _ in range(epochs):
        permutation = torch.randperm(len(x_train))
        for start in range(0, len(x_train), 64):
            batch = permutation[start : start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(
                model(x_train[batch]), y_train[batch]
            ).backward()
            optimizer.step()
        with torch.no_grad():
            accuracies.append(
                (model(x_test).argmax(1) == y_test).float().mean().item()
            )
    return accuracies


mixed = train(optimizer, model)
dense_model = make_model()
dense = train(
    SINGD(dense_model, lr=0.05, lr_cov=0.01, structures=("dense", "dense")),
    dense_model,
)
print("per-layer structures:", [f"{a:.3f}" for a in mixed])
print("dense everywhere:    ", [f"{a:.3f}" for a in dense])

fig, ax = plt.subplots(figsize=(6, 3.5))
epochs = range(1, len(mixed) + 1)
ax.plot(epochs, dense, "o-", label="dense K and C in every layer")
ax.plot(epochs, mixed, "s-", label="per-layer structures")
ax.set(xlabel="epoch", ylabel="test accuracy", xticks=list(epochs))
ax.grid(True, alpha=0.3)
ax.legend()
fig.tight_layout()

# %%
# Putting a layer's weight and bias into different groups is an error, reported before
# anything is changed:

try:
    SINGD(model, params=[{"params": [first.weight]}, {"params": [first.bias]}])
except ValueError as error:
    print("ValueError:", error)
