r"""Products of dense triangular matrices that skip the zero triangle.

torch exposes no triangular matrix product (BLAS ``trmm``) nor symmetric rank-k update
(``syrk``), so these kernels cut the matrices into panels of :data:`LEAF` rows, or
recursively into halves down to that size, and call dense GEMMs only on blocks that can
be non-zero. Compared with a dense GEMM of the same shapes this halves the
arithmetic of ``T @ X`` and of the lower triangle of ``X X^T`` and divides that of
``T_1 T_2`` and of the lower triangle of ``T T^T`` by six (asymptotically).

Every function here is out of place and differentiable by autograd, and all but the
inverse act on the last two dimensions (leading dimensions are a stack's batch
dimensions). The triangular inputs must be exactly triangular (zeros in the other
triangle); the triangular outputs are exactly triangular.

The "folded" outputs represent a symmetric matrix :math:`S` by its lower triangle with
the strict part doubled, :math:`\operatorname{tril}(S) + \operatorname{tril}(S, -1)`,
which is the projection of :math:`S` onto lower triangular matrices used by
:class:`structmat.Tril` (transpose it for :class:`structmat.Triu`).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Panel height, and the size below which blocks are multiplied by one dense GEMM.
LEAF = 128


def _join(top_left: Tensor, bottom_left: Tensor, bottom_right: Tensor) -> Tensor:
    """Assemble ``[[top_left, 0], [bottom_left, bottom_right]]`` (over leading batch dims)."""
    zeros = top_left.new_zeros(*top_left.shape[:-1], bottom_right.shape[-1])
    return torch.cat(
        [torch.cat([top_left, zeros], -1), torch.cat([bottom_left, bottom_right], -1)], -2
    )


def tri_matmat(T: Tensor, X: Tensor, upper: bool) -> Tensor:
    r"""Return :math:`T X` for a triangular ``T``, one GEMM per panel of rows.

    Row panel :math:`I` of ``T`` is non-zero only in the columns up to (lower) or from
    (upper) its diagonal block, so it multiplies only those rows of ``X``.

    Args:
        T: Lower (``upper=False``) or upper triangular matrix of shape ``(d, d)``.
        X: Matrix of shape ``(d, n)``.
        upper: Which triangle of ``T`` holds its entries.

    Returns:
        ``T @ X``, shape ``(d, n)``; about :math:`d^2 n / 2` multiply-adds instead of
        the :math:`d^2 n` of a dense product.
    """
    d = T.shape[-1]
    if d <= LEAF:
        return T @ X
    panels = []
    for start in range(0, d, LEAF):
        stop = min(d, start + LEAF)
        if upper:
            panels.append(T[..., start:stop, start:] @ X[..., start:, :])
        else:
            panels.append(T[..., start:stop, :stop] @ X[..., :stop, :])
    return torch.cat(panels, -2)


def tri_matmul(T1: Tensor, T2: Tensor, upper: bool) -> Tensor:
    r"""Return :math:`T_1 T_2` for two triangular matrices of the same kind.

    Args:
        T1: Lower (``upper=False``) or upper triangular matrix of shape ``(d, d)``.
        T2: Triangular like ``T1``, shape ``(d, d)``.
        upper: Which triangle holds the entries.

    Returns:
        The product, triangular like the factors, shape ``(d, d)``; about
        :math:`d^3 / 6` multiply-adds instead of :math:`d^3`.
    """
    if upper:
        # U1 U2 = (U2^T U1^T)^T with lower triangular factors.
        return tri_matmul(T2.mT, T1.mT, upper=False).mT
    d = T1.shape[-1]
    if d <= LEAF:
        return torch.tril(T1 @ T2)
    h = d // 2
    A1, B1, C1 = T1[..., :h, :h], T1[..., h:, :h], T1[..., h:, h:]
    A2, B2, C2 = T2[..., :h, :h], T2[..., h:, :h], T2[..., h:, h:]
    # [[A1, 0], [B1, C1]] [[A2, 0], [B2, C2]] = [[A1 A2, 0], [B1 A2 + C1 B2, C1 C2]];
    # B1 A2 = (A2^T B1^T)^T with A2^T upper triangular.
    bottom_left = tri_matmat(A2.mT, B1.mT, upper=True).mT + tri_matmat(C1, B2, upper=False)
    return _join(tri_matmul(A1, A2, False), bottom_left, tri_matmul(C1, C2, False))


def gram_folded(X: Tensor) -> Tensor:
    r"""Return the folded lower triangle of :math:`S = X X^\top`, one GEMM per row panel.

    Args:
        X: Matrix of shape ``(d, n)``.

    Returns:
        :math:`\operatorname{tril}(S) + \operatorname{tril}(S, -1)`, shape ``(d, d)``;
        about :math:`d^2 n / 2` multiply-adds instead of :math:`d^2 n`.
    """
    d = X.shape[-2]
    twice = 2 * X
    rows = []
    for start in range(0, d, LEAF):
        stop = min(d, start + LEAF)
        panel = X[..., start:stop, :]
        block = panel @ panel.mT
        pieces = [panel @ twice[..., :start, :].mT, torch.tril(block) + torch.tril(block, -1)]
        if stop < d:
            pieces.append(X.new_zeros(*X.shape[:-2], stop - start, d - stop))
        rows.append(torch.cat(pieces, -1))
    return torch.cat(rows, -2)


def tri_gram_folded(T: Tensor, upper: bool) -> Tensor:
    r"""Return the folded lower triangle of :math:`S = T T^\top` for a triangular ``T``.

    Args:
        T: Lower (``upper=False``) or upper triangular matrix of shape ``(d, d)``.
        upper: Which triangle of ``T`` holds its entries.

    Returns:
        :math:`\operatorname{tril}(S) + \operatorname{tril}(S, -1)`, shape ``(d, d)``;
        about :math:`d^3 / 6` multiply-adds instead of :math:`d^3`.
    """
    d = T.shape[-1]
    if d <= LEAF:
        S = T @ T.mT
        return torch.tril(S) + torch.tril(S, -1)
    h = d // 2
    A, C = T[..., :h, :h], T[..., h:, h:]
    if upper:
        # [[A, B], [0, C]] [[A^T, 0], [B^T, C^T]] = [[A A^T + B B^T, .], [C B^T, C C^T]].
        B = T[..., :h, h:]
        top_left = tri_gram_folded(A, True) + gram_folded(B)
        bottom_left = tri_matmat(C, B.mT, upper=True)
        bottom_right = tri_gram_folded(C, True)
    else:
        # [[A, 0], [B, C]] [[A^T, B^T], [0, C^T]] = [[A A^T, .], [B A^T, B B^T + C C^T]].
        B = T[..., h:, :h]
        top_left = tri_gram_folded(A, False)
        bottom_left = tri_matmat(A, B.mT, upper=False).mT
        bottom_right = gram_folded(B) + tri_gram_folded(C, False)
    return _join(top_left, 2 * bottom_left, bottom_right)


def tri_inverse(T: Tensor, upper: bool) -> Tensor:
    r"""Return :math:`T^{-1}` for an invertible triangular ``T`` by block recursion.

    Uses :math:`\begin{pmatrix} A & 0 \\ B & C \end{pmatrix}^{-1} =
    \begin{pmatrix} A^{-1} & 0 \\ -C^{-1} B A^{-1} & C^{-1} \end{pmatrix}` with
    triangular solves (``torch.linalg.solve_triangular``) on the leaves. The caller
    checks the diagonal for zeros and handles half types.

    Args:
        T: Lower (``upper=False``) or upper triangular matrix of shape ``(d, d)``.
        upper: Which triangle of ``T`` holds its entries.

    Returns:
        The inverse, triangular like ``T``; about :math:`d^3 / 6` multiply-adds.
    """
    if upper:
        return tri_inverse(T.mT, upper=False).mT
    d = T.shape[0]
    if d <= LEAF:
        eye = torch.eye(d, dtype=T.dtype, device=T.device)
        return torch.tril(torch.linalg.solve_triangular(T, eye, upper=False))
    h = d // 2
    A_inv = tri_inverse(T[:h, :h], False)
    C_inv = tri_inverse(T[h:, h:], False)
    # -C^{-1} (B A^{-1}) with B A^{-1} = (A^{-T} B^T)^T and A^{-T} upper triangular.
    BA = tri_matmat(A_inv.mT, T[h:, :h].mT, upper=True).mT
    return _join(A_inv, -tri_matmat(C_inv, BA, upper=False), C_inv)
