r"""A linear map's parameters seen as one gradient matrix, and its calls as curvature rows.

A Kronecker-factored block preconditions the parameters of one linear map
:math:`y = W \bar{x} + b` applied to (possibly many, weight-shared) input vectors
:math:`\bar{x}` of size :math:`d_\text{in}`. Its trained parameters form one gradient
matrix :math:`G \in \mathbb{R}^{d_C \times d_K}`: the weight gradient as a
``(d_out, d_in)`` matrix and the bias gradient as an extra last column, so
:math:`d_K = d_\text{in} + 1` with a bias.

For each recorded call a :class:`Layer` turns

- the input into :math:`A \in \mathbb{R}^{n \times d_K}` (rows are samples, or samples
  times weight-shared positions for ``kfac_approx="expand"``; positions are averaged
  for ``"reduce"``), with a column of ones for the bias and scaled by
  :math:`1/\sqrt{n}`, so :math:`A^\top A` is the mean outer product;
- the output gradient into :math:`G_\text{out} \in \mathbb{R}^{n \times d_C}` (the same
  rows; positions are summed for ``"reduce"``), scaled by :math:`\sqrt{N}` with
  :math:`N` the number of loss terms (``loss_average``: ``None`` means 1, ``"batch"``
  the batch size, ``"batch+sequence"`` batch size times positions), so
  :math:`G_\text{out}^\top G_\text{out}` estimates the per-term curvature.

A weight or bias may be a block of rows of a larger parameter (the query, key and
value projections packed into one ``in_proj_weight``, or the output columns of a
parameter stored as :math:`W^\top`): :class:`ParameterRows`.
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from structmat import StructuredMatrix
from structmat.numerics import HALF_TYPES

KFAC_APPROXIMATIONS: tuple[str, ...] = ("expand", "reduce")
LOSS_AVERAGES: tuple[str | None, ...] = (None, "batch", "batch+sequence")


@dataclass(frozen=True)
class ParameterRows:
    r"""A parameter, or the block of it that ``row_slice`` selects along dimension ``dim``.

    Attributes:
        param: The parameter.
        row_slice: The entries of ``param`` along ``dim`` that belong to the block (the
            map's rows): a slice, their indices (rows interleaved with other blocks'),
            or ``None`` for all.
        dim: The dimension ``row_slice`` indexes: 0, or 1 for a parameter stored as
            :math:`W^\top` (``(d_in, d_out)``, whose map rows are its columns).
    """

    param: nn.Parameter
    row_slice: slice | tuple[int, ...] | None = None
    dim: int = 0

    @property
    def index(self) -> tuple[slice | Tensor, ...]:
        """The index of the block in ``param`` (``param[index]``); ``(:,)`` for all of it."""
        rows = self.row_slice
        if rows is None:
            return (slice(None),)
        if not isinstance(rows, slice):
            rows = self._row_indices.to(self.param.device)  # no copy on the same device
        return (slice(None),) * self.dim + (rows,)

    @functools.cached_property
    def _row_indices(self) -> Tensor:
        """The indices of interleaved rows as a tensor, made once."""
        assert isinstance(self.row_slice, tuple)
        return torch.tensor(self.row_slice)

    @property
    def label(self) -> str:
        """The block as an index for messages: ``"[0:64]"``, ``"[:, 0:64]"``, ``"[48 rows]"``."""
        rows = self.row_slice
        if rows is None:
            return ""
        text = f"{rows.start}:{rows.stop}" if isinstance(rows, slice) else f"{len(rows)} rows"
        return "[" + ":, " * self.dim + text + "]"

    @property
    def shape(self) -> torch.Size:
        """The block's shape, without indexing the parameter (which may be sharded)."""
        rows = self.row_slice
        if rows is None:
            return self.param.shape
        sizes = list(self.param.shape)
        if isinstance(rows, slice):
            sizes[self.dim] = len(range(*rows.indices(sizes[self.dim])))
        else:
            sizes[self.dim] = len(rows)
        return torch.Size(sizes)

    @property
    def value(self) -> Tensor:
        """The (view of the) parameter's values."""
        return self.param if self.row_slice is None else self.param[self.index]

    @property
    def grad(self) -> Tensor | None:
        """The (view of the) parameter's gradient, or ``None`` without a gradient."""
        return self.grad_in(None)

    def grad_in(self, gradients: Mapping[nn.Parameter, Tensor] | None) -> Tensor | None:
        """The (view of the) gradient: from ``gradients`` if it has one for the parameter.

        Args:
            gradients: Replacement gradients by parameter (the gathered full
                gradients of sharded parameters), or ``None``.
        """
        grad = self.param.grad
        if gradients is not None and self.param in gradients:
            grad = gradients[self.param]
        if grad is None or self.row_slice is None:
            return grad
        return grad[self.index]


def num_loss_terms(loss_average: str | None, batch: int, positions: int) -> int:
    """Return :math:`N`, the number of loss terms a mean loss averages over.

    Args:
        loss_average: ``None`` (a sum: 1), ``"batch"`` or ``"batch+sequence"``.
        batch: The batch size.
        positions: The number of weight-shared positions per sample.
    """
    if loss_average is None:
        return 1
    if loss_average == "batch":
        return batch
    return batch * positions


class Layer(ABC):
    """The parameters of one linear map as a ``(dim_C, dim_K)`` matrix.

    Attributes:
        weight: The trained weight (rows), or ``None`` if the weight is not trained.
        bias: The trained bias (rows), or ``None`` if there is none or it is not trained.
        params: The trained parameter blocks, weight first.
        dim_K: Size of the input-side factor ``K``.
        dim_C: Size of the output-side factor ``C``.
    """

    def __init__(
        self,
        weight: ParameterRows | None,
        bias: ParameterRows | None,
        dim_C: int,
        dim_weight: int,
    ) -> None:
        r"""Describe the map.

        Args:
            weight: The trained weight, or ``None``.
            bias: The trained bias, or ``None``.
            dim_C: Number of outputs :math:`d_\text{out}`.
            dim_weight: Number of inputs :math:`d_\text{in}` (weight columns).
        """
        self.weight = weight
        self.bias = bias
        self.params: tuple[ParameterRows, ...] = tuple(p for p in (weight, bias) if p is not None)
        self.dim_C: int = dim_C
        self._dim_weight: int = dim_weight if weight is not None else 0
        self.dim_K: int = self._dim_weight + (1 if bias is not None else 0)

    # ---------------------------------------------------------------- inputs
    @abstractmethod
    def input_rows(self, x: Tensor, kfac_approx: str, dtype: torch.dtype) -> tuple[Tensor, int]:
        r"""Return the unscaled input matrix :math:`\sqrt{n} A`, ``(n, dim_K)``, and :math:`n`.

        Every row is an input (with a trailing 1 for the bias). Building it takes at most
        one pass over the input, which also converts it to ``dtype``; without a bias, a
        contiguous input of that dtype is returned as a view.

        Args:
            x: The call's input (any floating dtype).
            kfac_approx: ``"expand"`` or ``"reduce"``.
            dtype: The result's dtype (that of ``K``).
        """

    def input_matrix(self, x: Tensor, kfac_approx: str) -> Tensor:
        r"""Return the scaled input matrix :math:`A` of shape ``(n, dim_K)``.

        Args:
            x: The call's input.
            kfac_approx: ``"expand"`` or ``"reduce"``.
        """
        rows, n = self.input_rows(x, kfac_approx, x.dtype)
        return rows / math.sqrt(n)

    def input_curvature(
        self, K: StructuredMatrix, x: Tensor, kfac_approx: str
    ) -> tuple[StructuredMatrix, int]:
        r"""Return :math:`H_K = \Pi_K(K^\top A^\top A K)` and the number of rows of :math:`A`.

        Args:
            K: The input-side factor.
            x: The call's input (converted to the dtype of ``K``).
            kfac_approx: ``"expand"`` or ``"reduce"``.
        """
        rows, n = self.input_rows(x, kfac_approx, K.dtype)
        return self._curvature_of_rows(K, rows, 1.0 / n), n

    @staticmethod
    def _curvature_of_rows(M: StructuredMatrix, rows: Tensor, weight: float) -> StructuredMatrix:
        r""":math:`w\, \Pi(M^\top R^\top R M)` of the ``(n, d)`` rows :math:`R`, weight :math:`w`.

        In float32 and float64 :math:`w` multiplies the ``d x d`` result instead of the
        rows (no scaled copy of the rows); half types scale the rows by
        :math:`\sqrt{w}`, which keeps their squares in range.
        """
        if rows.dtype in HALF_TYPES:
            return M.from_inner((rows * math.sqrt(weight) if weight != 1.0 else rows).mT)
        curvature = M.from_inner(rows.mT)
        return curvature.mul_(weight) if weight != 1.0 else curvature

    @abstractmethod
    def grad_output_matrix(
        self, g: Tensor, loss_average: str | None, kfac_approx: str
    ) -> tuple[Tensor, int]:
        r"""Return the scaled output-gradient matrix and the number of loss terms.

        Args:
            g: Gradient of the loss w.r.t. the call's output (in the dtype of ``C``).
            loss_average: ``None``, ``"batch"`` or ``"batch+sequence"``.
            kfac_approx: ``"expand"`` or ``"reduce"``.

        Returns:
            :math:`G_\text{out}` of shape ``(n, dim_C)`` and the number :math:`N` of
            loss terms it was scaled for (1 for ``loss_average=None``).
        """

    def output_curvature(
        self,
        C: StructuredMatrix,
        g: Tensor,
        loss_average: str | None,
        kfac_approx: str,
        grad_prescale: float = 1.0,
    ) -> tuple[StructuredMatrix, int]:
        r"""Return :math:`H_C = \Pi_C(C^\top G_\text{out}^\top G_\text{out} C) / s` and :math:`N`.

        Args:
            C: The output-side factor.
            g: Gradient of the loss w.r.t. the call's output (in the dtype of ``C``).
            loss_average: ``None``, ``"batch"`` or ``"batch+sequence"``.
            kfac_approx: ``"expand"`` or ``"reduce"``.
            grad_prescale: :math:`s`, a gradient scale to divide by now.
        """
        G, terms = self.grad_output_matrix(g, loss_average, kfac_approx)
        if grad_prescale != 1.0:
            G = G / math.sqrt(grad_prescale)
        return C.from_inner(G.mT), terms

    def _with_bias_column(
        self, rows: Tensor | None, n: int, like: Tensor, dtype: torch.dtype
    ) -> Tensor:
        """Return the ``(n, dim_K)`` rows with the ones column of the bias appended.

        Args:
            rows: ``(..., d_in)`` inputs whose leading dimensions flatten to the ``n``
                rows (in any memory layout), or ``None`` if the weight is not trained.
            n: Number of rows.
            like: A tensor with the device of the result.
            dtype: The result's dtype.
        """
        width = rows.shape[-1] if rows is not None else 0
        if self.bias is None and rows is not None and rows.dtype == dtype:
            return rows.reshape(n, width)
        out = like.new_empty((n, width + (self.bias is not None)), dtype=dtype)
        if rows is not None:
            # one pass from the input's own layout (no reshaped copy first)
            out[:, :width].view(rows.shape).copy_(rows)
        out[:, width:].fill_(1.0)
        return out

    # ------------------------------------------------------------- gradients
    def _weight_columns(self, weight_grad: Tensor) -> Tensor:
        """Return the weight gradient as ``(dim_C, d_in)`` columns of :math:`G`."""
        return weight_grad.flatten(start_dim=1)

    def _weight_update(self, columns: Tensor) -> Tensor:
        """Inverse of :meth:`_weight_columns`: columns of a matrix to the weight's shape."""
        assert self.weight is not None
        return columns.reshape(self.weight.shape)

    def gradient_matrix(
        self, gradients: Mapping[nn.Parameter, Tensor] | None = None
    ) -> Tensor | None:
        """Return the ``(dim_C, dim_K)`` gradient matrix, or ``None`` without gradients.

        A trained parameter without a gradient contributes zeros.

        Args:
            gradients: Replacement gradients by parameter (see :meth:`ParameterRows.grad_in`).
        """
        weight_grad = self.weight.grad_in(gradients) if self.weight is not None else None
        bias_grad = self.bias.grad_in(gradients) if self.bias is not None else None
        if weight_grad is None and bias_grad is None:
            return None
        columns = []
        if self.weight is not None:
            param = self.weight.param
            columns.append(
                self._weight_columns(weight_grad)
                if weight_grad is not None
                else torch.zeros(
                    self.dim_C, self._dim_weight, dtype=param.dtype, device=param.device
                )
            )
        if self.bias is not None:
            columns.append(
                bias_grad.unsqueeze(1)
                if bias_grad is not None
                else self.bias.value.new_zeros(self.dim_C, 1)
            )
        return columns[0] if len(columns) == 1 else torch.cat(columns, dim=1)

    def split(self, matrix: Tensor) -> list[tuple[ParameterRows, Tensor]]:
        """Split a ``(dim_C, dim_K)`` matrix into ``(parameter rows, update)`` pairs.

        Only parameters that currently have a gradient are returned.
        """
        pairs = []
        if self.weight is not None and self.weight.param.grad is not None:
            pairs.append((self.weight, self._weight_update(matrix[:, : self._dim_weight])))
        if self.bias is not None and self.bias.param.grad is not None:
            pairs.append((self.bias, matrix[:, -1]))
        return pairs
