"""The per-layer structure choice (``"auto"``), its memory budget and the large-factor warning."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from singd_opt import SINGD
from singd_opt.structure_choice import (
    AUTO_BUDGET,
    MAX_BLOCK,
    WARN_MULTIPLE,
    adamw_factor_budget,
    choose_structure,
    choose_within_budget,
    copies_per_side,
)
from structmat import get_structure


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

    # "adamw": 2 * 4096 numbers, less the momentum buffer (4096) and the grafting
    # moment (128): K (the first of two equal sides) within 1984, blocks of 16 (1024
    # numbers), then C within 2944, blocks of 32
    assert structures() == ("block16diagonal", "block32diagonal")
    # T = 3 keeps K K^T as well: two matrices per side, blocks of 8 and 16
    assert structures(T=3) == ("block8diagonal", "block16diagonal")
    # without the momentum buffer the factors get another 4096 numbers
    assert structures(momentum=0.0) == ("block32diagonal", "dense")
    assert structures(auto_budget=0.25) == ("block16diagonal", "block16diagonal")
    assert structures(auto_budget=0.5) == ("block32diagonal", "block32diagonal")
    assert structures(auto_budget=0.25, T=3) == ("block8diagonal", "block8diagonal")
    assert structures(auto_budget=1.0) == ("dense", "dense")


@pytest.mark.parametrize(
    ("budget", "error"),
    [
        (0.0, ValueError),
        (-1.0, ValueError),
        ("1", ValueError),
        ("AdamW", ValueError),
        (None, TypeError),
    ],
)
def test_a_bad_budget_is_refused(budget: object, error: type) -> None:
    with pytest.raises(error, match="auto_budget"):
        SINGD(nn.Linear(4, 4), auto_budget=budget)  # type: ignore[arg-type]


# ------------------------------------------------------------- auto_budget="adamw"
def numbers(name: str, dim: int, copies: int) -> int:
    return copies * get_structure(name).stored_numbers(dim)


def test_adamw_budget_rules() -> None:
    # the digits CNN's second convolution: K = 16 x 9 + bias = 145, C = 32;
    # B = 4640 - 177 = 4463. C (narrower) is dense within 2231 (1024 numbers), K then
    # takes blocks within 3439: at most 23, and 18 divides the 144 weight columns
    budget = adamw_factor_budget(145 * 32, momentum=True, moment_numbers=145 + 32)
    assert budget == 4463
    assert choose_within_budget((145, 32), (None, None), budget, 1, True) == (
        "block18diagonal",
        "dense",
    )
    # without a bias column no divisor of 145 lies in (11, 23]: blocks of 23
    assert choose_within_budget((145, 32), (None, None), budget, 1, False) == (
        "block23diagonal",
        "dense",
    )
    # a given side is taken from the budget first (an embedding's diagonal K): C is
    # dense within 4160 - 64 = 4096, not within one number less
    fixed_K = numbers("diagonal", 64, 1)
    assert choose_within_budget((64, 64), (fixed_K, None), 4160, 1, False) == (None, "dense")
    assert choose_within_budget((64, 64), (fixed_K, None), 4159, 1, False) == (
        None,
        "block32diagonal",
    )
    assert choose_within_budget((64, 64), (10**6, None), 3968, 1, False) == (None, "diagonal")
    # without the momentum buffer the factors may keep twice the weight
    assert adamw_factor_budget(100, momentum=False, moment_numbers=0) == 200


def test_the_narrower_side_leaves_the_wider_one_a_diagonal() -> None:
    # d = 10 and 1000 with B = 1010: dense 10 x 10 (100 numbers, within half) would
    # leave 910 < 1000 for the wider side, so the narrower side keeps at most 10
    assert choose_within_budget((1000, 10), (None, None), 1010, 1, False) == (
        "diagonal",
        "diagonal",
    )


@settings(max_examples=300, deadline=None)
@given(
    dim_K=st.integers(1, 700),
    dim_C=st.integers(1, 700),
    copies=st.integers(1, 3),
    bias=st.booleans(),
    momentum=st.booleans(),
    fixed_side=st.sampled_from([None, 0, 1]),
)
def test_adamw_budget_is_kept_whenever_diagonal_factors_fit(
    dim_K: int, dim_C: int, copies: int, bias: bool, momentum: bool, fixed_side: int | None
) -> None:
    dims = (dim_K, dim_C)
    budget = adamw_factor_budget(dim_K * dim_C, momentum, dim_K + dim_C)
    fixed: list[int | None] = [None, None]
    if fixed_side is not None:
        fixed[fixed_side] = numbers("diagonal", dims[fixed_side], copies)
    chosen = choose_within_budget(dims, (fixed[0], fixed[1]), budget, copies, bias)
    assert (chosen[0] is None) == (fixed[0] is not None)
    assert (chosen[1] is None) == (fixed[1] is not None)
    used = sum(
        numbers(name, dim, copies) if name is not None else given_numbers
        for name, dim, given_numbers in zip(chosen, dims, fixed, strict=True)
    )
    if copies * (dim_K + dim_C) <= budget:
        assert used <= budget, chosen
    for name, dim in zip(chosen, dims, strict=True):
        if name is not None and name.startswith("block"):
            block = get_structure(name).block_size
            assert 2 <= block <= min(dim, MAX_BLOCK)
        if name == "dense":
            assert dim <= MAX_BLOCK


@pytest.mark.parametrize(
    "options",
    [{}, {"T": 3}, {"alpha1": 0.5}, {"momentum": 0.0}, {"graft": "rms"}],
    ids=["defaults", "T3", "alpha1", "no-momentum", "rms"],
)
def test_adamw_budget_keeps_each_block_within_adamws_state(options: dict[str, object]) -> None:
    """After steps, every Kronecker block with its momentum buffer keeps <= 2 x its weight."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(50, 24),
        nn.Flatten(),
        nn.Linear(3 * 24, 80),
        nn.ReLU(),
        nn.Unflatten(1, (5, 4, 4)),
        nn.Conv2d(5, 40, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(40 * 16, 33, bias=False),
    )
    optimizer = SINGD(model, lr=1e-3, **options)  # type: ignore[arg-type]
    assert optimizer.param_groups[0]["auto_budget"] == "adamw"
    x = torch.randint(0, 50, (6, 3))
    for _ in range(4):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    kronecker = [block for block in optimizer.blocks if block.name in optimizer.Ks]
    assert len(kronecker) == 4  # the embedding, both linear maps and the convolution
    for block in kronecker:
        params = [rows.param for rows in block.layer.params]
        weight_bytes = sum(p.numel() * p.element_size() for p in params)
        buffers = sum(
            optimizer.state[p]["momentum_buffer"].numel() * p.element_size()
            for p in params
            if "momentum_buffer" in optimizer.state[p]
        )
        size = sum(t.numel() * t.element_size() for t in block.state_tensors())
        assert size + buffers <= 2 * weight_bytes, (block.name, block.structures)
    assert optimizer.state_bytes() <= adamw_bytes(model)


def test_a_checkpoint_keeps_the_budget_it_was_saved_with() -> None:
    """An optimizer saved with ``auto_budget=0.25`` loads into one with the defaults."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    saved = SINGD(model, lr=1e-3, auto_budget=0.25)
    x = torch.randn(8, 64)
    for _ in range(2):
        saved.zero_grad()
        model(x).square().mean().backward()
        saved.step()
    loaded = SINGD(model, lr=1e-3)
    assert loaded.blocks[0].structures == ("block32diagonal", "block16diagonal")
    loaded.load_state_dict(saved.state_dict())
    assert loaded.param_groups[0]["auto_budget"] == 0.25
    for old, new in zip(saved.blocks, loaded.blocks, strict=True):
        assert new.structures == old.structures == ("block16diagonal", "block16diagonal")
        for a, b in zip(old.state_tensors(), new.state_tensors(), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_budget_is_a_group_option() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    optimizer = SINGD(
        model,
        [
            {"params": model[0].parameters(), "auto_budget": 0.25},
            {"params": model[2].parameters()},
        ],
        lr=1e-3,
    )
    assert [block.structures for block in optimizer.blocks] == [
        ("block16diagonal", "block16diagonal"),
        ("block32diagonal", "block16diagonal"),
    ]
    with pytest.raises(ValueError, match=r"auto_budget must be 'adamw' or a number > 0.*group 1"):
        SINGD(
            model,
            [
                {"params": model[0].parameters()},
                {"params": model[2].parameters(), "auto_budget": "half"},
            ],
        )
