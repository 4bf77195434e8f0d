"""
Mixed precision, gradient accumulation, schedules and checkpoints
=================================================================

A realistic training script combines several things around the optimizer. This example
puts them together with :class:`~singd_opt.SINGD`:

- ``bfloat16`` autocast for the forward pass, with the preconditioner factors
  themselves stored in ``bfloat16``;
- a :class:`torch.amp.GradScaler`;
- gradient accumulation over several micro-batches per step;
- a learning-rate scheduler;
- saving a checkpoint and resuming from it, bit for bit.

SINGD never inverts a matrix: its factors are updated with products and sums only,
which is why it can keep them in low precision.
"""

# %%
# Setup
# -----

import io

import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from singd_opt import SINGD

images, labels = load_digits(return_X_y=True)
x_train, x_test, y_train, y_test = train_test_split(
    images, labels, test_size=0.25, random_state=0, stratify=labels
)
x_train = torch.tensor(x_train, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
x_test = torch.tensor(x_test, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)

device = "cpu"  # the same code runs on "cuda"
micro_batch, accumulation = 32, 2  # 64 samples per optimizer step
steps = 60


def make_run() -> tuple[nn.Module, SINGD, object, torch.amp.GradScaler]:
    """Create the model, optimizer, scheduler and gradient scaler of one run."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    ).to(device)
    scaler = torch.amp.GradScaler(device, init_scale=2.0**8)
    optimizer = SINGD(
        model,
        lr=0.05,
        lr_cov=0.01,
        T=5,
        structures=("hierarchical15_15", "hierarchical15_15"),
        preconditioner_dtype=(torch.bfloat16, torch.bfloat16),
        init_grad_scale=scaler.get_scale(),
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return model, optimizer, scheduler, scaler


model, optimizer, scheduler, scaler = make_run()
K = optimizer.Ks["2"]  # the first convolution (144 weights) is element-wise
print(type(K).__name__, K.dtype)

# %%
# One optimizer step
# ------------------
#
# Each micro-batch runs forward under autocast, and its loss, divided by the number of
# micro-batches, is scaled and back-propagated. SINGD accumulates the curvature of every
# backward pass until the step, so two micro-batches of 32 give the same update as one
# batch of 64. ``scaler.step`` hands the gradient scale to SINGD, which removes it from
# the gradients and from the curvature; steps whose gradients overflow are skipped.


def train_step(
    model: nn.Module,
    optimizer: SINGD,
    scheduler: object,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
) -> float:
    """Run one step over ``accumulation`` micro-batches; return the loss."""
    optimizer.zero_grad()
    total = 0.0
    for _ in range(accumulation):
        batch = torch.randint(len(x_train), (micro_batch,), generator=generator)
        inputs, targets = x_train[batch].to(device), y_train[batch].to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = (
                nn.functional.cross_entropy(model(inputs), targets) / accumulation
            )
        scaler.scale(loss).backward()
        total += loss.item()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return total


generator = torch.Generator().manual_seed(0)
losses = [
    train_step(model, optimizer, scheduler, scaler, generator)
    for _ in range(steps // 2)
]
lr = scheduler.get_last_lr()[0]
print(f"after {steps // 2} steps: loss {losses[-1]:.3f}, learning rate {lr:.4f}")

# %%
# Checkpoint
# ----------
#
# ``SINGD.state_dict()`` contains the factors ``K, C``, their momenta and the step
# counter besides the usual optimizer state; save it with the model, the scheduler, the
# scaler and the random state of the data order.

buffer = io.BytesIO()  # a file path works the same way
torch.save(
    {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "data_order": generator.get_state(),
    },
    buffer,
)
print(f"checkpoint: {buffer.tell() / 1024:.1f} KiB")

# %%
# Resume
# ------
#
# Build everything anew, load the checkpoint and train the second half in both the
# original run and the resumed one. The resumed run repeats the original exactly.

buffer.seek(0)
checkpoint = torch.load(buffer)
resumed = make_run()
resumed[0].load_state_dict(checkpoint["model"])
resumed[1].load_state_dict(checkpoint["optimizer"])
resumed[2].load_state_dict(checkpoint["scheduler"])
resumed[3].load_state_dict(checkpoint["scaler"])
resumed_generator = torch.Generator()
resumed_generator.set_state(checkpoint["data_order"])

resumed_losses = []
for _ in range(steps - steps // 2):
    losses.append(train_step(model, optimizer, scheduler, scaler, generator))
    resumed_losses.append(train_step(*resumed, resumed_generator))

pairs = zip(model.parameters(), resumed[0].parameters(), strict=True)
same = all(torch.equal(p, q) for p, q in pairs)
print("resumed run identical to the original:", same)

with torch.no_grad(), torch.autocast(device_type=device, dtype=torch.bfloat16):
    accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
print(f"test accuracy after {steps} steps: {accuracy:.3f}")

# %%
# The loss of both runs; the resumed one lies exactly on the original from step 30 on:

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(range(1, steps + 1), losses, label="original run")
ax.semilogy(
    range(steps // 2 + 1, steps + 1),
    resumed_losses,
    "--",
    label="resumed from step 30",
)
ax.set(xlabel="optimizer step", ylabel="training loss")
ax.grid(True, alpha=0.3)
ax.legend()
fig.tight_layout()
