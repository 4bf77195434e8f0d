"""A data split of the demo: training examples and named evaluation sets.

Both demo tasks hand their data to the training loop in this form: inputs ``x`` and
targets ``y`` (class indices) whose first dimension indexes examples. The digits
have one target per image (``y`` of shape ``(N,)``); the language model one per
position of a window of characters (``y`` of shape ``(N, T)``). The loss of an example
is the mean cross-entropy over its targets, so one training loop and one evaluation
serve both (:class:`Metrics`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Split:
    """Training examples and evaluation sets, as tensors.

    Attributes:
        x_train: Training inputs, ``(N, ...)``.
        y_train: Training targets, ``(N,)`` or ``(N, T)`` (int64 class indices).
        eval_sets: Evaluation sets by name (``"test"``, ``"validation"``), each an
            ``(inputs, targets)`` pair like the training ones. The first one is the
            one monitored during training.
    """

    x_train: Tensor
    y_train: Tensor
    eval_sets: Mapping[str, tuple[Tensor, Tensor]]

    @property
    def eval_name(self) -> str:
        """The name of the first evaluation set (the one monitored during training)."""
        return next(iter(self.eval_sets))

    @property
    def x_eval(self) -> Tensor:
        """The inputs of the first evaluation set."""
        return self.eval_sets[self.eval_name][0]

    @property
    def y_eval(self) -> Tensor:
        """The targets of the first evaluation set."""
        return self.eval_sets[self.eval_name][1]

    def to(self, device: torch.device | str) -> Split:
        """Return a copy with every tensor moved to ``device``."""
        return Split(
            self.x_train.to(device),
            self.y_train.to(device),
            {name: (x.to(device), y.to(device)) for name, (x, y) in self.eval_sets.items()},
        )


@dataclass(frozen=True)
class Metrics:
    """What is measured on a set of examples.

    Attributes:
        loss: Mean cross-entropy per target, in nats.
        accuracy: Fraction of targets whose class has the largest logit.
    """

    loss: float
    accuracy: float
