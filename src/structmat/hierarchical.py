r"""Hierarchical matrices: two dense corners linked through a diagonal middle block.

The family ``hierarchical{k1}_{k2}`` holds the matrices

.. math::

    H = \begin{pmatrix} A & B_1 & B_2 \\ 0 & \operatorname{diag}(c) & 0 \\ 0 & D & E
    \end{pmatrix}
      = \begin{pmatrix} A & B \\ 0 & R \end{pmatrix},
    \qquad
    R = \begin{pmatrix} \operatorname{diag}(c) & 0 \\ D & E \end{pmatrix},

with ``A`` (:math:`K_1 \times K_1`) and ``E`` (:math:`K_2 \times K_2`) dense. Both
``H`` and its lower part ``R`` are block upper/lower triangular, so products and
inverses stay in the structure: the invertible members form a group. Every kernel
below costs :math:`O(d (K_1 + K_2)^2)` (or :math:`O(n d (K_1 + K_2))` with an
``n``-column operand) and never forms a ``d x d`` matrix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from structmat._hierarchical_kernels import (
    GRAM_ROUTE_MIN_ELEMENTS,
    arrow_gram,
    inner_arrow,
    left_product,
    project_arrow,
    right_product,
)
from structmat._hierarchical_layout import HierarchicalLayout
from structmat._layout import stored_by_columns
from structmat._numerics import check_nonzero, compute_dtype, dense_inverse
from structmat.registry import register_family

if TYPE_CHECKING:
    from structmat.transposed_hierarchical import TransposedHierarchical

Parts = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


def lower_matmat(C: Tensor, D: Tensor, E: Tensor, Y: Tensor) -> Tensor:
    r"""Return :math:`R Y` for the lower part :math:`R = [[\operatorname{diag}(C), 0], [D, E]]`.

    Args:
        C: Diagonal, shape ``(dc,)``.
        D: Shape ``(K2, dc)``.
        E: Shape ``(K2, K2)``.
        Y: Shape ``(dc + K2, n)``.

    Returns:
        :math:`(C \odot Y_c;\ D Y_c + E Y_e)`, shape ``(dc + K2, n)``;
        :math:`O(n (dc K_2 + K_2^2))`.
    """
    Y_c, Y_e = Y.split([C.shape[0], E.shape[0]])
    return torch.cat([C.unsqueeze(1) * Y_c, D @ Y_c + E @ Y_e])


def lower_rmatmat(C: Tensor, D: Tensor, E: Tensor, Y: Tensor) -> Tensor:
    r"""Return :math:`R^\top Y` for the lower part ``R`` of :func:`lower_matmat`.

    Returns:
        :math:`(C \odot Y_c + D^\top Y_e;\ E^\top Y_e)`, shape ``(dc + K2, n)``;
        :math:`O(n (dc K_2 + K_2^2))`.
    """
    Y_c, Y_e = Y.split([C.shape[0], E.shape[0]])
    return torch.cat([C.unsqueeze(1) * Y_c + D.mT @ Y_e, E.mT @ Y_e])


class Hierarchical(HierarchicalLayout):
    r"""Hierarchical matrix :math:`H = [[A, B_1, B_2], [0, \operatorname{diag}(C), 0], [0, D, E]]`.

    The concrete class for sizes ``(k1, k2)`` is ``Hierarchical.with_sizes(k1, k2)``
    (registered as ``"hierarchical{k1}_{k2}"``). Its block sizes
    :math:`(K_1, d_c, K_2)` fill ``A`` first, then ``E``, then the diagonal (see
    :meth:`block_sizes`). Stored tensors: ``A (K1, K1)``, ``B = (B1 B2)`` of shape
    ``(K1, d - K1)``, ``C (dc,)``, ``D (K2, dc)``, ``E (K2, K2)``; all general
    (``A`` and ``E`` need not be symmetric).

    ``from_dense(S)`` keeps ``A``, ``E`` and the diagonal ``C`` of ``S`` and folds the
    mirror entries into the one-sided blocks: :math:`B = S_{1,23} + S_{23,1}^\top`,
    :math:`D = S_{3,2} + S_{2,3}^\top`. The transpose is a
    :class:`~structmat.TransposedHierarchical` with the same tensors.

    Kernels (:math:`k = K_1 + K_2`): ``A @ X`` and ``A^T @ X`` :math:`O(n d k)`;
    ``A @ B`` :math:`O(d k^2)`; ``inv`` :math:`O(d k^2 + k^3)`;
    ``from_mat_inner(X)`` and ``from_inner(X)`` :math:`O(n d k)`; ``from_inner()``
    :math:`O(d k^2)`; ``from_inner2(M)`` :math:`O(d k^2)`, reading the
    :math:`O(d k)` entries of ``M`` it needs; ``diag`` :math:`O(d)`.
    """

    family = "hierarchical"
    transpose_family = "transposedhierarchical"
    template_hint = "use Hierarchical.with_sizes(k1, k2) or get_structure('hierarchical{k1}_{k2}')"

    # --------------------------------------------------------- dense round trip
    @classmethod
    def from_dense(cls, sym_mat: Tensor) -> Hierarchical:
        r"""Project ``sym_mat`` onto the pattern, folding mirrors into ``B`` and ``D``.

        Reads :math:`O(d (K_1 + K_2))` entries.
        """
        S = cls._check_square(sym_mat)
        k1, dc, _ = cls.block_sizes(S.shape[0])
        mid = k1 + dc
        return cls(
            A=S[:k1, :k1].clone(),
            B=S[:k1, k1:] + S[k1:, :k1].mT,
            C=S.diagonal()[k1:mid].clone(),
            D=S[mid:, k1:mid] + S[k1:mid, mid:].mT,
            E=S[mid:, mid:].clone(),
        )

    def to_dense(self) -> Tensor:
        """Assemble the ``d x d`` matrix."""
        A, B, C, D, E = self.parts()
        k1, dc, k2 = self.sizes
        zeros = A.new_zeros
        return torch.cat(
            [
                torch.cat([A, B], 1),
                torch.cat([zeros(dc, k1), torch.diag(C), zeros(dc, k2)], 1),
                torch.cat([zeros(k2, k1), D, E], 1),
            ],
            0,
        )

    # ---------------------------------------------------------------- kernels
    def _matmat(self, X: Tensor) -> Tensor:
        r""":math:`H X = (A X_1 + B Y;\ R Y)` with :math:`Y = X_{23}`, :math:`O(n d k)`.

        A transposed view ``X = W^T`` is multiplied as :math:`(W H^\top)^\top`, in its
        own layout (:mod:`structmat._hierarchical_kernels`).
        """
        if stored_by_columns(X):
            return right_product(X.mT, self.parts(), transpose=True).mT
        return left_product(X, self.parts(), transpose=False)

    def _rmatmat(self, X: Tensor) -> Tensor:
        r""":math:`H^\top X = (A^\top X_1;\ B^\top X_1 + R^\top Y)`, :math:`O(n d k)`.

        A transposed view ``X = W^T`` is multiplied as :math:`(W H)^\top`.
        """
        if stored_by_columns(X):
            return right_product(X.mT, self.parts(), transpose=False).mT
        return left_product(X, self.parts(), transpose=True)

    def _matmul(self, other: Hierarchical) -> Hierarchical:
        r"""Blockwise product, :math:`O(d k^2)`.

        :math:`[[A, B], [0, R]] [[A', B'], [0, R']] = [[A A', A B' + B R'], [0, R R']]`
        with :math:`B R' = (R'^\top B^\top)^\top` and
        :math:`R R' = [[\operatorname{diag}(C C'), 0], [D \operatorname{diag}(C') + E D', E E']]`.
        """
        A, B, C, D, E = self.parts()
        A2, B2, C2, D2, E2 = other.parts()
        return type(self)(
            A=A @ A2,
            B=A @ B2 + lower_rmatmat(C2, D2, E2, B.mT).mT,
            C=C * C2,
            D=D * C2 + E @ D2,
            E=E @ E2,
        )

    def _transpose(self) -> TransposedHierarchical:
        r"""The same tensors read as :math:`H^\top` (no copy)."""
        transposed = type(self).transpose_structure()
        return transposed._from_checked(self.shape, self.tensors())  # type: ignore[return-value]

    def _inv(self) -> Hierarchical:
        r"""Block inverse, :math:`O(K_1^3 + K_2^3 + d k^2)`, in float32 for half types.

        .. math::

            H^{-1} = \begin{pmatrix} A^{-1} & -A^{-1} B R^{-1} \\ 0 & R^{-1} \end{pmatrix},
            \qquad
            R^{-1} = \begin{pmatrix} \operatorname{diag}(C^{-1}) & 0 \\
                     -E^{-1} D \operatorname{diag}(C^{-1}) & E^{-1} \end{pmatrix}.

        Raises:
            SingularMatrixError: If ``A``, ``E`` or ``diag(C)`` is singular.
        """
        dtype = self.dtype
        A, B, C, D, E = (t.to(compute_dtype(dtype)) for t in self.parts())
        what = f"{type(self).__name__} matrix"
        check_nonzero(C, what)
        A_inv, E_inv = dense_inverse(A, what), dense_inverse(E, what)
        C_inv = C.reciprocal()
        D_inv = -(E_inv @ D) * C_inv
        B_inv = -A_inv @ lower_rmatmat(C_inv, D_inv, E_inv, B.mT).mT
        parts = {"A": A_inv, "B": B_inv, "C": C_inv, "D": D_inv, "E": E_inv}
        return type(self)(**{key: t.to(dtype) for key, t in parts.items()})

    @classmethod
    def _from_mat_inner(cls, X: Tensor) -> Hierarchical:
        r"""Project :math:`X X^\top` from its rows ``a, e`` and the diagonal of its middle.

        :math:`G = (X_1; X_3) X^\top` in one GEMM and the squared row norms of
        :math:`X_2` (:func:`~structmat._hierarchical_kernels.arrow_gram`) give
        :math:`A = X_1 X_1^\top`, :math:`B = 2 X_1 X_{23}^\top`,
        :math:`C = \sum_j (X_2)_{:j}^2`, :math:`D = 2 X_3 X_2^\top`,
        :math:`E = X_3 X_3^\top`; :math:`O(n d k)`, one pass over ``X``.
        """
        sizes = cls.block_sizes(X.shape[0])
        G, s = arrow_gram(X, sizes)
        return cls(**project_arrow(G, s, sizes))

    def _from_inner(self, X: Tensor) -> Hierarchical:
        r"""Project :math:`H^\top X X^\top H` without forming :math:`H^\top X`.

        The rows ``a, e`` of :math:`H^\top S H` and the diagonal of its middle block
        follow from those of :math:`S = X X^\top`
        (:func:`~structmat._hierarchical_kernels.inner_arrow`): :math:`O(n d k)` in one
        GEMM and one pass over ``X``, then :math:`O(d k^2)`. Small operands (below
        :data:`~structmat._hierarchical_kernels.GRAM_ROUTE_MIN_ELEMENTS` elements) take
        ``from_mat_inner(H^T @ X)``, which has fewer ops.
        """
        if X.numel() < GRAM_ROUTE_MIN_ELEMENTS:
            return self.from_mat_inner(self._rmatmat(X))
        G, s = inner_arrow(self.parts(), *arrow_gram(X, self.sizes))
        return type(self)(**project_arrow(G, s, self.sizes))

    def _from_inner_identity(self) -> Hierarchical:
        r"""Project :math:`H^\top H = [[A^\top A, A^\top B], [B^\top A, B^\top B + R^\top R]]`.

        Only the needed blocks of :math:`B^\top B` are formed, :math:`O(d k^2)`:
        :math:`A' = A^\top A`, :math:`B' = 2 A^\top B`,
        :math:`C' = C^2 + \sum_i (B_1)_{i:}^2 + \sum_i D_{i:}^2`,
        :math:`D' = 2 (B_2^\top B_1 + E^\top D)`, :math:`E' = B_2^\top B_2 + E^\top E`.
        """
        A, B, C, D, E = self.parts()
        B_c, B_e = B.split([C.shape[0], E.shape[0]], dim=1)
        return type(self)(
            A=A.mT @ A,
            B=2 * (A.mT @ B),
            C=C.square() + B_c.square().sum(0) + D.square().sum(0),
            D=2 * (B_e.mT @ B_c + E.mT @ D),
            E=B_e.mT @ B_e + E.mT @ E,
        )

    def _from_inner2(self, XXT: Tensor) -> Hierarchical:
        r"""Project :math:`H^\top M H` blockwise, :math:`O(d k^2)`; see :func:`project_sandwich`."""
        return type(self)(*project_sandwich(self.parts(), XXT))


def project_sandwich(parts: Parts, M: Tensor) -> Parts:
    r"""Tensors of the projection of :math:`H^\top M H` onto the hierarchical structure.

    With the block columns :math:`h_1 = (A; 0; 0)`, :math:`h_2 = (B_1;
    \operatorname{diag}(C); D)`, :math:`h_3 = (B_2; 0; E)` of ``H``, block ``(a, b)`` of
    :math:`H^\top M H` is :math:`h_a^\top M h_b`, and the mirror blocks folded in by the
    projection are those of :math:`h_a^\top M^\top h_b`. With :math:`S = M + M^\top`
    and :math:`P_1 = S_{11} B_1 + S_{12} \operatorname{diag}(C) + S_{13} D`,
    :math:`P_3 = S_{31} B_1 + S_{32} \operatorname{diag}(C) + S_{33} D`:

    - :math:`A' = A^\top M_{11} A`, :math:`B' = A^\top (P_1,\ S_{11} B_2 + S_{13} E)`,
    - :math:`C'_j = (h_2)_{:j}^\top M (h_2)_{:j}`, summed term by term,
    - :math:`D' = B_2^\top P_1 + E^\top P_3`,
    - :math:`E' = h_3^\top M h_3 = B_2^\top M_{11} B_2 + B_2^\top M_{13} E + E^\top M_{31}
      B_2 + E^\top M_{33} E`.

    Args:
        parts: ``(A, B, C, D, E)`` of ``H``.
        M: Shape ``(d, d)``; need not be symmetric.

    Returns:
        ``(A', B', C', D', E')``.

    Complexity:
        :math:`O(d k^2)` with :math:`k = K_1 + K_2`; reads the blocks of ``M`` in the
        first :math:`K_1` and last :math:`K_2` rows and columns and its diagonal, never
        the :math:`d_c \times d_c` middle.
    """
    A, B, C, D, E = parts
    k1, dc = A.shape[0], C.shape[0]
    mid = k1 + dc
    B1, B2 = B.split([dc, E.shape[0]], dim=1)
    M11, M13, M31, M33 = M[:k1, :k1], M[:k1, mid:], M[mid:, :k1], M[mid:, mid:]
    S11 = M11 + M11.mT
    S12 = M[:k1, k1:mid] + M[k1:mid, :k1].mT
    S13 = M13 + M31.mT
    S32 = M[mid:, k1:mid] + M[k1:mid, mid:].mT
    S33 = M33 + M33.mT
    P1 = S11 @ B1 + S12 * C + S13 @ D
    P3 = S13.mT @ B1 + S32 * C + S33 @ D
    C_new = (
        (B1 * (M11 @ B1)).sum(0)
        + C * (B1 * S12).sum(0)
        + (B1 * (S13 @ D)).sum(0)
        + C.square() * M[k1:mid, k1:mid].diagonal()
        + C * (D * S32).sum(0)
        + (D * (M33 @ D)).sum(0)
    )
    return (
        A.mT @ M11 @ A,
        A.mT @ torch.cat([P1, S11 @ B2 + S13 @ E], 1),
        C_new,
        B2.mT @ P1 + E.mT @ P3,
        B2.mT @ (M11 @ B2 + M13 @ E) + E.mT @ (M31 @ B2 + M33 @ E),
    )


def project_outer_gram(parts: Parts) -> Parts:
    r"""Tensors of the projection of :math:`H H^\top` onto the hierarchical structure.

    :math:`H H^\top = [[A A^\top + B B^\top, B R^\top], [R B^\top, R R^\top]]` and
    :math:`R R^\top = [[\operatorname{diag}(C^2), C \odot D^\top], [D C, D D^\top +
    E E^\top]]`, so the projection is :math:`A' = A A^\top + B B^\top`,
    :math:`B' = 2 (R B^\top)^\top`, :math:`C' = C^2`,
    :math:`D' = 2 D \operatorname{diag}(C)`, :math:`E' = D D^\top + E E^\top`.

    Args:
        parts: ``(A, B, C, D, E)`` of ``H``.

    Returns:
        ``(A', B', C', D', E')``; :math:`O(d k^2)`.
    """
    A, B, C, D, E = parts
    return (
        A @ A.mT + B @ B.mT,
        2 * lower_matmat(C, D, E, B.mT).mT,
        C.square(),
        2 * (D * C),
        D @ D.mT + E @ E.mT,
    )


def project_outer_sandwich(parts: Parts, M: Tensor) -> Parts:
    r"""Tensors of the projection of :math:`H M H^\top` onto the hierarchical structure.

    With the block rows :math:`r_1 = (A, B)`, :math:`r_2 = (0, \operatorname{diag}(C),
    0)`, :math:`r_3 = (0, D, E)` of ``H``, block ``(a, b)`` is :math:`r_a M r_b^\top`
    and the folded mirrors are those of :math:`r_a M^\top r_b^\top`:
    :math:`A' = r_1 M r_1^\top`, :math:`B' = (r_1 (M + M^\top))_{:, K_1:} R^\top`,
    :math:`C' = C^2 \odot \operatorname{diag}(M_{22})`,
    :math:`D' = (D (M_{22} + M_{22}^\top) + E (M_{32} + M_{23}^\top))
    \operatorname{diag}(C)`, :math:`E' = r_3 M r_3^\top`.

    Args:
        parts: ``(A, B, C, D, E)`` of ``H``.
        M: Shape ``(d, d)``; need not be symmetric.

    Returns:
        ``(A', B', C', D', E')``.

    Complexity:
        :math:`O(k d^2)`: every entry of ``M`` enters the dense first block row, so
        ``M`` is read once per row of ``A`` (two products of shape ``(K_1, d)``);
        no ``d x d`` intermediate.
    """
    A, B, C, D, E = parts
    k1, dc = A.shape[0], C.shape[0]
    mid = k1 + dc
    rows = A @ M[:k1] + B @ M[k1:]  # r_1 M, shape (K1, d)
    rows_t = A @ M[:, :k1].mT + B @ M[:, k1:].mT  # r_1 M^T
    M22, M23, M32, M33 = M[k1:mid, k1:mid], M[k1:mid, mid:], M[mid:, k1:mid], M[mid:, mid:]
    D_M22 = D @ M22
    return (
        rows[:, :k1] @ A.mT + rows[:, k1:] @ B.mT,
        lower_matmat(C, D, E, (rows + rows_t)[:, k1:].mT).mT,
        C.square() * M22.diagonal(),
        (D_M22 + (M22 @ D.mT).mT + E @ (M32 + M23.mT)) * C,
        (D_M22 + E @ M32) @ D.mT + (D @ M23 + E @ M33) @ E.mT,
    )


register_family(r"hierarchical(\d+)_(\d+)", Hierarchical.with_sizes, "hierarchical{k1}_{k2}")
