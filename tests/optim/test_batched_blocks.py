"""Blocks proposed together (same batch key) step exactly as if proposed alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from singd_opt import SINGD
from singd_opt.blocks import ElementwiseBlock, KroneckerBlock, StepContext


class Stack(nn.Module):
    """Four equal 12 -> 12 maps (one signature), a wider one and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.same = nn.ModuleList(nn.Linear(12, 12) for _ in range(4))
        self.wide = nn.Linear(12, 20)
        self.head = nn.Linear(20, 3)
        self.norm = nn.LayerNorm(12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.same:
            x = torch.tanh(layer(self.norm(x)))
        return self.head(torch.tanh(self.wide(x)))


def _train(
    options: dict[str, Any],
    alone: bool,
    monkeypatch: pytest.MonkeyPatch,
    steps: int = 4,
    dtype: torch.dtype = torch.float64,
    scaled: bool = False,
) -> tuple[list[torch.Tensor], list[int]]:
    """Train :class:`Stack` in ``dtype``; return the parameters and the Kronecker batches' sizes.

    ``alone``: every block's :meth:`batch_key` is ``None`` (each proposed by itself).
    ``scaled``: through a gradient scaler whose scale (from ``2**10``) changes every step.
    """
    batch_sizes: list[int] = []
    with monkeypatch.context() as patch:
        if alone:
            for kind in (KroneckerBlock, ElementwiseBlock):
                patch.setattr(kind, "batch_key", lambda self, group, context: None)
        original: Callable[..., Any] = KroneckerBlock.propose_batch

        def counted(self: KroneckerBlock, blocks: list, group: Any, context: Any) -> Any:
            batch_sizes.append(len(blocks))
            return original(self, blocks, group, context)

        patch.setattr(KroneckerBlock, "propose_batch", counted)
        torch.manual_seed(0)
        model = Stack().to(dtype)
        optimizer = SINGD(model, lr=3e-3, **options, elementwise_below=0)
        scaler = torch.amp.GradScaler(
            "cpu", init_scale=2.0**10, growth_factor=3.0, growth_interval=1, enabled=scaled
        )
        generator = torch.Generator().manual_seed(1)
        for _ in range(steps):
            x = torch.randn(16, 12, generator=generator, dtype=torch.float64).to(dtype)
            y = torch.randint(0, 3, (16,), generator=generator)
            optimizer.zero_grad()
            scaler.scale(nn.functional.cross_entropy(model(x).double(), y)).backward()
            scaler.step(optimizer)
            scaler.update()
    return [p.detach().clone() for p in model.parameters()], batch_sizes


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"T": 2},
        {"alpha1": 0.5, "graft": "rms"},
        {"graft": None, "structures": ("dense", "diagonal")},
        {"T": 3, "structures": ("block4diagonal", "dense"), "warm_start": False},
        {"defaults": "reference", "train_all_parameters": True},
        {"elementwise_lr": 1e-3, "momentum_dampening": False},
        {"structures": ("triltopleftdiag", "triubottomrightdiag")},
        {"T": 2, "alpha1": 0.5, "structures": ("triubottomrightdiag", "trilbottomrightdiag")},
        {"structures": ("tril", "triu")},
        {"structures": ("triltoeplitz", "triutoeplitz")},
    ],
    ids=[
        "defaults",
        "T2",
        "momenta-rms",
        "dense-diagonal",
        "T3-block4",
        "reference",
        "elementwise",
        "arrows",
        "T2-momenta-arrows",
        "triangular",
        "toeplitz",
    ],
)
def test_batched_blocks_step_like_blocks_alone(
    options: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    batched, sizes = _train(options, alone=False, monkeypatch=monkeypatch)
    alone, sizes_alone = _train(options, alone=True, monkeypatch=monkeypatch)
    assert sizes and max(sizes) == 4, f"the four equal maps were not batched: {sizes}"
    assert not sizes_alone
    for got, expected in zip(batched, alone, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_batched_blocks_in_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    """bfloat16 factors and gradients batch without warnings and agree to a unit or two.

    A batched product may sum in another order than one product per block; the
    directions then differ far below a weight's resolution, but a weight update near a
    rounding boundary can round the other way, once or twice in four steps: a unit in
    the last place of bfloat16 is at most :math:`2^{-7}` of the weight.
    """
    batched, sizes = _train({}, alone=False, monkeypatch=monkeypatch, dtype=torch.bfloat16)
    alone, _ = _train({}, alone=True, monkeypatch=monkeypatch, dtype=torch.bfloat16)
    assert sizes and max(sizes) == 4
    for got, expected in zip(batched, alone, strict=True):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got, expected, rtol=2**-6, atol=2**-9)


def test_structures_that_do_not_stack_go_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hierarchical factors do not declare ``batches_natively``: never batched."""
    _, sizes = _train(
        {"structures": ("hierarchical3_3", "dense")}, alone=False, monkeypatch=monkeypatch
    )
    assert sizes == []


def test_a_batch_of_mixed_kinds_is_refused() -> None:
    model = Stack()
    optimizer = SINGD(model, lr=1e-3, elementwise_below=0)
    kronecker = next(b for b in optimizer.blocks if isinstance(b, KroneckerBlock))
    elementwise = next(b for b in optimizer.blocks if isinstance(b, ElementwiseBlock))
    group, context = optimizer.param_groups[0], StepContext(step=0)
    with pytest.raises(TypeError, match="KroneckerBlock"):
        kronecker.propose_batch([kronecker, elementwise], group, context)
    with pytest.raises(TypeError, match="ElementwiseBlock"):
        elementwise.propose_batch([elementwise, kronecker], group, context)


def test_batched_blocks_with_a_gradient_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scale carried by the gradients and the curvature is removed in the batch as alone."""
    options = {"T": 2, "init_grad_scale": 2.0**10}
    batched, sizes = _train(options, alone=False, monkeypatch=monkeypatch, scaled=True)
    alone, _ = _train(options, alone=True, monkeypatch=monkeypatch, scaled=True)
    assert sizes and max(sizes) == 4
    for got, expected in zip(batched, alone, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
