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
    :math:`O(d k^2)`; ``diag`` :math:`O(d)`.
    """

    family = "hierarchical"

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
        from structmat.transposed_hierarchical import TransposedHierarchical

        return TransposedHierarchical.with_sizes(self.max_k1, self.max_k2)(**self.tensors())

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

    def _from_outer_identity(self) -> Hierarchical:
        r"""Return ``from_dense(H @ H^T)``, computed blockwise in :math:`O(d k^2)`.

        :math:`H H^\top = [[A A^\top + B B^\top, B R^\top], [R B^\top, R R^\top]]` and
        :math:`R R^\top = [[\operatorname{diag}(C^2), C \odot D^\top], [D C, D D^\top +
        E E^\top]]`, so the projection is :math:`A' = A A^\top + B B^\top`,
        :math:`B' = 2 (R B^\top)^\top`, :math:`C' = C^2`,
        :math:`D' = 2 D \operatorname{diag}(C)`, :math:`E' = D D^\top + E E^\top`.
        """
        A, B, C, D, E = self.parts()
        return type(self)(
            A=A @ A.mT + B @ B.mT,
            B=2 * lower_matmat(C, D, E, B.mT).mT,
            C=C.square(),
            D=2 * (D * C),
            E=D @ D.mT + E @ E.mT,
        )


register_family(r"hierarchical(\d+)_(\d+)", Hierarchical.with_sizes, "hierarchical{k1}_{k2}")
