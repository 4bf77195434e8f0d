"""
Basic usage
===========

:class:`~singd_opt.SINGD` is used like any PyTorch optimizer, with one difference: it
takes the *model* as its first argument. It installs hooks on the model's supported
layers (:class:`~torch.nn.Linear` and the convolutions) to collect the curvature
information it needs during the forward and backward passes. This example trains a
small network on scikit-learn's bundled handwritten digits.
"""

# %%
# Data
# ----
#
# The 1797 digits are 8x8 grey-scale images that ship with scikit-learn, so nothing is
# downloaded. We flatten them to 64 features in ``[0, 1]`` and hold out a quarter as
# test set.

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
print(x_train.shape, x_test.shape)

# %%
# Model and optimizer
# -------------------
#
# A two-layer perceptron. ``structures`` picks the structure of the two Kronecker
# factors :math:`K` (input side) and :math:`C` (output side) of every layer; here both
# are lower-triangular Toeplitz matrices, which store one number per diagonal. ``T``
# says how often (in steps) the factors are updated, ``lr_cov`` how fast.

model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
optimizer = SINGD(
    model,
    lr=0.05,
    momentum=0.9,
    lr_cov=0.01,
    damping=1e-3,
    T=10,
    structures=("triltoeplitz", "triltoeplitz"),
)
loss_function = nn.CrossEntropyLoss()

# %%
# The optimizer keeps ``K`` and ``C`` per layer, keyed by the layer's name in the model.
# Both start as the identity:

for name in optimizer.Ks:
    K, C = optimizer.Ks[name], optimizer.Cs[name]
    kind = type(K).__name__
    print(f"layer {name}: K {tuple(K.shape)} and C {tuple(C.shape)}, both {kind}")

# %%
# The training loop
# -----------------
#
# Exactly the usual loop: ``zero_grad``, forward, ``backward``, ``step``. Use
# ``loss_average="batch"`` (the default) with a loss that averages over the batch, as
# here, or ``None`` with a summed loss, so that the curvature is scaled like the
# gradient.


def accuracy(inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Return the classification accuracy of ``model`` on ``inputs``."""
    with torch.no_grad():
        return (model(inputs).argmax(dim=1) == targets).float().mean().item()


batch_size, epochs = 64, 5
steps_per_epoch = len(x_train) // batch_size  # drop the incomplete last batch
losses = []
for epoch in range(epochs):
    permutation = torch.randperm(len(x_train))
    for step in range(steps_per_epoch):
        batch = permutation[step * batch_size : (step + 1) * batch_size]
        optimizer.zero_grad()
        loss = loss_function(model(x_train[batch]), y_train[batch])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    mean_loss = sum(losses[-steps_per_epoch:]) / steps_per_epoch
    test = accuracy(x_test, y_test)
    print(f"epoch {epoch + 1}: mean loss {mean_loss:.4f}, test accuracy {test:.3f}")

# %%
# The loss per step:

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(losses)
ax.set(
    xlabel="step",
    ylabel="training loss (mini-batch)",
    title="SINGD, triltoeplitz factors",
)
ax.grid(True, alpha=0.3)
fig.tight_layout()

# %%
# After training, ``K`` is no longer the identity. It is still a lower-triangular
# Toeplitz matrix: the update stays in the structure.

torch.set_printoptions(precision=4)
K = optimizer.Ks["0"]
print(type(K).__name__, K.to_dense()[:4, :4])

# %%
# Everything else works as for other optimizers: ``optimizer.state_dict()`` holds the
# factors for checkpoints, parameter groups can set hyper-parameters (and structures)
# per layer, and ``torch.optim.lr_scheduler`` schedules ``lr``. The next examples show
# these in turn.
