r"""Triangular arrow matrices: a diagonal plus one dense row or column through a corner.

A ``d x d`` member has one *corner* index :math:`k` (the first or the last index) and
stores

- ``diagonal``, shape ``(d - 1,)``: the diagonal entries :math:`D = (A_{ii})_{i \ne k}`,
- ``arrow``, shape ``(d - 1,)``: the off-diagonal entries of row :math:`k` (a *row
  arrow*) or of column :math:`k` (a *column arrow*), :math:`b`, in index order,
- ``corner``, shape ``(1,)``: the entry :math:`c = A_{kk}`.

Every other entry is zero. Ordering the indices as (the other indices, :math:`k`), a row
arrow reads :math:`\begin{pmatrix} D & 0 \\ b^\top & c \end{pmatrix}` and a column arrow
:math:`\begin{pmatrix} D & b \\ 0 & c \end{pmatrix}`, its transpose. This reordering is
a permutation similarity, so sums, products and inverses follow from these two block
forms whichever index is the corner. For ``d = 1`` the matrix is the corner alone.

The four registered variants (:mod:`structmat.arrow_variants`) pick the triangle and the
corner; the arrow lies in the triangle, so a lower triangular matrix with its corner at
the bottom right has a row arrow (its last row) and one with its corner at the top left a
column arrow (its first column), and the other way round for upper triangular ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, TypeVar

import torch
from torch import Tensor

from structmat._layout import row_sums_of_squares
from structmat._numerics import check_nonzero
from structmat.base import Scalar, StructuredMatrix
from structmat.linear_structure import LinearStructure

Arrow = TypeVar("Arrow", bound="ArrowMatrix")


class ArrowMatrix(LinearStructure):
    r"""Template of the triangular arrow structures (see the module docstring).

    Subclasses set the class attributes

    - ``upper``: whether the matrix is upper (``True``) or lower triangular,
    - ``corner_first``: whether the corner is the first index (top left, ``True``) or
      the last one (bottom right).

    Args:
        diagonal: The diagonal without the corner, :math:`D`, shape ``(d - 1,)``.
        arrow: The off-diagonal entries of the corner's row or column, :math:`b`, shape
            ``(d - 1,)``.
        corner: The corner entry :math:`c`, shape ``(1,)``.

    With :math:`b_1, b_2` and so on for the operands, in the block forms of the module
    docstring (:math:`\odot` the elementwise product):

    - ``A @ B``: :math:`D_1 \odot D_2`, corner :math:`c_1 c_2`, arrow
      :math:`b_1 \odot D_2 + c_1 b_2` (row arrow) or :math:`D_1 \odot b_2 + c_2 b_1`
      (column arrow); :math:`O(d)`.
    - ``inv``: :math:`D^{-1}`, :math:`c^{-1}`, arrow :math:`-b / (c D)`; :math:`O(d)`.
    - ``A @ X``, ``A^T @ X``: one row of :math:`X` times :math:`b` plus row scalings;
      :math:`O(dn)`.
    - ``from_dense(S)``: :math:`D`, :math:`c` from the diagonal of :math:`S`, and
      :math:`b = S_{k,\bar k} + S_{\bar k,k}` (row and column :math:`k` off the
      diagonal, :math:`\bar k` the other indices); :math:`O(d)` reads.
    - ``from_mat_inner(X)``: squared row norms of :math:`X` and
      :math:`b = 2 X_{\bar k} x_k`; :math:`O(dn)`.
    - ``from_inner()`` (projection of :math:`A^\top A`): row arrow
      :math:`(D^2 + b^2, 2 c b, c^2)`, column arrow :math:`(D^2, 2 D b, c^2 + b^\top b)`;
      :math:`O(d)`.
    - ``from_inner(X)``: ``from_mat_inner(A^T @ X)`` from the squared row norms of
      ``X`` and one or two products with its rows; :math:`O(dn)`.
    - ``from_inner2(M)`` (projection of :math:`A^\top M A`): with :math:`M_{11}` the
      block of the other indices, :math:`m_{12}, m_{21}` the corner's column and row
      and :math:`m_{22}` its diagonal entry: row arrow
      :math:`(D^2 \operatorname{diag} M_{11} + D b (m_{12} + m_{21}) + m_{22} b^2,\
      c (D (m_{12} + m_{21}) + 2 m_{22} b),\ c^2 m_{22})`, :math:`O(d)` reads;
      column arrow :math:`(D^2 \operatorname{diag} M_{11},\ D ((M_{11} + M_{11}^\top)
      b + c (m_{12} + m_{21})),\ b^\top M_{11} b + c b^\top (m_{12} + m_{21}) +
      c^2 m_{22})`, two matrix-vector products, :math:`O(d^2)`.
    - ``+``, ``*``, ``diag``, ``diag_add_``, Frobenius norm: :math:`O(d)`;
      ``transpose``: the paired variant on the same tensors, :math:`O(1)`.
    """

    upper: ClassVar[bool | None] = None
    closed_under_inverse = True
    batches_natively = True
    corner_first: ClassVar[bool | None] = None
    parameters = ("upper", "corner_first")
    template_hint = (
        "instantiate a variant that sets 'upper' and 'corner_first', e.g. structmat.TrilTopLeftDiag"
    )

    def __init__(self, diagonal: Tensor, arrow: Tensor, corner: Tensor) -> None:
        super().__init__(diagonal=diagonal, arrow=arrow, corner=corner)

    @classmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        """Return ``{"diagonal": (dim - 1,), "arrow": (dim - 1,), "corner": (1,)}``."""
        return {"diagonal": (dim - 1,), "arrow": (dim - 1,), "corner": (1,)}

    @classmethod
    def dim_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """``d`` is the size of ``diagonal`` plus the corner."""
        return shapes["diagonal"][0] + 1

    @classmethod
    def _row_arrow(cls) -> bool:
        """Whether the arrow is the corner's row (else its column)."""
        return cls.upper == cls.corner_first

    # -------------------------------------------- corner / other indices split
    @classmethod
    def _split(cls, X: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
        """Split ``X`` along ``dim`` (the ``d`` indices) into the others and the corner.

        ``dim=-1`` for the stored vectors and a diagonal, ``-2`` for the rows of an
        operand ``(..., d, n)``; leading dimensions are a stack's batch dimensions.
        """
        d = X.shape[dim]
        if cls.corner_first:
            return X.narrow(dim, 1, d - 1), X.narrow(dim, 0, 1)
        return X.narrow(dim, 0, d - 1), X.narrow(dim, d - 1, 1)

    @classmethod
    def _join(cls, rest: Tensor, corner: Tensor, dim: int = -1) -> Tensor:
        """Inverse of :meth:`_split`: the other indices and the corner joined along ``dim``."""
        return torch.cat([corner, rest] if cls.corner_first else [rest, corner], dim)

    # ---------------------------------------------------------- conversions
    @classmethod
    def from_dense(cls: type[Arrow], sym_mat: Tensor) -> Arrow:
        """Keep the diagonal and fold row and column of the corner into the arrow. :math:`O(d)`."""
        cls._require_concrete()
        cls._check_square(sym_mat)
        k = 0 if cls.corner_first else sym_mat.shape[0] - 1
        diagonal, corner = cls._split(sym_mat.diagonal())
        row, _ = cls._split(sym_mat[k])
        column, _ = cls._split(sym_mat[:, k])
        return cls(diagonal=diagonal.clone(), arrow=row + column, corner=corner.clone())

    def to_dense(self) -> Tensor:
        """Return the ``d x d`` matrix (a stack: one per member). :math:`O(d^2)`."""
        if self._batch_shape:
            return self._members_to_dense()
        zero = self.corner.new_zeros(1)
        unit = self._join(self.arrow.new_zeros(self.arrow.shape), self.corner.new_ones(1))
        arrow = torch.outer(unit, self._join(self.arrow, zero))
        if not self._row_arrow():
            arrow = arrow.mT
        return torch.diag(self._diag()) + arrow

    # -------------------------------------------------------------- kernels
    def _parts(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.diagonal, self.arrow, self.corner

    def _apply(self, X: Tensor, row_arrow: bool) -> Tensor:
        """Return ``[[D, 0], [b^T, c]] @ X`` (``row_arrow``) or ``[[D, b], [0, c]] @ X``.

        Rows are in the original index order. The diagonal part scales all rows in one
        elementwise product, which keeps the memory layout of ``X`` (a transposed view
        stays cheap); the arrow then adds a rank-one correction to the corner row
        (``row_arrow``) or to the other rows. On a stack ``X`` is ``(..., d, n)`` and
        every member's correction is made at once. :math:`O(dn)`.
        """
        D, b, c = self._parts()
        full_diagonal = self._join(D, c)
        rest, corner = self._split(X, -2)
        out = full_diagonal.unsqueeze(-1) * X
        out_rest, out_corner = self._split(out, -2)
        if row_arrow:
            out_corner.add_(b.unsqueeze(-2) @ rest)
        elif self._batch_shape:
            out_rest.add_(b.unsqueeze(-1) * corner)
        else:
            # a rank-one update in place, in the layout of X (no outer-product temporary)
            out_rest.addr_(b, corner.squeeze(0))
        return out

    def _matmat(self, X: Tensor) -> Tensor:
        return self._apply(X, self._row_arrow())

    def _matmul(self: Arrow, other: Arrow) -> Arrow:
        D1, b1, c1 = self._parts()
        D2, b2, c2 = other._parts()
        arrow = b1 * D2 + c1 * b2 if self._row_arrow() else D1 * b2 + c2 * b1
        return self._like(diagonal=D1 * D2, arrow=arrow, corner=c1 * c2)

    def _transpose(self) -> StructuredMatrix:
        # the paired variant (declared as transpose_name) on the same tensors
        return self._transposed_member(self.diagonal, self.arrow, self.corner)

    def _diag(self) -> Tensor:
        return self._join(self.diagonal, self.corner)

    def _diag_add_(self, value: Scalar) -> None:
        self.diagonal.add_(self.per_member(value, self.diagonal))
        self.corner.add_(self.per_member(value, self.corner))

    def _inv(self: Arrow) -> Arrow:
        what = f"{type(self).__name__} matrix"
        check_nonzero(self.diagonal, what)
        check_nonzero(self.corner, what)
        D, b, c = self._parts()
        return type(self)(diagonal=D.reciprocal(), arrow=-b / (c * D), corner=c.reciprocal())

    @classmethod
    def _from_mat_inner(cls: type[Arrow], X: Tensor) -> Arrow:
        if X.shape[0] == 0:
            raise ValueError("from_mat_inner: X must have at least one row")
        rest, x = cls._split(X, -2)
        return cls(
            diagonal=row_sums_of_squares(rest),
            arrow=2 * (rest @ x.squeeze(0)),
            corner=x.square().sum(1),
        )

    def _from_inner(self: Arrow, X: Tensor) -> Arrow:
        r"""Project :math:`Y Y^\top`, :math:`Y = A^\top X`, without forming ``Y``.

        With :math:`X_r` the other rows, :math:`x` the corner row, :math:`s` the
        squared row norms of :math:`X_r` and :math:`p = X_r x`:

        - :math:`A^\top = [[D, 0], [b^\top, c]]` (``A`` a column arrow): with
          :math:`y = X_r^\top b + c x`, diagonal :math:`D^2 s`, arrow
          :math:`2 D \odot X_r y`, corner :math:`\|y\|^2`;
        - :math:`A^\top = [[D, b], [0, c]]` (``A`` a row arrow): diagonal
          :math:`D^2 s + 2 D b\, p + b^2 \|x\|^2`, arrow
          :math:`2 c (D \odot p + b \|x\|^2)`, corner :math:`c^2 \|x\|^2` (the
          diagonal's rounding error is relative to :math:`(|D_i| \|x_i\| + |b_i|
          \|x\|)^2`).

        :math:`O(dn)` in two or three passes over ``X``, no ``d x n`` temporary.
        """
        D, b, c = self._parts()
        rest, x = self._split(X, -2)
        x = x.squeeze(0)
        s = row_sums_of_squares(rest)
        if not self._row_arrow():
            y = rest.mT @ b + c * x
            return type(self)(
                diagonal=D.square() * s, arrow=2 * D * (rest @ y), corner=y.square().sum(0, True)
            )
        p = rest @ x
        q = x.square().sum(0, True)
        return type(self)(
            diagonal=D.square() * s + 2 * D * b * p + b.square() * q,
            arrow=2 * c * (D * p + b * q),
            corner=c.square() * q,
        )

    def _from_inner_identity(self: Arrow) -> Arrow:
        D, b, c = self._parts()
        if self._row_arrow():
            # [[D, b], [0, c]] [[D, 0], [b^T, c]] = [[D^2 + b b^T, c b], [c b^T, c^2]]
            return self._like(diagonal=D.square() + b.square(), arrow=2 * c * b, corner=c.square())
        # [[D, 0], [b^T, c]] [[D, b], [0, c]] = [[D^2, D b], [b^T D, b^T b + c^2]]
        corner = c.square() + b.square().sum(-1, keepdim=True)
        return self._like(diagonal=D.square(), arrow=2 * D * b, corner=corner)

    def _from_inner2(self: Arrow, XXT: Tensor) -> Arrow:
        D, b, c = self._parts()
        k = 0 if self.corner_first else XXT.shape[0] - 1
        M11 = XXT[1:, 1:] if self.corner_first else XXT[:-1, :-1]
        m12, _ = self._split(XXT[:, k])  # the corner's column, without the corner
        m21, m22 = self._split(XXT[k])  # the corner's row; m22 = M[k, k]
        mirrored = m12 + m21
        if self._row_arrow():
            # A = [[D, 0], [b^T, c]]: A^T M A = [[D M11 D + D m12 b^T + b m21 D + m22 b b^T,
            # c (D m12 + m22 b)], [c (m21 D + m22 b^T), c^2 m22]]
            return type(self)(
                diagonal=D.square() * M11.diagonal() + D * b * mirrored + m22 * b.square(),
                arrow=c * (D * mirrored + 2 * m22 * b),
                corner=c.square() * m22,
            )
        # A = [[D, b], [0, c]]: A^T M A = [[D M11 D, D (M11 b + c m12)],
        # [(b^T M11 + c m21) D, b^T M11 b + c (b^T m12 + m21 b) + c^2 m22]]
        M11_b, M11T_b = M11 @ b, M11.mT @ b
        corner = (b * M11_b).sum() + c * (b * mirrored).sum() + c.square() * m22
        return type(self)(
            diagonal=D.square() * M11.diagonal(),
            arrow=D * (M11_b + M11T_b + c * mirrored),
            corner=corner.reshape(1),
        )
