"""
Layers SINGD does not support
=============================

:class:`~singd_opt.SINGD` preconditions the layers listed in
``SINGD.SUPPORTED_MODULES`` (linear layers and convolutions). Other layers with
parameters, such as normalization layers or embeddings, are left alone: SINGD warns
about them and does not update them. Train them with a second optimizer that runs
alongside SINGD.
"""

# %%
# A network with normalization layers
# -----------------------------------

import warnings

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
# SINGD alone warns
# -----------------
#
# Without ``params``, SINGD takes the parameters of the supported layers and warns once
# per layer it skips:

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    probe = SINGD(model)
for warning in caught:
    print(warning.message)
probe.remove_hooks()  # this optimizer is not used; detach it from the model

# %%
# Two optimizers side by side
# ---------------------------
#
# Split the parameters: SINGD for the layers it supports, AdamW for the rest. Passing
# ``warn_unsupported=False`` says the skipped layers are taken care of.

supported_layers = [
    m for m in model.modules() if isinstance(m, SINGD.SUPPORTED_MODULES)
]
supported = [p for layer in supported_layers for p in layer.parameters()]
others = [p for p in model.parameters() if all(p is not q for q in supported)]
print(f"{len(supported)} tensors for SINGD, {len(others)} for AdamW")

singd = SINGD(
    model,
    lr=0.05,
    lr_cov=0.01,
    warn_unsupported=False,
    structures=("dense", "dense"),
)
adamw = torch.optim.AdamW(others, lr=1e-2)
optimizers = [singd, adamw]

# %%
# The loop calls ``zero_grad`` and ``step`` on both. One backward pass serves both
# optimizers. The norm layers' parameters change only because of AdamW:

bn_scale_before = model[1].weight.detach().clone()
losses = []
for epoch in range(3):
    model.train()
    permutation = torch.randperm(len(x_train))
    for start in range(0, len(x_train) - 63, 64):  # full batches of 64
        batch = permutation[start : start + 64]
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
        loss.backward()
        for optimizer in optimizers:
            optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    print(f"epoch {epoch + 1}: test accuracy {accuracy:.3f}")

change = (model[1].weight.detach() - bn_scale_before).abs().max().item()
print(f"largest change of a BatchNorm scale: {change:.3f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(losses)
ax.set(xlabel="step", ylabel="training loss", title="SINGD and AdamW together")
ax.grid(True, alpha=0.3)
fig.tight_layout()

# %%
# Calling both optimizers in a loop keeps the code short. The same pattern works with a
# learning-rate scheduler per optimizer, and ``state_dict`` of each goes into the
# checkpoint (see the advanced example).
