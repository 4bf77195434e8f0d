r"""Symmetric Gram matrices :math:`Z Z^\top` in about half the multiply-adds.

A GEMM computes both triangles of :math:`Z Z^\top`. Computing the block rows
:math:`(Z Z^\top)_{s:e,\ s:} = Z_{s:e} Z_{s:}^\top` on and right of the diagonal and
mirroring them costs :math:`d^2 m / 2 + O(d b m)` multiply-adds and one ``d x d``
copy, which pays from inner dimension ``m`` of a few hundred on: measured with one
thread (CPU, float32), 0.55-0.7 of the full GEMM for ``d = m = 785 ... 4097``, 0.85
for ``d = 289``, ``m = 16384``, and 1.2 (slower) for ``m = 64``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from structmat._layout import writes_forbidden

#: Rows per block of :func:`gram`.
GRAM_BLOCK_ROWS = 128

#: Least ``d`` and inner dimension ``m`` for which :func:`gram` goes block by block.
HALF_GRAM_MIN_SIZE = 256


def gram(Z: Tensor) -> Tensor:
    r"""Return :math:`Z Z^\top` for ``Z`` of shape ``(d, m)``, exactly symmetric.

    Blocked (upper block rows, then mirrored) for ``d, m >=``
    :data:`HALF_GRAM_MIN_SIZE` without autograd, one GEMM otherwise. A GEMM need not
    compute :math:`(Z Z^\top)_{ij}` and :math:`(Z Z^\top)_{ji}` in the same order (with
    vectorised microkernels they differ in the last bits), so every computed square
    block on the diagonal gets its strict upper triangle mirrored onto the lower one:
    the result is symmetric to the last bit on every BLAS.

    Complexity:
        :math:`d^2 m / 2 + O(d b m)` multiply-adds blocked, :math:`d^2 m` otherwise,
        plus :math:`O(d b)` (blocked) or :math:`O(d^2)` for the mirroring.
    """
    d, m = Z.shape[-2:]
    if Z.ndim > 2 or min(d, m) < HALF_GRAM_MIN_SIZE or writes_forbidden(Z):  # a stack: one GEMM
        G = Z @ Z.mT
        if writes_forbidden(G):
            return G.triu() + G.triu(1).mT
        return _mirror_upper_(G)
    out = Z.new_empty((d, d))
    for s in range(0, d, GRAM_BLOCK_ROWS):
        e = min(s + GRAM_BLOCK_ROWS, d)
        upper = out[s:e, s:]
        torch.mm(Z[s:e], Z[s:].mT, out=upper)
        _mirror_upper_(upper[:, : e - s])
        out[e:, s:e].copy_(upper[:, e - s :].mT)
    return out


def _mirror_upper_(block: Tensor) -> Tensor:
    """Overwrite the strict lower triangle of the square ``block`` with its upper one."""
    strict_upper = block.triu(1)
    return block.triu_().add_(strict_upper.mT)
