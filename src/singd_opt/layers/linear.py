"""Linear maps on the last dimension: :class:`~torch.nn.Linear` and ``functional.linear``."""

from __future__ import annotations

import math

from torch import Tensor

from singd_opt.layers.base import Layer, ParameterRows, num_loss_terms


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

    def input_matrix(self, x: Tensor, kfac_approx: str) -> Tensor:
        """See :meth:`Layer.input_matrix`."""
        if x.ndim == 1:
            x = x.unsqueeze(0)
        if self.weight is None:
            n = x.shape[:-1].numel() if kfac_approx == "expand" else x.shape[0]
            return self._finish_input(None, n, x)
        if kfac_approx == "expand":
            rows = x.reshape(-1, x.shape[-1])
        elif x.ndim > 2:
            rows = x.mean(dim=tuple(range(1, x.ndim - 1)))
        else:
            rows = x
        return self._finish_input(rows, rows.shape[0], x)

    def grad_output_matrix(
        self, g: Tensor, loss_average: str | None, kfac_approx: str
    ) -> tuple[Tensor, int]:
        """See :meth:`Layer.grad_output_matrix`."""
        if g.ndim == 1:
            g = g.unsqueeze(0)
        terms = num_loss_terms(loss_average, g.shape[0], g.shape[1:-1].numel())
        if kfac_approx == "expand":
            g = g.reshape(-1, g.shape[-1])
        elif g.ndim > 2:
            g = g.sum(dim=tuple(range(1, g.ndim - 1)))
        return (g * math.sqrt(terms) if terms != 1 else g), terms


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
