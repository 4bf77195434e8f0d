"""The small convolutional network trained by the demo."""

from __future__ import annotations

from torch import nn

from singd_opt_demo.data import NUM_CLASSES


def make_cnn() -> nn.Sequential:
    """Build the demo CNN for ``(N, 1, 8, 8)`` images.

    Two 3x3 convolutions (16 and 32 channels, each followed by ReLU and 2x2 max
    pooling) and two linear layers (128 -> 64 -> 10). Every trainable layer is a
    ``Conv2d`` or ``Linear``, so SINGD preconditions all of them. About 14k
    parameters. Seed ``torch`` before calling it to get a reproducible initialisation.

    Returns:
        The network, in training mode, on the CPU.
    """
    return nn.Sequential(
        nn.Conv2d(1, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 64),
        nn.ReLU(),
        nn.Linear(64, NUM_CLASSES),
    )
