"""Diagonal matrices."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from structmat._layout import row_sums_of_squares
from structmat._numerics import check_nonzero
from structmat.linear_structure import LinearStructure
from structmat.registry import register


@register
class Diagonal(LinearStructure):
    r"""A diagonal matrix :math:`A = \operatorname{diag}(a)`, stored as ``diagonal`` (size ``d``).

    ``from_dense`` keeps the diagonal. ``A @ X`` scales rows, :math:`O(dn)`;
    ``A @ B``, ``inv`` and ``from_inner()`` are elementwise, :math:`O(d)`;
    ``from_mat_inner(X)`` is :math:`\operatorname{diag}(XX^\top)_i = \sum_j X_{ij}^2`
    and ``from_inner(X)`` is :math:`a_i^2 \sum_j X_{ij}^2`, both :math:`O(dn)`;
    ``from_inner2(M)`` is :math:`a_i^2 M_{ii}`, :math:`O(d)`. Closed under
    transposition (:math:`A^\top = A`) and inversion.
    """

    name = "diagonal"
    closed_under_inverse = True
    closed_under_transpose = True
    batches_under_vmap = True
    batches_natively = True
    closed_under_spectral_functions = True
    _plain_constructor = True

    def __init__(self, diagonal: Tensor) -> None:
        super().__init__(diagonal=diagonal)

    @classmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        """Return ``{"diagonal": (dim,)}``."""
        return {"diagonal": (dim,)}

    @classmethod
    def dim_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """``d`` is the size of ``diagonal``."""
        return shapes["diagonal"][0]

    @classmethod
    def from_dense(cls, sym_mat: Tensor) -> Diagonal:
        """Keep the diagonal of ``sym_mat``. :math:`O(d)`."""
        return cls(cls._check_square(sym_mat).diagonal().clone())

    def to_dense(self) -> Tensor:
        """Return ``torch.diag(diagonal)`` (a stack: one per member)."""
        return torch.diag_embed(self.diagonal)

    def _matmul(self, other: Diagonal) -> Diagonal:
        return self._like(diagonal=self.diagonal * other.diagonal)

    def _matmat(self, X: Tensor) -> Tensor:
        return self.diagonal.unsqueeze(-1) * X

    def _transpose(self) -> Diagonal:
        return self

    def _diag(self) -> Tensor:
        return self.diagonal

    def _diag_add_(self, value: float | Tensor) -> None:
        self.diagonal.add_(self.per_member(value, self.diagonal))

    def _inv(self) -> Diagonal:
        check_nonzero(self.diagonal, "Diagonal matrix")
        return self._like(diagonal=self.diagonal.reciprocal())

    @classmethod
    def _from_mat_inner(cls, X: Tensor) -> Diagonal:
        return cls(row_sums_of_squares(X))

    def _from_inner(self, X: Tensor) -> Diagonal:
        # diag((aX)(aX)^T)_i = a_i^2 sum_j X_ij^2: one pass over X, no scaled copy of it
        return self._like(diagonal=row_sums_of_squares(X) * self.diagonal.square())

    def _from_inner_identity(self) -> Diagonal:
        return self._like(diagonal=self.diagonal.square())

    def _from_inner2(self, XXT: Tensor) -> Diagonal:
        # diag(A^T M A)_i = a_i^2 M_ii: reads the d diagonal entries of M only
        return self._like(diagonal=self.diagonal.square() * XXT.diagonal())

    def _from_inner_diagonal(self, values: Tensor) -> Diagonal:
        # diag(A^T diag(v) A)_i = a_i^2 v_i, O(d)
        return self._like(diagonal=self.diagonal.square() * values)

    def _symmetric_eigen(self) -> tuple[Tensor, Callable[[Tensor], Diagonal]]:
        """The diagonal itself, :math:`O(d)`."""
        dtype = self.dtype
        return self.diagonal, lambda new_values: type(self)(new_values.to(dtype))
