"""An embedding tied to the output projection: one Kronecker block for both uses.

The block's curvature and updates are checked against a dense re-implementation of
the math in :mod:`singd_opt.layers.tied`: the vocabulary-side rows are the one-hot
tokens of the lookup and the logit gradients of the projection, the hidden-side rows
the lookup's output gradients and the projection's inputs, and the dense SINGD
update of :mod:`tests.optim.dense_reference_impl` runs on them (diagonal ``K``).
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

from singd_opt import SINGD
from tests.optim.dense_reference_impl import average_trace, project

DTYPE = torch.float64
V, D, B, S = 11, 5, 3, 4
CONFIG = {"lr": 0.1, "momentum": 0.5, "damping": 0.01, "alpha1": 0.5, "lr_cov": 0.2, "T": 1}


class TiedLM(nn.Module):
    """Tied through a ``Linear`` module sharing the weight, or by ``h @ E.T`` in forward."""

    def __init__(self, functional_head: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.functional_head = functional_head
        if not functional_head:
            self.head = nn.Linear(D, V, bias=False)
            self.head.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        self.looked_up = self.embed(tokens)
        self.looked_up.retain_grad()
        self.hidden = torch.tanh(self.looked_up)
        if self.functional_head:
            self.logits = self.hidden @ self.embed.weight.T
        else:
            self.logits = self.head(self.hidden)
        self.logits.retain_grad()
        return self.logits


def _loss(logits: Tensor, targets: Tensor) -> Tensor:
    return functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _dense_factors(model: TiedLM, tokens: Tensor, loss_average: str) -> tuple[Tensor, Tensor]:
    """``A^T A`` (vocabulary side) and ``G^T G`` (hidden side) of the stacked rows."""
    onehot = functional.one_hot(tokens.flatten(), V).to(DTYPE)
    logit_grads = model.logits.grad.flatten(0, 1)
    A = torch.cat([onehot, logit_grads]) / (2 * B * S) ** 0.5
    terms = B * S if loss_average == "batch+sequence" else B
    G = torch.cat([model.looked_up.grad.flatten(0, 1), model.hidden.detach().flatten(0, 1)])
    G = G * terms**0.5
    return A.T @ A, G.T @ G


@pytest.mark.parametrize(
    ("loss_average", "functional_head"),
    [("batch", False), ("batch+sequence", False), ("batch+sequence", True)],
)
def test_tied_block_equals_dense_reimplementation(loss_average: str, functional_head: bool) -> None:
    torch.manual_seed(0)
    model = TiedLM(functional_head).to(DTYPE)
    optimizer = SINGD(
        model, loss_average=loss_average, defaults="reference", train_all_parameters=True, **CONFIG
    )
    (name,) = optimizer.Ks
    assert name == ("embed" if functional_head else "embed+head")
    K, C = torch.ones(V, dtype=DTYPE), torch.eye(D, dtype=DTYPE)
    m_K, m_C = torch.zeros(V, dtype=DTYPE), torch.zeros(D, D, dtype=DTYPE)
    weight = model.embed.weight.detach().clone()
    buffer = torch.zeros(D, V, dtype=DTYPE)
    generator = torch.Generator().manual_seed(1)
    for step in range(3):
        tokens = torch.randint(0, V, (B, S), generator=generator)
        targets = torch.randint(0, V, (B, S), generator=generator)
        optimizer.zero_grad()
        _loss(model(tokens), targets).backward()
        AtA, GtG = _dense_factors(model, tokens, loss_average)
        H_K = project("diagonal", torch.diag(K) @ AtA @ torch.diag(K)).diagonal()
        H_C = C.T @ GtG @ C
        torch.testing.assert_close(optimizer.H_Ks[name].to_dense().diagonal(), H_K)
        torch.testing.assert_close(optimizer.H_Cs[name].to_dense(), H_C)
        # the dense SINGD update with a diagonal K (s = 1/2, no normalisation)
        lam, a1, beta1 = CONFIG["damping"], CONFIG["alpha1"], CONFIG["lr_cov"]
        m_K = a1 * m_K + 0.5 * (
            average_trace(H_C) * H_K + lam * average_trace(C.T @ C) * K.square() - 1.0
        )
        m_C = a1 * m_C + 0.5 * (
            H_K.mean() * H_C + lam * K.square().mean() * (C.T @ C) - torch.eye(D, dtype=DTYPE)
        )
        K, C = K - beta1 * K * m_K, C - beta1 * C @ m_C
        gradient = model.embed.weight.grad.T  # W = E^T, (D, V)
        natural = C @ C.T @ gradient * K.square()
        buffer = CONFIG["momentum"] * buffer + natural
        weight = weight - CONFIG["lr"] * buffer.T
        optimizer.step()
        torch.testing.assert_close(optimizer.Ks[name].to_dense().diagonal(), K, msg=f"K {step}")
        torch.testing.assert_close(optimizer.Cs[name].to_dense(), C, msg=f"C {step}")
        torch.testing.assert_close(model.embed.weight.detach(), weight, msg=f"E {step}")


def test_tied_block_is_named_after_both_modules_and_lists_both_names() -> None:
    model = TiedLM()
    optimizer = SINGD(model, defaults="reference", train_all_parameters=True)
    assert [block.name for block in optimizer.blocks] == ["embed+head"]
    (line,) = [row for row in optimizer.describe().splitlines() if row.startswith("embed+head")]
    assert "embed.weight = head.weight" in line
    assert "K diagonal 11, C dense 5" in line
