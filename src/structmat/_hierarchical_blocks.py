r"""Block formulas of the hierarchical structures, on the tensors ``(A, B, C, D, E)``.

Notation of :mod:`structmat.hierarchical`: a member of ``hierarchical{k1}_{k2}`` is

.. math::

    H = \begin{pmatrix} A & B_1 & B_2 \\ 0 & \operatorname{diag}(C) & 0 \\ 0 & D & E
    \end{pmatrix}
      = \begin{pmatrix} A & B \\ 0 & R \end{pmatrix},
    \qquad
    R = \begin{pmatrix} \operatorname{diag}(C) & 0 \\ D & E \end{pmatrix},

and a member of ``transposedhierarchical{k1}_{k2}`` is :math:`H^\top` for the same
tensors. Every function here takes and returns such tensors and never forms a
``d x d`` matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor

from structmat._numerics import check_nonzero, compute_dtype, dense_inverse

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


def block_product(first: Parts, second: Parts) -> Parts:
    r"""Tensors of the product :math:`H H'` of two hierarchical matrices, :math:`O(d k^2)`.

    :math:`[[A, B], [0, R]] [[A', B'], [0, R']] = [[A A', A B' + B R'], [0, R R']]`
    with :math:`B R' = (R'^\top B^\top)^\top` and
    :math:`R R' = [[\operatorname{diag}(C C'), 0], [D \operatorname{diag}(C') + E D', E E']]`.
    """
    A, B, C, D, E = first
    A2, B2, C2, D2, E2 = second
    return (
        A @ A2,
        A @ B2 + lower_rmatmat(C2, D2, E2, B.mT).mT,
        C * C2,
        D * C2 + E @ D2,
        E @ E2,
    )


def block_inverse(parts: Parts, what: str) -> Parts:
    r"""Tensors of :math:`H^{-1}`, :math:`O(K_1^3 + K_2^3 + d k^2)`, in float32 for half types.

    .. math::

        H^{-1} = \begin{pmatrix} A^{-1} & -A^{-1} B R^{-1} \\ 0 & R^{-1} \end{pmatrix},
        \qquad
        R^{-1} = \begin{pmatrix} \operatorname{diag}(C^{-1}) & 0 \\
                 -E^{-1} D \operatorname{diag}(C^{-1}) & E^{-1} \end{pmatrix}.

    Raises:
        SingularMatrixError: If ``A``, ``E`` or ``diag(C)`` is singular (``what`` names
            the matrix).
    """
    dtype = parts[0].dtype
    A, B, C, D, E = (t.to(compute_dtype(dtype)) for t in parts)
    check_nonzero(C, what)
    A_inv, E_inv = dense_inverse(A, what), dense_inverse(E, what)
    C_inv = C.reciprocal()
    D_inv = -(E_inv @ D) * C_inv
    B_inv = -A_inv @ lower_rmatmat(C_inv, D_inv, E_inv, B.mT).mT
    A_inv, B_inv, C_inv, D_inv, E_inv = (t.to(dtype) for t in (A_inv, B_inv, C_inv, D_inv, E_inv))
    return A_inv, B_inv, C_inv, D_inv, E_inv


def project_dense(S: Tensor, sizes: tuple[int, int, int]) -> Parts:
    r"""Tensors of the projection of a dense ``S`` onto ``hierarchical`` (block sizes ``sizes``).

    Keeps ``A``, ``E`` and the diagonal ``C`` of ``S`` and folds the mirror entries
    into the one-sided blocks: :math:`B = S_{1,23} + S_{23,1}^\top`,
    :math:`D = S_{3,2} + S_{2,3}^\top`. Reads :math:`O(d (K_1 + K_2))` entries; the
    result never shares storage with ``S``.
    """
    k1, dc, _ = sizes
    mid = k1 + dc
    return (
        S[:k1, :k1].clone(),
        S[:k1, k1:] + S[k1:, :k1].mT,
        S.diagonal()[k1:mid].clone(),
        S[mid:, k1:mid] + S[k1:mid, mid:].mT,
        S[mid:, mid:].clone(),
    )


def assemble(parts: Parts) -> Tensor:
    """The dense ``d x d`` matrix :math:`H` of the tensors ``parts``."""
    A, B, C, D, E = parts
    k1, dc, k2 = A.shape[0], C.shape[0], E.shape[0]
    zeros = A.new_zeros
    return torch.cat(
        [
            torch.cat([A, B], 1),
            torch.cat([zeros(dc, k1), torch.diag(C), zeros(dc, k2)], 1),
            torch.cat([zeros(k2, k1), D, E], 1),
        ],
        0,
    )


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
