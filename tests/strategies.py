"""Helpers shared by the structure tests, on top of :mod:`structmat.testing`.

The random members and tensors come from the shipped :mod:`structmat.testing`; this
module adds the reference projection of the triangular Toeplitz structures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from structmat.testing import interesting_dims, random_member, random_tensor, seeds

__all__ = ["interesting_dims", "random_member", "random_tensor", "seeds", "toeplitz_projection"]


def toeplitz_projection(mat: Tensor, upper: bool) -> Tensor:
    """Independent dense projection onto triangular Toeplitz matrices.

    Coefficient ``k >= 1`` is the sum of the ``k``-th lower and upper diagonals of
    ``mat`` divided by ``d - k``; coefficient 0 is the mean of the diagonal. The result
    is the lower (or, with ``upper``, the upper) triangular Toeplitz matrix of them.
    """
    dim = mat.shape[0]
    idx = torch.arange(dim)
    lag = (idx[:, None] - idx[None, :]).abs()
    sums = torch.zeros(dim, dtype=mat.dtype).index_add_(0, lag.flatten(), mat.flatten())
    coefficients = sums / torch.arange(dim, 0, -1, dtype=mat.dtype)
    coefficients[0] = mat.diagonal().mean()
    lower = (idx[:, None] - idx[None, :]).clamp(min=0)
    keep = idx[:, None] >= idx[None, :]
    out = torch.where(keep, coefficients[lower], torch.zeros((), dtype=mat.dtype))
    return out.mT.contiguous() if upper else out
