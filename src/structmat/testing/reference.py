"""Independent dense reference projections, for checking ``from_dense``."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from structmat.base import StructuredMatrix
from structmat.testing.strategies import random_member


@functools.lru_cache(maxsize=256)
def sparsity_pattern(structure: type[StructuredMatrix], dim: int) -> Tensor:
    """Boolean ``dim x dim`` mask of the entries a member of ``structure`` may have non-zero.

    Read off two random members (an entry that both leave zero is outside the pattern);
    cached per structure and dimension. Do not modify the returned tensor.
    """
    first, second = (random_member(structure, dim, seed).to_dense() for seed in (0, 1))
    return (first != 0) | (second != 0)


def pattern_projection(structure: type[StructuredMatrix], mat: Tensor) -> Tensor:
    r"""The projection that keeps the pattern and folds mirrored entries into it.

    :math:`P(S)_{ij} = S_{ij} + S_{ji}` where :math:`(i, j)` is in the pattern of the
    structure and its mirror :math:`(j, i)` is not, :math:`P(S)_{ij} = S_{ij}` where both
    are, and 0 outside the pattern. On a symmetric :math:`S` this keeps the entries of
    the pattern and doubles those whose mirror the structure cannot hold. Every built-in
    structure projects this way except the triangular Toeplitz ones.

    Args:
        structure: The structure whose pattern to use.
        mat: :math:`S`, shape ``(d, d)``.

    Returns:
        :math:`P(S)` as a dense ``d x d`` tensor.
    """
    mask = sparsity_pattern(structure, mat.shape[0])
    zero = torch.zeros((), dtype=mat.dtype)
    folded = mat + torch.where(mask.mT, zero, mat.mT)
    return torch.where(mask, folded, zero)
