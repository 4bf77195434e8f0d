"""Linear maps on the last dimension: :class:`~torch.nn.Linear` and ``functional.linear``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from singd_opt.layers.base import Layer, ParameterRows, num_loss_terms
from structmat import StructuredMatrix


class LinearLayer(Layer):
    """A linear map on inputs of shape ``(batch, ..., d_in)``.

    Every leading dimension after the first is weight-shared.
    """

    def __init__(
        self, weight: ParameterRows | None, bias: ParameterRows | None, full_weight: Tensor
    ) -> None:
        """Describe the map.

        Args:
            weight: The trained weight rows, or ``None``.
            bias: The trained bias rows, or ``None``.
            full_weight: The ``(d_out, d_in)`` weight of the map (trained or not).
        """
        super().__init__(weight, bias, full_weight.shape[0], full_weight.shape[1])

    def input_rows(self, x: Tensor, kfac_approx: str, dtype: torch.dtype) -> tuple[Tensor, int]:
        """See :meth:`Layer.input_rows`.

        With ``"expand"`` the inputs are copied (and converted) from their own layout,
        in one pass; a transposed input, as attention modules pass, is not reshaped first.
        """
        if x.ndim == 1:
            x = x.unsqueeze(0)
        trained = self.weight is not None
        if kfac_approx == "reduce" and x.ndim > 2:
            n = x.shape[0]
            rows = x.to(dtype).mean(dim=tuple(range(1, x.ndim - 1))) if trained else None
        else:
            n = x.shape[:-1].numel()
            rows = x if trained else None
        return self._with_bias_column(rows, n, x, dtype), n

    def grad_output_matrix(
        self, g: Tensor, loss_average: str | None, kfac_approx: str
    ) -> tuple[Tensor, int]:
        """See :meth:`Layer.grad_output_matrix`."""
        rows, terms = self._grad_output_rows(g, loss_average, kfac_approx)
        return (rows * math.sqrt(terms) if terms != 1 else rows), terms

    def output_curvature(
        self,
        C: StructuredMatrix,
        g: Tensor,
        loss_average: str | None,
        kfac_approx: str,
        grad_prescale: float = 1.0,
    ) -> tuple[StructuredMatrix, int]:
        r"""See :meth:`Layer.output_curvature`.

        The factor :math:`N / s` weighs the unscaled rows (:meth:`Layer._curvature_of_rows`:
        in float32 and float64 it multiplies the ``d_C x d_C`` :math:`H_C` instead of the
        ``n x d_C`` rows, a pass over the rows fewer).
        """
        rows, terms = self._grad_output_rows(g, loss_average, kfac_approx)
        return self._curvature_of_rows(C, rows, terms / grad_prescale), terms

    def _grad_output_rows(
        self, g: Tensor, loss_average: str | None, kfac_approx: str
    ) -> tuple[Tensor, int]:
        """The unscaled rows of :meth:`grad_output_matrix` and the number of loss terms."""
        if g.ndim == 1:
            g = g.unsqueeze(0)
        terms = num_loss_terms(loss_average, g.shape[0], g.shape[1:-1].numel())
        if kfac_approx == "expand":
            g = g.reshape(-1, g.shape[-1])
        elif g.ndim > 2:
            g = g.sum(dim=tuple(range(1, g.ndim - 1)))
        return g, terms


class TransposedLinearLayer(LinearLayer):
    r"""A linear map whose parameter is stored as :math:`P = W^\top` (``(d_in, d_out)``).

    The map ``x @ P + b`` (``torch.addmm(b, x, P)``, Hugging Face's ``Conv1D``) is
    :class:`LinearLayer` with weight :math:`W = P^\top`: the same input and
    output-gradient matrices; only the gradient matrix is :math:`\nabla_P^\top`
    and the update is transposed back to ``P``'s shape.
    """

    def __init__(
        self, weight: ParameterRows | None, bias: ParameterRows | None, full: Tensor
    ) -> None:
        """Describe the map.

        Args:
            weight: The trained ``(d_in, d_out)`` parameter, or ``None``.
            bias: The trained bias ``(d_out,)``, or ``None``.
            full: The ``(d_in, d_out)`` parameter (trained or not).
        """
        super().__init__(weight, bias, full.mT)

    def _weight_columns(self, weight_grad: Tensor) -> Tensor:
        return weight_grad.mT

    def _weight_update(self, columns: Tensor) -> Tensor:
        return columns.mT
