r"""Triangular Toeplitz matrices: the template shared by the lower and upper structures.

A lower-triangular Toeplitz matrix is determined by its first column
:math:`c \in \mathbb{R}^d`, :math:`A_{ij} = c_{i-j}` for :math:`i \ge j` and 0 otherwise;
the upper one by its first row, :math:`A_{ij} = c_{j-i}` for :math:`j \ge i`. Each is
the transpose of the other with the same coefficients. Both are commutative algebras
isomorphic to power series modulo :math:`z^d`, so products and inverses are again
triangular Toeplitz. :class:`TriangularToeplitz` holds every kernel;
:class:`~structmat.TrilToeplitz` and :class:`~structmat.TriuToeplitz` only set the class
attributes in which they differ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, TypeVar

import torch
from torch import Tensor
from torch.nn.functional import pad

from structmat._gram import gram
from structmat._numerics import check_nonzero, compute_dtype, stable_norm
from structmat._toeplitz_direct import (
    gram_lag_sums,
    lower_product,
    upper_diagonal_sums,
    use_direct_lags,
    use_direct_product,
    use_gram_first,
)
from structmat._toeplitz_kernels import (
    anticausal_correlation,
    average_diagonal_pairs,
    causal_convolution,
    diagonal_sums,
    filtered_lag_sums,
    inverse_series,
    lag_sums,
)
from structmat._toeplitz_sandwich import sandwich_pair_sums
from structmat._toeplitz_stacks import member_convolutions, member_lag_sums
from structmat.base import Scalar, StructuredMatrix
from structmat.exceptions import SingularMatrixError
from structmat.linear_structure import LinearStructure

T = TypeVar("T", bound="TriangularToeplitz")


class TriangularToeplitz(LinearStructure):
    r"""A triangular Toeplitz matrix stored as its coefficient vector :math:`c` (size ``d``).

    Template for :class:`~structmat.TrilToeplitz` (``upper = False``, coefficients
    ``column``, :math:`A_{ij} = c_{i-j}`) and :class:`~structmat.TriuToeplitz`
    (``upper = True``, coefficients ``row``, :math:`A_{ij} = c_{j-i}`).

    ``from_dense(S)`` sets :math:`c_k` to the sum of the ``k``-th lower and the ``k``-th
    upper diagonal of :math:`S` divided by :math:`d - k`, and :math:`c_0 =
    \operatorname{tr}(S) / d`: on symmetric :math:`S` twice the mean of the ``k``-th
    diagonal, and the identity on members of either triangular Toeplitz structure.

    Kernels (zero-padded real FFTs of a fast length :math:`N \ge 2d - 1`, see
    :mod:`structmat._toeplitz_kernels`; below measured crossovers in ``d``, for
    ``n >= 64`` columns, blocked GEMMs that are also accurate entry by entry in low
    precision, see :mod:`structmat._toeplitz_direct`; a single vector of length
    :math:`d \le 128` is convolved directly in :math:`O(d^2)`):

    - ``A @ X``, ``A^T @ X``: causal convolution resp. correlation of every column
      of ``X`` (shape ``(d, n)``) with :math:`c`, :math:`O(n d \log d)`; directly
      :math:`d^2 n / 2` for ``d <= min(768, 3 n)`` (``d <= min(320, 3 n)`` for a
      transposed view ``X``).
    - ``A @ B``: truncated convolution of the coefficient vectors, :math:`O(d \log d)`.
    - ``inv``: Newton's iteration for :math:`1/c(z) \bmod z^d`, :math:`O(d \log d)`.
    - ``from_mat_inner(X)``: the ``k``-th diagonal sum of :math:`X X^\top` is the
      lag-``k`` autocorrelation of the columns of ``X`` summed over the columns,
      :math:`O(n d \log d)`, directly :math:`d^2 n / 2` for ``d <= min(384, 1.5 n)``;
      ``from_inner(X)`` applies it to :math:`A^\top X` (three FFTs of the ``n``
      columns, or directly :math:`d^2 n` for such ``d``), or, for ``n >= 8 d``, to
      :math:`A^\top (X X^\top) A` (:math:`d^2 n / 2 + O(d^3)`; the one kernel with a
      ``d x d`` intermediate, at most an eighth of ``X``). With FFTs the last 64 lags,
      which the projection divides by small :math:`d - k`, are summed exactly.
    - ``from_inner()``: the ``k``-th diagonal sum of :math:`A^\top A` is
      :math:`\sum_p (d - k - p) c_p c_{p+k}` (the same for :math:`A A^\top`), one
      correlation, :math:`O(d \log d)`.
    - ``from_inner2(M)``: the diagonal sums of :math:`A^\top M A` from those of
      :math:`(M + M^\top) A`, whose rows are filtered in blocks,
      :math:`O(d^2 \log d)` without a ``d x d`` intermediate (see
      :func:`~structmat._toeplitz_sandwich.sandwich_pair_sums`).
    - ``diag``, ``diag_add_`` (on :math:`c_0`), the Frobenius norm
      :math:`(\sum_k (d - k) c_k^2)^{1/2}`, ``+`` and scalar ``*``: :math:`O(d)`;
      ``transpose``: :math:`O(1)`, the same coefficient tensor in the other structure.
    - ``from_dense``: :math:`O(d^2)`, one pass over :math:`S` without copying it.
    - On a stack (coefficients ``(..., d)``): products with operands by the blocked
      GEMMs for every ``d``, products of members and ``from_inner()`` by one grouped
      ``conv1d`` for all members, :math:`O(d^2)` each (:mod:`structmat._toeplitz_stacks`).

    Half types are computed in float32 and rounded once at the end.

    Class attributes:
        upper: Whether the matrix is upper triangular.
        coefficients_name: Name of the stored coefficient tensor (constructor keyword).
        transpose_name: Registry name of the transposed structure.
    """

    upper: ClassVar[bool | None] = None
    closed_under_inverse = True
    batches_natively = True
    coefficients_name: ClassVar[str | None] = None
    parameters = ("upper", "coefficients_name")
    template_hint = "instantiate structmat.TrilToeplitz or structmat.TriuToeplitz"

    def __init__(self, coefficients: Tensor) -> None:
        if type(self)._template:
            type(self)._require_concrete()
        super().__init__(**{self.coefficients_name: coefficients})  # type: ignore[dict-item]

    @classmethod
    def _coefficients_name(cls) -> str:
        cls._require_concrete()
        assert cls.coefficients_name is not None
        return cls.coefficients_name

    @property
    def coefficients(self) -> Tensor:
        """The stored coefficient vector :math:`c` (shape ``(d,)``), not a copy."""
        return getattr(self, self.coefficients_name)  # type: ignore[arg-type]

    @classmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        """Return ``{coefficients_name: (dim,)}``."""
        return {cls._coefficients_name(): (dim,)}

    @classmethod
    def dim_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """``d`` is the number of coefficients."""
        return shapes[cls._coefficients_name()][0]

    # ------------------------------------------------------------- conversions
    @classmethod
    def from_dense(cls: type[T], sym_mat: Tensor) -> T:
        r"""Average mirrored diagonal pairs of ``sym_mat`` (see the class docstring).

        Args:
            sym_mat: Square matrix :math:`S`, shape ``(d, d)``; need not be symmetric.

        Returns:
            The member with :math:`c_k = (\sum_i S_{i+k,i} + \sum_i S_{i,i+k}) / (d - k)`
            for :math:`k \ge 1` and :math:`c_0 = \operatorname{tr}(S) / d`.

        Complexity:
            :math:`O(d^2)`, one pass over :math:`S` without copying it.
        """
        cls._require_concrete()
        mat = cls._check_square(sym_mat)
        if not mat.is_floating_point():
            raise TypeError(f"sym_mat must have a floating-point dtype, got {mat.dtype}")
        upper, lower = diagonal_sums(mat, compute_dtype(mat.dtype))
        return cls(average_diagonal_pairs(upper + lower).to(mat.dtype))

    def to_dense(self) -> Tensor:
        """Return the represented ``d x d`` matrix (a stack: one per member). :math:`O(d^2)`."""
        if self._batch_shape:
            return self._members_to_dense()
        c = self.coefficients
        d = c.shape[0]
        # hankel[i, j] = c[d - 1 - i - j] (zero where the index is negative); flipping
        # rows gives c[i - j] (lower), flipping columns c[j - i] (upper).
        hankel = pad(c.flip(0), (0, d - 1)).unfold(0, d, 1)
        return hankel.flip(1) if self.upper else hankel.flip(0)

    # ----------------------------------------------------------------- kernels
    def _rebuild(self: T, coefficients: Tensor) -> T:
        return self._like(**{self.coefficients_name: coefficients})  # type: ignore[dict-item]

    def _apply(self, signals: Tensor, transpose: bool) -> Tensor:
        """Rows of ``signals`` (shape ``(n, d)``, compute dtype) times ``A^T`` (or ``A``).

        Returns ``(A X)^T`` for ``signals = X^T`` (``(A^T X)^T`` with ``transpose``).
        """
        kernel = self.coefficients.to(signals.dtype)
        if self.upper == transpose:
            return causal_convolution(kernel, signals)
        return anticausal_correlation(kernel, signals)

    def _times(self, X: Tensor, transpose: bool) -> Tensor:
        """``A X`` (``A^T X`` with ``transpose``) for ``X`` of shape ``(d, n)`` in a compute dtype.

        Direct below the measured crossover (see :mod:`structmat._toeplitz_direct`),
        FFT above it. The result may be a transposed view of a slice of an FFT buffer.
        """
        if self._batch_shape or use_direct_product(X):  # a stack: the blocked GEMMs
            kernel = self.coefficients.to(X.dtype)
            return lower_product(kernel, X, transpose=self.upper != transpose)
        return self._apply(X.mT, transpose).mT

    def _matmat(self, X: Tensor) -> Tensor:
        product = self._times(X.to(compute_dtype(X.dtype)), transpose=False)
        if not product.is_contiguous():
            # An FFT result is a slice of a longer buffer: copy it out compactly.
            product = product.mT.contiguous().mT
        return product.to(X.dtype)

    def _matmul(self: T, other: T) -> T:
        work = compute_dtype(self.dtype)
        first, second = self.coefficients.to(work), other.coefficients.to(work)
        if self._batch_shape:
            product = member_convolutions(first, second)
        else:
            product = causal_convolution(first, second.unsqueeze(0))[0]
        return self._rebuild(product.to(self.dtype))

    def _transpose(self) -> StructuredMatrix:
        # the other triangular Toeplitz structure (declared as transpose_name), same tensor
        return self._transposed_member(self.coefficients)

    def _diag(self) -> Tensor:
        c = self.coefficients
        return c[..., :1].expand(c.shape).contiguous()

    def _diag_add_(self, value: Scalar) -> None:
        first = self.coefficients[..., :1]
        first.add_(self.per_member(value, first))

    def _frobenius_norm(self) -> Tensor:
        c = self.coefficients
        d = c.shape[-1]
        counts = torch.arange(d, 0, -1, dtype=compute_dtype(c.dtype), device=c.device)
        return stable_norm([c], [counts], keep=len(self._batch_shape))

    def _inv(self: T) -> T:
        c = self.coefficients
        what = f"{type(self).__name__} matrix"
        check_nonzero(c[:1], what)
        inverse = inverse_series(c.to(compute_dtype(c.dtype))).to(c.dtype)
        if not bool(inverse.isfinite().all()):
            raise SingularMatrixError(
                f"{what} is numerically singular: its inverse overflows in {c.dtype}"
            )
        return self._rebuild(inverse)

    @classmethod
    def _from_mat_inner(cls: type[T], X: Tensor) -> T:
        dtype = X.dtype if X.is_floating_point() else torch.get_default_dtype()
        work = X.to(compute_dtype(dtype))
        lags = gram_lag_sums(work) if use_direct_lags(*X.shape) else lag_sums(work.mT)
        return cls(average_diagonal_pairs(2 * lags).to(dtype))

    def _from_inner(self: T, X: Tensor) -> T:
        r"""Lag sums of :math:`Y = A^\top X` by one of three routes.

        With many columns (``n >= 8 d``), through :math:`S = X X^\top`: the diagonal
        sums of :math:`Y Y^\top = A^\top S A` (:math:`d^2 n / 2 + O(d^3)`, ``d x d`` memory
        at most an eighth of ``X``). Otherwise, for moderate ``d``, ``Y`` and its lag
        sums by blocked GEMMs (:math:`d^2 n`); else by three FFTs of the ``n`` columns.
        The crossovers are in :mod:`structmat._toeplitz_direct`.
        """
        out_dtype = X.dtype
        work = X.to(compute_dtype(out_dtype))
        d, n = X.shape
        if use_gram_first(d, n):
            S = gram(work)
            # A^T S A = A^T (A^T S)^T, as S is symmetric.
            inner = self._times(self._times(S, True).mT, True)
            pair_sums = upper_diagonal_sums(inner) + upper_diagonal_sums(inner.mT)
        elif use_direct_lags(d, n):
            Y = self._times(work, True)
            pair_sums = 2 * gram_lag_sums(Y)
        else:
            # A^T X: a convolution for upper A, a correlation for lower A.
            kernel = self.coefficients.to(work.dtype)
            pair_sums = 2 * filtered_lag_sums(kernel, work.mT, self.upper)
        return self._rebuild(average_diagonal_pairs(pair_sums).to(out_dtype))

    def _from_inner_identity(self: T) -> T:
        c = self.coefficients
        d = c.shape[-1]
        work = c.to(compute_dtype(c.dtype))
        # sum_j (A^T A)[j + k, j] = sum_p c_p (d - p - k) c_{p + k}: correlate c with
        # u_q = (d - q) c_q.
        weighted = torch.arange(d, 0, -1, dtype=work.dtype, device=work.device) * work
        if self._batch_shape:
            lags = member_lag_sums(work, weighted)
        else:
            lags = lag_sums(work.unsqueeze(0), weighted.unsqueeze(0))
        return self._rebuild(average_diagonal_pairs(2 * lags).to(c.dtype))

    def _from_inner2(self: T, XXT: Tensor) -> T:
        out_dtype = XXT.dtype
        work = compute_dtype(out_dtype)
        pair_sums = sandwich_pair_sums(self.coefficients.to(work), XXT, self.upper, work)
        return self._rebuild(average_diagonal_pairs(pair_sums).to(out_dtype))
