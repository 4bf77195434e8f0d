"""The per-layer structure choice (``"auto"``), its memory budget and the large-factor warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from singd_opt import SINGD
from singd_opt.structure_choice import (
    AUTO_BUDGET,
    MAX_BLOCK,
    WARN_MULTIPLE,
    choose_structure,
    copies_per_side,
)


def adamw_bytes(model: nn.Module) -> int:
    return 2 * sum(p.numel() * p.element_size() for p in model.parameters())


def test_choice_rules() -> None:
    # dense when c d^2 <= f d_C d_K: d = 10, weight 10 x 400, c = 3: 300 <= 1000
    assert choose_structure(10, 4000, 3) == "dense"
    # block size floor(f n / (c d)): d = 100, n = 100 * 100, c = 3: floor(2500 / 300) = 8
    assert choose_structure(100, 10_000, 3) == "block8diagonal"
    # too little memory for blocks of 2
    assert choose_structure(100, 1000, 3) == "diagonal"
    # dense is capped at MAX_BLOCK even with memory to spare, blocks as well
    assert choose_structure(MAX_BLOCK + 1, 10**9, 3) == f"block{MAX_BLOCK}diagonal"
    assert copies_per_side(0.5, 10) == 3 and copies_per_side(0.0, 10) == 2
    assert copies_per_side(0.5) == 2 and copies_per_side(0.0, T=1) == 1


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


@pytest.mark.parametrize("budget", [AUTO_BUDGET, 0.5])
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("alpha1", [0.0, 0.5])
def test_auto_state_stays_within_the_budget(alpha1: float, T: int, budget: float) -> None:
    """After steps (momenta, cached products), auto factors keep <= 2 f x the weights.

    The grafting moment (``d_K + d_C`` numbers) comes on top.
    """
    model = conv_net()
    optimizer = SINGD(
        model,
        structures=("auto", "auto"),
        alpha1=alpha1,
        momentum=0.0,
        T=T,
        auto_budget=budget,
        elementwise_below=0,
    )
    x = torch.randn(4, 3, 4, 4)
    for _ in range(T + 1):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    for block in optimizer.blocks:
        layer = block.layer
        weight = layer.dim_K * layer.dim_C * 4
        size = sum(t.numel() * t.element_size() for t in block.state_tensors())
        moment = (layer.dim_K + layer.dim_C) * 4  # the grafting moment (graft="adafactor")
        assert size <= 2 * budget * weight + moment, (block.name, block.structures)
    if budget == AUTO_BUDGET:
        assert optimizer.state_bytes() <= adamw_bytes(model)
    # describe() shows the chosen structures
    table = optimizer.describe()
    for block in optimizer.blocks:
        assert f"K {block.structures[0]} {block.layer.dim_K}" in table


def test_explicit_large_factors_warn_with_the_figure() -> None:
    model = nn.Linear(600, 4)
    with pytest.warns(UserWarning, match=r"(?s)more than 4x .*K dense 601.*x the weight") as record:
        SINGD(model, structures=("dense", "dense"), alpha1=0.5)
    ratio = (2 * 601 * 601 + 2 * 16) / (601 * 4)  # K, m_K, C, m_C against the weight
    assert f"{ratio:.1f}x" in str(record[0].message)
    assert WARN_MULTIPLE == 4.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SINGD(nn.Linear(600, 4), structures=("auto", "auto"))
        # 4.5x the weight, but below WARN_MIN_BYTES
        SINGD(nn.Linear(8, 8), structures=("dense", "dense"), elementwise_below=0)


def test_the_budget_and_the_period_choose_the_block_size() -> None:
    """A 64-wide layer: ``T=1`` keeps one matrix per side, ``T > 1`` also ``K K^T``."""

    def structures(**options: object) -> tuple[str, str]:
        optimizer = SINGD(nn.Linear(64, 64, bias=False), lr=1e-3, **options)  # type: ignore[arg-type]
        return optimizer.blocks[0].structures

    assert structures() == ("block16diagonal", "block16diagonal")
    assert structures(auto_budget=0.5) == ("block32diagonal", "block32diagonal")
    assert structures(T=3) == ("block8diagonal", "block8diagonal")
    assert structures(auto_budget=1.0) == ("dense", "dense")


@pytest.mark.parametrize(
    ("budget", "error"), [(0.0, ValueError), (-1.0, ValueError), ("1", TypeError)]
)
def test_a_bad_budget_is_refused(budget: object, error: type) -> None:
    with pytest.raises(error, match="auto_budget"):
        SINGD(nn.Linear(4, 4), auto_budget=budget)  # type: ignore[arg-type]
