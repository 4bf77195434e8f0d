"""Dense matrices: no structure, the reference point for every other structure."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from structmat._gram import gram
from structmat._numerics import dense_inverse
from structmat.linear_structure import LinearStructure
from structmat.numerics import HALF_TYPES
from structmat.registry import register


@register
class Dense(LinearStructure):
    r"""A dense matrix :math:`A \in \mathbb{R}^{d \times d}`, stored as ``matrix`` (``d x d``).

    Every kernel is the plain dense computation: ``A @ X`` costs :math:`O(d^2 n)`,
    ``A @ B``, ``inv`` and ``from_inner2`` :math:`O(d^3)`; ``from_inner(X)``
    :math:`2 d^2 n`, or :math:`d^2 n + 2 d^3` through :math:`X X^\top` when ``n >= 2 d``.
    The symmetric Gram matrices (``from_inner``, ``from_mat_inner``) are formed in about
    half the multiply-adds of a GEMM (:func:`structmat._gram.gram`). ``from_dense``
    keeps the matrix as it is. Closed under transposition and inversion.
    """

    name = "dense"
    closed_under_inverse = True
    closed_under_transpose = True
    batches_under_vmap = True
    batches_natively = True
    closed_under_spectral_functions = True
    _plain_constructor = True

    def __init__(self, matrix: Tensor) -> None:
        super().__init__(matrix=matrix)

    @classmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        """Return ``{"matrix": (dim, dim)}``."""
        return {"matrix": (dim, dim)}

    @classmethod
    def dim_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """``d`` is the number of rows of ``matrix``."""
        return shapes["matrix"][0]

    @classmethod
    def from_dense(cls, sym_mat: Tensor) -> Dense:
        """Return a copy of ``sym_mat``. :math:`O(d^2)`."""
        return cls(cls._check_square(sym_mat).clone())

    def to_dense(self) -> Tensor:
        """Return the stored matrix (not a copy)."""
        return self.matrix

    def _matmul(self, other: Dense) -> Dense:
        product = torch.matmul if self._batch_shape else torch.mm
        return self._like(matrix=product(self.matrix, other.matrix))

    def _matmat(self, X: Tensor) -> Tensor:
        return self.matrix @ X

    def _transpose(self) -> Dense:
        return self._from_checked(self.shape, {"matrix": self.matrix.mT}, self._batch_shape)

    def _diag(self) -> Tensor:
        return self.matrix.diagonal(dim1=-2, dim2=-1)

    def _trace(self, mean: bool) -> Tensor:
        """One trace kernel for a float32 or float64 member (half types, stacks: the default)."""
        matrix = self.matrix
        if self._batch_shape or matrix.dtype in HALF_TYPES:
            return super()._trace(mean)
        total = matrix.trace()
        return total.div_(matrix.shape[0]) if mean else total

    def _diag_add_(self, value: float | Tensor) -> None:
        diagonal = self.matrix.diagonal(dim1=-2, dim2=-1)
        diagonal.add_(self.per_member(value, diagonal))

    def _inv(self) -> Dense:
        return self._like(matrix=dense_inverse(self.matrix, "Dense matrix"))

    @classmethod
    def _from_mat_inner(cls, X: Tensor) -> Dense:
        return cls(gram(X))

    def _from_inner(self, X: Tensor) -> Dense:
        r""":math:`(M^\top X)(M^\top X)^\top`, or :math:`M^\top (X X^\top) M` for ``n >= 2 d``.

        The first costs :math:`1.5 d^2 n`, the second :math:`d^2 n / 2 + 2 d^3`
        (Gram matrices in half a GEMM): fewer for operands with many columns (such as
        convolution patches).
        """
        d, n = X.shape
        M = self.matrix
        if n >= 2 * d:
            return self._like(matrix=M.mT @ gram(X) @ M)
        return self._like(matrix=gram(M.mT @ X))

    def _from_inner_identity(self) -> Dense:
        return self._like(matrix=gram(self.matrix.mT))

    def _from_inner2(self, XXT: Tensor) -> Dense:
        return self._like(matrix=self.matrix.mT @ XXT @ self.matrix)

    def _from_inner_diagonal(self, values: Tensor) -> Dense:
        # A^T diag(v) A with the rows of A scaled: d^3 multiply-adds, no d x d diag(v)
        return self._like(matrix=self.matrix.mT @ (values.unsqueeze(1) * self.matrix))

    def _symmetric_eigen(self) -> tuple[Tensor, Callable[[Tensor], Dense]]:
        """One symmetric eigendecomposition, :math:`O(d^3)`."""
        matrix = self.matrix
        values, vectors = torch.linalg.eigh(0.5 * (matrix + matrix.mT))

        def compose(new_values: Tensor) -> Dense:
            return type(self)((vectors * new_values.to(vectors.dtype)) @ vectors.mT)

        return values, compose
