"""The optimizer, the summaries and checkpoints use blocks only through their interface."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

from singd_opt import SINGD
from singd_opt.blocks import PreconditionerBlock, Proposal, StepContext


class SignBlock(PreconditionerBlock):
    """A block kind unknown to the optimizer: the direction is ``sign(g)``; counts its steps."""

    kind = "sign"

    def __init__(self, other: PreconditionerBlock) -> None:
        super().__init__(other.name, other.params, other.group_index)
        self.steps = 0

    def propose(self, group: Mapping[str, Any], context: StepContext) -> Proposal:
        rows = self.gradient_rows()
        directions = [(r, torch.sign(r.grad)) for r in rows if r.grad is not None]
        steps = self.steps + 1

        def commit() -> None:
            self.steps = steps

        return Proposal(directions, [d for _, d in directions], commit)

    def learning_rate(self, group: Mapping[str, Any]) -> float:
        return 0.5 * float(group["lr"])

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "steps": self.steps}

    def load_state_dict(
        self, state: Mapping[str, Any], group: Mapping[str, Any]
    ) -> Callable[[], PreconditionerBlock]:
        if state.get("kind") != self.kind:
            raise ValueError(f"state_dict: block {self.name!r} is not a sign block")
        steps = int(state["steps"])

        def load() -> PreconditionerBlock:
            self.steps = steps
            return self

        return load

    def state_tensors(self) -> list[Tensor]:
        return []

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "preconditioner": "sign of the gradient"}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2)).double()


def _step(model: nn.Module, optimizer: SINGD, scale: float = 1.0) -> None:
    generator = torch.Generator().manual_seed(optimizer.steps + optimizer.skipped_steps)
    x = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    y = torch.randn(8, 2, generator=generator, dtype=torch.float64)
    optimizer.zero_grad()
    (scale * functional.mse_loss(model(x), y)).backward()
    optimizer.step()


def test_a_new_block_kind_needs_no_change_outside_blocks() -> None:
    model = _model()
    optimizer = SINGD(model, lr=0.1, momentum=0.0, T=1, elementwise_below=0)
    index = next(i for i, b in enumerate(optimizer.blocks) if b.name == "1.weight")
    optimizer.blocks[index] = SignBlock(optimizer.blocks[index])
    before = model[1].weight.detach().clone()
    _step(model, optimizer)
    grad = model[1].weight.grad
    assert torch.equal(model[1].weight, before - 0.05 * torch.sign(grad))
    assert "sign of the gradient" in optimizer.describe()
    state = optimizer.state_dict()
    assert state["singd"]["blocks"]["1.weight"] == {"kind": "sign", "steps": 1}
    optimizer.blocks[index].steps = 7
    optimizer.load_state_dict(state)
    assert optimizer.blocks[index].steps == 1


class LateUse(nn.Module):
    """A custom module that uses its own weight through ``F.linear`` only when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(2, 4, dtype=torch.float64))
        self.use_weight = False

    def forward(self, x: Tensor) -> Tensor:
        if self.use_weight:
            return functional.linear(x, self.weight)
        return x[:, :2] * self.weight.sum()


def test_a_skipped_step_leaves_a_deferred_choice_open() -> None:
    model = LateUse()
    optimizer = SINGD(model, T=1, elementwise_below=0)
    assert [b.kind for b in optimizer.blocks] == ["deferred"]
    with pytest.warns(UserWarning, match="skipping step 0"):
        _step(model, optimizer, scale=torch.inf)  # unused as a map, and skipped
    assert optimizer.skipped_steps == 1
    assert [b.kind for b in optimizer.blocks] == ["deferred"]
    assert optimizer.state_dict()["singd"]["blocks"]["weight"] == {"kind": "deferred"}
    model.use_weight = True
    _step(model, optimizer)
    assert [b.kind for b in optimizer.blocks] == ["kronecker"]
    assert optimizer.Ks["weight"].shape == (4, 4)


def test_a_taken_step_fixes_the_deferred_choice() -> None:
    model = LateUse()
    optimizer = SINGD(model, T=1, elementwise_below=0)
    _step(model, optimizer)  # not used as a map: element-wise for good
    model.use_weight = True
    _step(model, optimizer)
    assert [b.kind for b in optimizer.blocks] == ["elementwise"]
