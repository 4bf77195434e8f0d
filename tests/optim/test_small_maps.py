r"""``elementwise_below``: the weights of small maps are trained by the element-wise rule.

Which blocks are Kronecker is read from ``optimizer.Ks``; the first step of a weight
trained element-wise is checked against the element-wise rule's closed form: with
the bias-corrected moments of the recommended defaults, one gradient :math:`g` gives
the direction :math:`g / (|g| + \epsilon)` and the step :math:`-\text{lr}\, g / (|g| +
\epsilon)`.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

from singd_opt import SINGD

LR = 0.01


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(  # conv: 4 x 9 = 36 weights; linear: 8 x 144 = 1152
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 8)
    )


@pytest.mark.parametrize(("below", "kronecker"), [(0, {"0", "3"}), (37, {"3"}), (36, {"0", "3"})])
def test_threshold_is_strict_and_counts_entries(below: int, kronecker: set[str]) -> None:
    optimizer = SINGD(_cnn(), lr=LR, elementwise_below=below)
    assert set(optimizer.Ks) == kronecker
    reason = f"(small map: 36 weights < elementwise_below={below})"
    lines = [line for line in optimizer.describe().splitlines() if line.startswith("0.")]
    assert len(lines) == (0 if "0" in kronecker else 2)  # 0.weight and 0.bias
    assert all(reason in line for line in lines)


def test_first_step_of_a_small_map_is_the_elementwise_rule() -> None:
    model = _cnn()
    optimizer = SINGD(model, lr=LR, elementwise_below=100)
    conv, linear = model[0], model[3]
    before = [p.detach().clone() for p in (conv.weight, conv.bias, linear.weight)]
    x = torch.randn(5, 1, 8, 8)
    functional.cross_entropy(model(x), torch.arange(5)).backward()
    grads = [p.grad.clone() for p in (conv.weight, conv.bias, linear.weight)]
    optimizer.step()
    eps = optimizer.param_groups[0]["elementwise_eps"]
    for param, old, grad in zip((conv.weight, conv.bias), before, grads, strict=False):
        expected = old - LR * grad / (grad.abs() + eps)
        torch.testing.assert_close(param.detach(), expected, rtol=1e-5, atol=1e-7)
    # the large map is preconditioned, which is not the element-wise rule
    elementwise = before[2] - LR * grads[2] / (grads[2].abs() + eps)
    assert not torch.allclose(linear.weight.detach(), elementwise, rtol=1e-3, atol=1e-5)


class _FunctionalMap(nn.Module):
    """A custom module using its own 2-D parameter (and bias) as a linear map."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.matrix = nn.Parameter(torch.randn(d_out, d_in) / d_in**0.5)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: Tensor) -> Tensor:
        return functional.linear(x, self.matrix, self.bias)


@pytest.mark.parametrize(("d", "kronecker"), [(4, False), (16, True)])
def test_a_module_s_own_parameters(d: int, kronecker: bool) -> None:
    """A small own parameter and its bias are element-wise before any forward pass."""
    torch.manual_seed(0)
    model = nn.Sequential(_FunctionalMap(d, d))
    optimizer = SINGD(model, lr=LR, elementwise_below=100)
    functional.mse_loss(model(torch.randn(6, d)), torch.zeros(6, d)).backward()
    optimizer.step()
    assert (set(optimizer.Ks) == {"0.matrix"}) is kronecker
    blocks = [line.split()[0] for line in optimizer.describe().splitlines()[2:-1]]
    assert blocks == (["0.matrix"] if kronecker else ["0.matrix", "0.bias"])


@pytest.mark.parametrize(
    ("embed", "below", "kronecker"),
    [
        (8, 0, {"0.q_proj", "0.k_proj", "0.v_proj", "0.out_proj"}),
        (8, 100, {"0.q_proj", "0.k_proj", "0.v_proj"}),  # out_proj: 64 weights
        (8, 200, set()),  # in_proj_weight: 192 weights
    ],
)
def test_attention_projections(embed: int, below: int, kronecker: set[str]) -> None:
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(embed, 2, batch_first=True)
    optimizer = SINGD(nn.ModuleList([attention]), lr=LR, elementwise_below=below)
    assert set(optimizer.Ks) == kronecker
    x = torch.randn(2, 3, embed)
    before = [p.detach().clone() for p in attention.parameters()]
    attention(x, x, x)[0].square().mean().backward()
    optimizer.step()
    assert all(
        not torch.equal(p.detach(), old)
        for p, old in zip(attention.parameters(), before, strict=True)
    )  # every parameter trained


def test_reference_defaults_give_every_map_a_kronecker_block() -> None:
    optimizer = SINGD(_cnn(), defaults="reference")
    assert optimizer.param_groups[0]["elementwise_below"] == 0
    assert set(optimizer.Ks) == {"0", "3"}


@pytest.mark.parametrize(
    ("value", "error"), [(-1, ValueError), (1.5, TypeError), (True, TypeError), ("4", TypeError)]
)
def test_invalid_values(value: object, error: type[Exception]) -> None:
    with pytest.raises(error, match="elementwise_below"):
        SINGD(_cnn(), elementwise_below=value)  # type: ignore[arg-type]


def test_per_parameter_group() -> None:
    model = _cnn()
    conv, linear = model[0], model[3]
    groups = [
        {"params": [conv.weight, conv.bias], "elementwise_below": 100},
        {"params": [linear.weight, linear.bias], "elementwise_below": 0},
    ]
    assert set(SINGD(model, groups, lr=LR).Ks) == {"3"}


def test_a_checkpoint_of_other_blocks_is_refused_naming_the_option() -> None:
    """A state saved with every map Kronecker does not load where small maps are not."""
    model = _cnn()
    saved = SINGD(model, lr=LR, elementwise_below=0)
    functional.cross_entropy(model(torch.randn(5, 1, 8, 8)), torch.arange(5)).backward()
    saved.step()
    optimizer = SINGD(_cnn(), lr=LR, elementwise_below=100)
    before = optimizer.state_dict()
    with pytest.raises(ValueError, match="elementwise_below"):
        optimizer.load_state_dict(saved.state_dict())
    assert optimizer.state_dict()["singd"] == before["singd"]
