"""Precision and inversion helpers shared by the structure kernels.

The overflow-safe reductions are public, in :mod:`structmat.numerics`; they are
re-exported here under their names for the kernels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from structmat.exceptions import SingularMatrixError
from structmat.numerics import HALF_TYPES as _HALF_TYPES
from structmat.numerics import stable_norm, stable_sum

__all__ = ["check_nonzero", "compute_dtype", "dense_inverse", "stable_norm", "stable_sum"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype to compute in: float32 for half types, ``dtype`` otherwise.

    torch lacks half-precision FFTs and LAPACK routines on CPU.
    """
    return torch.float32 if dtype in _HALF_TYPES else dtype


def check_nonzero(diagonal: Tensor, what: str) -> None:
    """Raise :class:`SingularMatrixError` if a (triangular) diagonal has a zero or non-finite entry.

    Args:
        diagonal: The diagonal entries whose product is the determinant.
        what: Name of the matrix, for the message.
    """
    if diagonal.numel() and not bool(((diagonal != 0) & diagonal.isfinite()).all()):
        raise SingularMatrixError(
            f"{what} is singular: its diagonal has a zero or non-finite entry"
        )


def dense_inverse(mat: Tensor, what: str) -> Tensor:
    """Invert a (batch of) dense square matrices, computing half types in float32.

    Args:
        mat: Tensor of shape ``(..., n, n)``.
        what: Name of the matrix, for the message.

    Returns:
        The inverse, in ``mat``'s dtype.

    Raises:
        SingularMatrixError: If any matrix is singular or its inverse is not finite.
    """
    if mat.shape[-1] == 0:
        return mat.clone()
    work = mat.to(compute_dtype(mat.dtype))
    inverse, info = torch.linalg.inv_ex(work)
    if bool((info != 0).any()) or not bool(inverse.isfinite().all()):
        raise SingularMatrixError(f"{what} is singular and has no inverse")
    return inverse.to(mat.dtype)
