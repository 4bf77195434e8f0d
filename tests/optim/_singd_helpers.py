"""Small models, data and training loops shared by the optimizer feature tests."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from singd_opt import SINGD


def mlp(dtype: torch.dtype = torch.float32, widths: tuple[int, ...] = (6, 5, 4, 3)) -> nn.Module:
    """A small MLP with biases (except the second layer) and ReLU activations."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for index, (d_in, d_out) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(d_in, d_out, bias=index != 1))
        if index < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).to(dtype)


def batches(
    steps: int, batch: int = 8, d_in: int = 6, classes: int = 3, dtype: torch.dtype = torch.float32
) -> list[tuple[Tensor, Tensor]]:
    """Fixed random classification batches."""
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(batch, d_in, generator=generator, dtype=dtype),
            torch.randint(0, classes, (batch,), generator=generator),
        )
        for _ in range(steps)
    ]


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: list[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> list[float]:
    """Run one step per batch; return the losses."""
    loss_fn = loss_fn or nn.functional.cross_entropy
    losses = []
    for x, y in data:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def trained_copy(
    model: nn.Module, data: list[tuple[Tensor, Tensor]], **kwargs: Any
) -> tuple[nn.Module, SINGD]:
    """Train a deep copy of ``model`` with ``SINGD(**kwargs)`` on ``data``.

    Arguments not in ``kwargs`` take the reference's defaults, except that every
    parameter is trained.
    """
    model = copy.deepcopy(model)
    optimizer = SINGD(model, **{"defaults": "reference", "train_all_parameters": True, **kwargs})
    train(model, optimizer, data)
    return model, optimizer


def assert_same_parameters(a: nn.Module, b: nn.Module, **tolerances: float) -> None:
    """Parameters equal (bitwise without tolerances)."""
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        if tolerances:
            torch.testing.assert_close(p, q, **tolerances, msg=lambda m, n=name: f"{n}: {m}")
        else:
            assert torch.equal(p, q), name


def dense_factors(optimizer: SINGD) -> dict[str, Tensor]:
    """Every ``K`` and ``C`` as a dense tensor, keyed ``"K:<layer>"`` / ``"C:<layer>"``."""
    out = {f"K:{name}": K.to_dense() for name, K in optimizer.Ks.items()}
    out.update({f"C:{name}": C.to_dense() for name, C in optimizer.Cs.items()})
    return out
