"""Precision, reduction and inversion helpers shared by the structure kernels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from structmat.exceptions import SingularMatrixError

_HALF_TYPES = (torch.float16, torch.bfloat16)


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


def _scale_of(values: Sequence[Tensor]) -> Tensor:
    """Largest magnitude over ``values`` (float32 tensors), 0 for no entries."""
    maxima = [v.abs().amax() for v in values if v.numel()]
    if not maxima:
        return values[0].new_zeros(())
    return torch.stack(maxima).amax()


def stable_sum(values: Tensor, mean: bool = False) -> Tensor:
    r"""Sum (or mean) of a tensor that cannot overflow in half precision unless the result does.

    float32 and float64 are reduced as they are. Half types are reduced in float32
    after dividing by the largest magnitude :math:`s`, :math:`s \sum_i (v_i / s)`: no
    partial sum exceeds :math:`n s`, which float32 holds for every half-precision
    :math:`s` (bfloat16 reaches the float32 range, so float32 alone would not do).

    Args:
        values: The entries.
        mean: Return the mean instead of the sum.

    Returns:
        A 0-d tensor in the dtype of ``values``.
    """
    if values.dtype not in _HALF_TYPES:
        return values.mean() if mean else values.sum()
    work = values.float()
    scale = _scale_of([work])
    usable = scale.isfinite() & (scale > 0)
    safe = torch.where(usable, scale, torch.ones_like(scale))
    scaled = work / safe
    total = (scaled.mean() if mean else scaled.sum()) * safe
    plain = work.mean() if mean else work.sum()  # inf / nan entries, or all zero
    return torch.where(usable, total, plain).to(values.dtype)


def stable_norm(
    tensors: Sequence[Tensor], weights: Sequence[Tensor | None] | None = None
) -> Tensor:
    r"""The 2-norm :math:`(\sum_t \sum_i w_{ti} x_{ti}^2)^{1/2}` over several tensors.

    float32 and float64 use :func:`torch.linalg.vector_norm` per tensor. Half types are
    accumulated in float32 after dividing by the largest magnitude :math:`s`,
    :math:`s (\sum w (x / s)^2)^{1/2}`, so squares neither overflow nor underflow and
    the norm is finite whenever it is representable in the dtype.

    Args:
        tensors: The tensors, all of one dtype; at least one.
        weights: Optional non-negative weights, one per tensor (``None`` for 1),
            broadcastable to it.

    Returns:
        A 0-d tensor in the dtype of the tensors.

    Complexity:
        One pass over the tensors (two more for half types).
    """
    dtype = tensors[0].dtype
    weights = list(weights) if weights is not None else [None] * len(tensors)
    if dtype not in _HALF_TYPES:
        norms = [
            torch.linalg.vector_norm(t) if w is None else (w * t.square()).sum().sqrt()
            for t, w in zip(tensors, weights, strict=True)
        ]
        return norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    work = [t.float() for t in tensors]
    scale = _scale_of(work)
    usable = scale.isfinite() & (scale > 0)
    safe = torch.where(usable, scale, torch.ones_like(scale))
    squares = [
        (v / safe).square().sum() if w is None else (w * (v / safe).square()).sum()
        for v, w in zip(work, weights, strict=True)
    ]
    norm = torch.stack(squares).sum().sqrt() * safe
    return torch.where(usable | scale.isnan(), norm, scale).to(dtype)
