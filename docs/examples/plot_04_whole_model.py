"""
Training the whole model
========================

:class:`~singd_opt.SINGD` trains every parameter it is given, and with no ``params``
every trainable parameter of the model. The weights of linear maps (linear layers,
convolutions, embeddings, the projections of attention) get Kronecker-factored
preconditioners; every other parameter (normalization scales and shifts, free
parameters) gets an element-wise, Adam-like preconditioner, and so do maps with fewer
than ``elementwise_below`` weights (1024 by default; below, the one-channel
convolution and the 64 x 10 head), whose preconditioning does not pay for a Kronecker
block's step. ``optimizer.describe()`` lists which block preconditions which parameter.

The reference optimizer trains only linear layers and convolutions and is usually
paired with a second optimizer for the rest. That behaviour is one argument away:
``train_all_parameters=False``.
"""

# %%
# A network with normalization layers
# -----------------------------------

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
x_train = torch.tensor(x_train, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
x_test = torch.tensor(x_test, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)

model = nn.Sequential(
    nn.Conv2d(1, 16, kernel_size=3, padding=1),
    nn.BatchNorm2d(16),
    nn.ReLU(),
    nn.MaxPool2d(2),
    nn.Flatten(),
    nn.Linear(16 * 4 * 4, 64),
    nn.LayerNorm(64),
    nn.ReLU(),
    nn.Linear(64, 10),
)
print(SINGD.SUPPORTED_MODULES)

# %%
# One optimizer for everything
# ----------------------------
#
# The element-wise blocks have their own learning rate, ``elementwise_lr`` (``lr`` when
# unset), so one optimizer covers both kinds of parameters:

singd = SINGD(model, lr=0.05, lr_cov=0.01, elementwise_lr=2e-3)
print(singd.describe())

# %%
# The loop is the usual one. The BatchNorm and LayerNorm parameters train too:

bn_scale_before = model[1].weight.detach().clone()
losses = []
for epoch in range(3):
    model.train()
    permutation = torch.randperm(len(x_train))
    for start in range(0, len(x_train) - 63, 64):  # full batches of 64
        batch = permutation[start : start + 64]
        singd.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
        loss.backward()
        singd.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"epoch {epoch + 1}: test accuracy {accuracy:.3f}")

change = (model[1].weight.detach() - bn_scale_before).abs().max().item()
print(f"largest change of a BatchNorm scale: {change:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(losses)
ax.set(xlabel="step", ylabel="training loss", title="SINGD on every parameter")
ax.grid(True, alpha=0.3)
fig.tight_layout()

# %%
# The reference's way: two optimizers
# -----------------------------------
#
# Code written for the reference splits the parameters: SINGD for the linear layers
# and convolutions, AdamW for the rest. With ``train_all_parameters=False`` SINGD
# takes only the former (and warns about the layers it leaves, unless
# ``warn_unsupported=False`` says they are taken care of). Without that argument the
# norm layers would be updated by both optimizers; SINGD notices parameters that
# something else changes step after step and warns.

singd.remove_hooks()  # the first optimizer is done; detach it from the model
supported_layers = [m for m in model.modules() if isinstance(m, SINGD.SUPPORTED_MODULES)]
supported = [p for layer in supported_layers for p in layer.parameters()]
others = [p for p in model.parameters() if all(p is not q for q in supported)]
print(f"{len(supported)} tensors for SINGD, {len(others)} for AdamW")

optimizers = [
    SINGD(model, lr=0.05, lr_cov=0.01, train_all_parameters=False, warn_unsupported=False),
    torch.optim.AdamW(others, lr=1e-2),
]
for start in range(0, 640, 64):
    batch = torch.arange(start, start + 64)
    for optimizer in optimizers:
        optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
    loss.backward()
    for optimizer in optimizers:
        optimizer.step()
print(f"loss after 10 more steps with two optimizers: {loss.item():.3f}")

# %%
# The differences from the reference are listed on :doc:`/differences`.
