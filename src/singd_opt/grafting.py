r"""Layer-wise grafting: a Kronecker block's direction at the step size of an Adam-type rule.

SINGD's natural gradient :math:`N = C C^\top G K K^\top` of a gradient matrix
:math:`G \in \mathbb{R}^{d_C \times d_K}` has a scale set by the preconditioner: with
little curvature recorded it is the gradient's (an SGD step), with an accurate inverse
curvature a Newton step. The learning rate that suits it therefore differs from block
to block and from the one of the element-wise blocks (whose direction
:math:`g / \sqrt{v}` has a root mean square near 1, like Adam's). Grafting keeps the
natural gradient's *direction* and takes its *size* from a second rule:

.. math::
    N \leftarrow N \, \frac{\|D\|_F}{\|N\|_F},

so every block steps as far as the second rule :math:`D` would, and one learning
rate serves all blocks with the meaning it has for Adam and AdamW. The rules
(``graft``):

- ``"rms"``: :math:`\|D\|_F = \sqrt{d_C d_K}` (root mean square 1, the size of an
  Adam direction whose second moment matches the current gradient's square).
  Stateless, :math:`O(d_C d_K)`.
- ``"adafactor"``: :math:`D = G / (\sqrt{\hat V} + \epsilon)` with the factored
  second moment of Adafactor (Shazeer and Stern, 2018): row and column averages
  :math:`r \leftarrow \beta r + (1 - \beta) \operatorname{mean}_j G_{ij}^2`,
  :math:`c \leftarrow \beta c + (1 - \beta) \operatorname{mean}_i G_{ij}^2`, bias-corrected by
  :math:`1 - \beta^t`, and :math:`\hat V_{ij} = r_i c_j / \operatorname{mean}(r)`.
  State :math:`d_C + d_K` numbers, time :math:`O(d_C d_K)`.

A zero direction stays zero (the factor is taken as 0 when :math:`\|N\|_F = 0`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from structmat.numerics import HALF_TYPES

#: The valid values of ``graft``.
GRAFTS: tuple[str | None, ...] = (None, "rms", "adafactor")


@dataclass(frozen=True)
class FactoredMoment:
    r"""Adafactor's factored second moment of a ``(d_C, d_K)`` gradient matrix.

    Attributes:
        rows: :math:`r`, ``(d_C,)``, averages of the squared rows (float32 or wider).
        columns: :math:`c`, ``(d_K,)``, averages of the squared columns.
        updates: :math:`t`, how many gradients were averaged.
    """

    rows: Tensor
    columns: Tensor
    updates: int

    def update(self, grad: Tensor, beta: float) -> FactoredMoment:
        """Return the moment after averaging in ``grad`` (``self`` is unchanged)."""
        square = grad.to(self.rows.dtype).square()
        return FactoredMoment(
            torch.lerp(self.rows, square.mean(dim=-1), 1.0 - beta),
            torch.lerp(self.columns, square.mean(dim=-2), 1.0 - beta),
            self.updates + 1,
        )

    @staticmethod
    def zeros(grad: Tensor) -> FactoredMoment:
        """Return an empty moment for gradient matrices shaped like ``grad``."""
        dtype = torch.float32 if grad.dtype in HALF_TYPES else grad.dtype
        *batch, d_C, d_K = grad.shape  # batch: the gradients of a stack of blocks
        return FactoredMoment(
            torch.zeros((*batch, d_C), dtype=dtype, device=grad.device),
            torch.zeros((*batch, d_K), dtype=dtype, device=grad.device),
            0,
        )

    def norm_of_direction(self, grad: Tensor, beta: float, eps: float) -> Tensor:
        r"""Return :math:`\|G / (\sqrt{\hat V} + \epsilon)\|_F` (0-dim tensor).

        With the bias corrections :math:`\hat r = r / (1 - \beta^t)`, :math:`\hat c = c /
        (1 - \beta^t)`, the rows' cancels: :math:`\hat V_{ij} = r_i c_j / (\operatorname{mean}(r)
        (1 - \beta^t))`, so :math:`\sqrt{\hat V_{ij}} = \sqrt{r_i / s}\, \sqrt{c_j}` with
        :math:`s = \operatorname{mean}(r) (1 - \beta^t)`: the roots are taken of the two
        vectors, and the ``d_C x d_K`` matrix is written once (the outer product plus
        :math:`\epsilon`), divided into in place and reduced: :math:`O(d_C d_K)` in three
        passes and one matrix of memory.
        """
        rows = self.rows
        scale = rows.mean(-1, keepdim=True).mul_(1.0 - beta**self.updates)
        scale = scale.clamp_min_(torch.finfo(rows.dtype).tiny)
        row_roots = torch.div(rows, scale).sqrt_().unsqueeze(-1)
        root = torch.addcmul(rows.new_full((), eps), row_roots, self.columns.sqrt().unsqueeze(-2))
        quotient = torch.div(grad.to(rows.dtype), root, out=root)
        return torch.linalg.vector_norm(quotient, dim=(-2, -1))


def graft(direction: Tensor, target_norm: Tensor | float) -> Tensor:
    r"""Return ``direction`` scaled to Frobenius norm ``target_norm`` (zero stays zero).

    Args:
        direction: :math:`N`, ``(d_C, d_K)``, or a stack of them ``(..., d_C, d_K)``.
        target_norm: :math:`\|D\|_F` (one per matrix of a stack).
    """
    wide = direction.float() if direction.dtype in HALF_TYPES else direction
    norm = torch.linalg.vector_norm(wide, dim=(-2, -1))
    if isinstance(target_norm, Tensor):
        factor = torch.div(target_norm, norm)
    else:
        factor = norm.reciprocal().mul_(target_norm)
    # a zero direction has the factor 0/0 or x/0: it stays zero
    factor = torch.nan_to_num_(factor, nan=0.0, posinf=0.0)
    return direction * factor.to(direction.dtype).unsqueeze(-1).unsqueeze(-1)


def rms_target(direction: Tensor) -> float:
    r"""The ``"rms"`` rule's :math:`\|D\|_F = \sqrt{d_C d_K}` (root mean square 1)."""
    return float(direction.shape[-2] * direction.shape[-1]) ** 0.5


def graft_direction(
    direction: Tensor,
    grad: Tensor,
    rule: str,
    moment: FactoredMoment | None,
    group: Mapping[str, Any],
) -> tuple[Tensor, FactoredMoment | None]:
    r"""Return the grafted direction and the rule's new state (see the module docstring).

    Args:
        direction: :math:`N`, ``(d_C, d_K)``.
        grad: :math:`G`, ``(d_C, d_K)`` (un-scaled).
        rule: ``"rms"`` or ``"adafactor"``.
        moment: The ``"adafactor"`` rule's moment so far (``None`` before the first).
        group: The parameter group (``elementwise_beta2`` :math:`\beta`,
            ``elementwise_eps`` :math:`\epsilon`).

    Returns:
        The direction at the rule's size and the moment to keep (``moment`` itself for
        ``"rms"``); ``moment`` is not changed.
    """
    if rule == "rms":
        return graft(direction, rms_target(direction)), moment
    moment = advance_moment(grad, rule, moment, group)
    assert moment is not None
    target = moment.norm_of_direction(grad, group["elementwise_beta2"], group["elementwise_eps"])
    return graft(direction, target), moment


def advance_moment(
    grad: Tensor, rule: str | None, moment: FactoredMoment | None, group: Mapping[str, Any]
) -> FactoredMoment | None:
    r"""Return the rule's state after the gradient ``grad`` (``moment`` unchanged).

    The state depends on the gradients only, so a process that receives a block's
    direction from another (``distribute="split"``) keeps the same state by calling
    this with its own (averaged) gradient.

    Args:
        grad: :math:`G`, ``(d_C, d_K)`` (un-scaled).
        rule: ``None``, ``"rms"`` (stateless: ``moment`` is returned) or ``"adafactor"``.
        moment: The moment so far (``None`` before the first).
        group: The parameter group (``elementwise_beta2`` :math:`\beta`).
    """
    if rule != "adafactor":
        return moment
    start = moment if moment is not None else FactoredMoment.zeros(grad)
    return start.update(grad, group["elementwise_beta2"])
