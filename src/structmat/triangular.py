r"""Dense lower (:class:`Tril`) and upper (:class:`Triu`) triangular matrices.

Both are groups under ``@`` (invertible members) and transposes of each other. One
implementation, :class:`TriangularMatrix`, serves both through the class attribute
``upper``. The storage is dense-sized, a ``d x d`` tensor ``matrix`` whose other triangle
is zero, so the kernels work on ``d x d`` tensors; they skip the zero triangle through
the block kernels of :mod:`structmat._triangular_kernels`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, TypeVar

import torch
from torch import Tensor

from structmat._numerics import check_nonzero, compute_dtype
from structmat._triangular_kernels import (
    gram_folded,
    tri_gram_folded,
    tri_inverse,
    tri_matmat,
    tri_matmul,
)
from structmat.base import Scalar, StructuredMatrix
from structmat.exceptions import SingularMatrixError
from structmat.linear_structure import LinearStructure
from structmat.registry import register

Tri = TypeVar("Tri", bound="TriangularMatrix")


class TriangularMatrix(LinearStructure):
    r"""A triangular matrix :math:`A \in \mathbb{R}^{d \times d}`, stored as ``matrix``.

    Template for :class:`Tril` and :class:`Triu`; subclasses set ``upper``.

    Storage:
        ``matrix``, shape ``(d, d)``. The constructor keeps only the lower
        (``upper=False``) or upper triangle, diagonal included, of the tensor it is given.

    ``from_dense(S)`` keeps the triangle of :math:`S` and adds the mirror of the other
    one, :math:`\operatorname{tril}(S) + \operatorname{triu}(S, 1)^\top` for
    :class:`Tril` (diagonal plus twice the strict lower part on symmetric :math:`S`),
    which is the identity on triangular matrices.

    Kernels (multiply-adds; a dense kernel of the same shapes costs twice, resp. six
    times, as much): ``A @ X`` and ``A^T @ X`` :math:`d^2 n / 2`; ``A @ B``
    :math:`d^3 / 6`; ``inv`` :math:`d^3 / 6` (block recursion with triangular solves);
    ``from_mat_inner(X)`` :math:`d^2 n / 2` (only the needed triangle of
    :math:`X X^\top`); ``from_inner(X)`` :math:`d^2 n` (:math:`Y = A^\top X`, then
    ``from_mat_inner(Y)``); ``from_inner()`` :math:`d^3 / 6` (one triangle of
    :math:`A^\top A`); ``from_inner2(M)`` :math:`d^3` (:math:`A^\top M A` by two
    triangular products, then folded like ``from_dense``). ``+``, ``*``,
    ``diag``, ``diag_add_``, the Frobenius norm and ``transpose`` (a view) cost
    :math:`O(d^2)` or less.
    """

    upper: ClassVar[bool | None] = None
    closed_under_inverse = True
    batches_natively = True
    parameters = ("upper",)
    template_hint = "instantiate structmat.Tril or structmat.Triu"

    def __init__(self, matrix: Tensor) -> None:
        type(self)._require_concrete()
        if isinstance(matrix, Tensor) and matrix.ndim == 2:
            matrix = self._triangle(matrix)
        super().__init__(matrix=matrix)

    @classmethod
    def _wrap(cls: type[Tri], matrix: Tensor) -> Tri:
        """Build a member from a ``matrix`` that is already triangular (no masking copy)."""
        cls._require_concrete()
        return cls._from_checked(matrix.shape, {"matrix": matrix})

    @classmethod
    def _triangle(cls, mat: Tensor, diagonal: int = 0) -> Tensor:
        """Return the triangle of ``mat`` kept by this structure (shifted by ``diagonal``)."""
        return torch.triu(mat, diagonal) if cls.upper else torch.tril(mat, -diagonal)

    @classmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        """Return ``{"matrix": (dim, dim)}``."""
        return {"matrix": (dim, dim)}

    @classmethod
    def dim_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """``d`` is the number of rows of ``matrix``."""
        return shapes["matrix"][0]

    @classmethod
    def from_dense(cls: type[Tri], sym_mat: Tensor) -> Tri:
        """Keep the triangle of ``sym_mat`` and add the mirrored other one. :math:`O(d^2)`."""
        cls._check_square(sym_mat)
        return cls._wrap(cls._triangle(sym_mat) + cls._triangle(sym_mat.mT, 1))

    def to_dense(self) -> Tensor:
        """Return the stored matrix (not a copy)."""
        return self.matrix

    @classmethod
    def _oriented(cls, folded: Tensor) -> Tensor:
        """The stored triangle from the folded lower triangle of a symmetric matrix."""
        return folded.mT if cls.upper else folded

    @classmethod
    def _from_folded_lower(cls: type[Tri], folded: Tensor) -> Tri:
        """Member from the folded lower triangle of a symmetric matrix (see the kernels)."""
        return cls._wrap(cls._oriented(folded))

    # -------------------------------------------------------------- kernels
    # On a stack ``matrix`` is ``(..., d, d)``: the kernels act on the last two dimensions.
    def _diag_add_(self, value: Scalar) -> None:
        diagonal = self.matrix.diagonal(dim1=-2, dim2=-1)
        diagonal.add_(self.per_member(value, diagonal))

    def _matmul(self: Tri, other: Tri) -> Tri:
        return self._like(matrix=tri_matmul(self.matrix, other.matrix, self.upper))

    def _matmat(self, X: Tensor) -> Tensor:
        return tri_matmat(self.matrix, X, self.upper)

    def _transpose(self) -> StructuredMatrix:
        # A view: in-place operations on the transpose change ``self`` (as for Dense).
        return self._transposed_member(self.matrix.mT)

    def _diag(self) -> Tensor:
        return self.matrix.diagonal(dim1=-2, dim2=-1)

    def _inv(self: Tri) -> Tri:
        what = f"{type(self).__name__} matrix"
        check_nonzero(self.matrix.diagonal(), what)
        inverse = tri_inverse(self.matrix.to(compute_dtype(self.dtype)), self.upper)
        if not bool(inverse.isfinite().all()):
            raise SingularMatrixError(f"{what} is numerically singular: its inverse overflows")
        return self._wrap(inverse.to(self.dtype))

    @classmethod
    def _from_mat_inner(cls: type[Tri], X: Tensor) -> Tri:
        return cls._from_folded_lower(gram_folded(X))

    def _from_inner(self: Tri, X: Tensor) -> Tri:
        return self._from_mat_inner(tri_matmat(self.matrix.mT, X, not self.upper))

    def _from_inner_identity(self: Tri) -> Tri:
        # A^T A = Y Y^T with Y = A^T, triangular in the other triangle.
        return self._like(matrix=self._oriented(tri_gram_folded(self.matrix.mT, not self.upper)))

    def _from_inner2(self: Tri, XXT: Tensor) -> Tri:
        # Z = A^T M A by two triangular products (A^T is triangular too), then the
        # projection folds the other triangle of Z onto this one, as from_dense does.
        A_t, other = self.matrix.mT, not self.upper
        M_A = tri_matmat(A_t, XXT.mT, other).mT  # M A = (A^T M^T)^T
        sandwich = tri_matmat(A_t, M_A, other)  # A^T (M A)
        return self._wrap(self._triangle(sandwich) + self._triangle(sandwich.mT, 1))


@register
class Tril(TriangularMatrix):
    r"""A lower triangular matrix, :math:`A_{ij} = 0` for :math:`j > i`.

    See :class:`TriangularMatrix`. ``from_dense(S)`` is
    :math:`\operatorname{tril}(S) + \operatorname{triu}(S, 1)^\top`; the transpose is a
    :class:`Triu`.
    """

    name = "tril"
    upper = False
    transpose_name = "triu"


@register
class Triu(TriangularMatrix):
    r"""An upper triangular matrix, :math:`A_{ij} = 0` for :math:`j < i`.

    See :class:`TriangularMatrix`. ``from_dense(S)`` is
    :math:`\operatorname{triu}(S) + \operatorname{tril}(S, -1)^\top`; the transpose is a
    :class:`Tril`.
    """

    name = "triu"
    upper = True
    transpose_name = "tril"
