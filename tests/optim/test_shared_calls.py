"""A layer called several times in one forward pass: the calls act as extra positions.

Calling a linear layer on ``x1`` and ``x2`` in the same forward pass shares its weight
like a layer applied to a sequence of two positions. Its curvature must therefore be
that of one call on ``torch.stack([x1, x2], dim=1)`` (``kfac_approx="expand"``): the
mean of the input outer products over all rows, and the sum of the calls' output-side
terms with the loss terms counted once. The reference is the dense re-implementation
run on the stacked model; separate backward passes still merge as gradient
accumulation.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

from singd_opt import SINGD
from tests.optim.dense_reference_impl import DenseSINGD, single_intra_op_thread

DTYPE = torch.float64


class TwoCalls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(5, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.head(torch.tanh(self.shared(x1)) + torch.tanh(self.shared(x2)))


class Stacked(nn.Module):
    """The same function with one call on two positions."""

    def __init__(self, model: TwoCalls) -> None:
        super().__init__()
        self.shared = nn.Linear(5, 4)
        self.head = nn.Linear(4, 3)
        self.load_state_dict(model.state_dict())

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return self.head(torch.tanh(self.shared(torch.stack([x1, x2], dim=1))).sum(dim=1))


@pytest.mark.parametrize("kfac_like", [False, True])
def test_two_calls_equal_one_call_on_two_positions(kfac_like: bool) -> None:
    torch.manual_seed(0)
    model = TwoCalls().to(DTYPE)
    stacked = Stacked(model).to(DTYPE)
    config = {
        "T": 1,
        "lr": 0.1,
        "lr_cov": 0.2,
        "damping": 0.1,
        "kfac_like": kfac_like,
        "alpha1": 0.0 if kfac_like else 0.5,
    }
    generator = torch.Generator().manual_seed(1)
    with single_intra_op_thread():
        optimizer = SINGD(
            model, **{"defaults": "reference", "train_all_parameters": True, **config}
        )
        reference = DenseSINGD(stacked, **config)
        for step in range(5):
            x1, x2 = (torch.randn(6, 5, dtype=DTYPE, generator=generator) for _ in range(2))
            y = torch.randint(0, 3, (6,), generator=generator)
            for net, opt in ((model, optimizer), (stacked, reference)):
                opt.zero_grad()
                functional.cross_entropy(net(x1, x2), y).backward()
                opt.step()
            for name in ("shared", "head"):
                torch.testing.assert_close(
                    optimizer.Ks[name].to_dense(),
                    reference.K[name],
                    rtol=1e-10,
                    atol=1e-12,
                    msg=f"step {step} K {name}",
                )
                torch.testing.assert_close(
                    optimizer.Cs[name].to_dense(),
                    reference.C[name],
                    rtol=1e-10,
                    atol=1e-12,
                    msg=f"step {step} C {name}",
                )
            torch.testing.assert_close(
                model.shared.weight, stacked.shared.weight, rtol=1e-10, atol=1e-12
            )


def test_separate_backward_passes_still_accumulate() -> None:
    """Two backward passes whose losses add up to the mean: one pass over both halves."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 4).to(DTYPE)
    copy = nn.Linear(5, 4).to(DTYPE)
    copy.load_state_dict(layer.state_dict())
    accumulating = SINGD(layer, T=1, defaults="reference", train_all_parameters=True)
    one_pass = SINGD(copy, T=1, defaults="reference", train_all_parameters=True)
    x = torch.randn(8, 5, dtype=DTYPE)
    for half in x.chunk(2):
        functional.mse_loss(layer(half), torch.zeros(4, 4, dtype=DTYPE)).mul(0.5).backward()
    functional.mse_loss(copy(x), torch.zeros(8, 4, dtype=DTYPE)).backward()
    assert accumulating.H_counts[""] == one_pass.H_counts[""] == (8, 8)
    for kind in ("H_Ks", "H_Cs"):
        torch.testing.assert_close(
            getattr(accumulating, kind)[""].to_dense(), getattr(one_pass, kind)[""].to_dense()
        )
