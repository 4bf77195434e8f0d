r"""Reductions that do not overflow in half precision unless their result does.

A structure whose Frobenius norm or trace sums squares or entries in bfloat16 or
float16 overflows long before the result does: a float16 entry above 256 has a square
above the largest float16, 65504. These helpers reduce half types in float32 after
dividing by the largest magnitude, so the result is finite whenever it is representable
in the dtype; float32 and float64 are reduced as they are. The law suite
(:mod:`structmat.testing`) demands this of every structure's ``frobenius_norm``,
``trace`` and ``average_trace``: use :func:`stable_norm` in a structure's
``_frobenius_norm`` hook.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

#: The dtypes reduced in float32 after scaling.
HALF_TYPES = (torch.float16, torch.bfloat16)


def trailing_dims(tensor: Tensor, keep: int = 0) -> tuple[int, ...]:
    """The dimensions of ``tensor`` after its ``keep`` leading (batch) ones."""
    return tuple(range(keep, tensor.ndim))


def _scale_of(values: Sequence[Tensor], keep: int = 0) -> Tensor:
    """Largest magnitude over ``values`` (float32 tensors), 0 for no entries.

    ``keep`` leading dimensions are kept (one scale per index of them).
    """
    maxima = [v.abs().amax(trailing_dims(v, keep)) for v in values if v.numel()]
    if not maxima:
        return values[0].new_zeros(())
    return torch.stack(maxima).amax(0)


def stable_sum(values: Tensor, mean: bool = False, keep: int = 0) -> Tensor:
    r"""Sum (or mean) of a tensor that cannot overflow in half precision unless the result does.

    float32 and float64 are reduced as they are. Half types are reduced in float32
    after dividing by the largest magnitude :math:`s`, :math:`s \sum_i (v_i / s)`: no
    partial sum exceeds :math:`n s`, which float32 holds for every half-precision
    :math:`s` (bfloat16 reaches the float32 range, so float32 alone would not do).

    Args:
        values: The entries.
        mean: Return the mean instead of the sum.
        keep: How many leading dimensions to keep (the batch dimensions of a stack:
            one sum per index of them).

    Returns:
        A tensor of the ``keep`` leading dimensions of ``values`` (0-d for ``keep=0``) in
        the dtype of ``values``.
    """
    # explicit dimensions: the same reduction, and a fast one under torch.vmap
    dims = trailing_dims(values, keep)
    if values.dtype not in HALF_TYPES:
        return values.mean(dims) if mean else values.sum(dims)
    work = values.float()
    scale = _scale_of([work], keep)
    usable = scale.isfinite() & (scale > 0)
    safe = torch.where(usable, scale, torch.ones_like(scale))
    scaled = work / safe.reshape(safe.shape + (1,) * len(dims))
    total = (scaled.mean(dims) if mean else scaled.sum(dims)) * safe
    plain = work.mean(dims) if mean else work.sum(dims)  # inf / nan entries, or all zero
    return torch.where(usable, total, plain).to(values.dtype)


def stable_norm(
    tensors: Sequence[Tensor], weights: Sequence[Tensor | None] | None = None, keep: int = 0
) -> Tensor:
    r"""The 2-norm :math:`(\sum_t \sum_i w_{ti} x_{ti}^2)^{1/2}` over several tensors.

    For a structure that stores each matrix entry once, ``stable_norm(list_of_stored)``
    is :math:`\|A\|_F`; one that repeats stored numbers passes their counts as
    ``weights`` (a triangular Toeplitz matrix repeats :math:`c_k` :math:`d - k` times).

    float32 and float64 use :func:`torch.linalg.vector_norm` per tensor. Half types are
    accumulated in float32 after dividing by the largest magnitude :math:`s`,
    :math:`s (\sum w (x / s)^2)^{1/2}`, so squares neither overflow nor underflow and
    the norm is finite whenever it is representable in the dtype.

    Args:
        tensors: The tensors, all of one dtype; at least one.
        weights: Optional non-negative weights, one per tensor (``None`` for 1),
            broadcastable to it.
        keep: How many leading dimensions to keep (the batch dimensions of a stack:
            one norm per index of them).

    Returns:
        A tensor of the ``keep`` leading dimensions (0-d for ``keep=0``) in the dtype of
        the tensors.

    Complexity:
        One pass over the tensors (two more for half types).
    """
    dtype = tensors[0].dtype
    weights = list(weights) if weights is not None else [None] * len(tensors)

    if dtype not in HALF_TYPES:
        norms = [
            torch.linalg.vector_norm(t, dim=trailing_dims(t, keep))
            if w is None
            else (w * t.square()).sum(trailing_dims(t, keep)).sqrt()
            for t, w in zip(tensors, weights, strict=True)
        ]
        return norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms), dim=0)
    work = [t.float() for t in tensors]
    scale = _scale_of(work, keep)
    usable = scale.isfinite() & (scale > 0)
    safe = torch.where(usable, scale, torch.ones_like(scale))

    def scaled(v: Tensor) -> Tensor:
        return v / safe.reshape(safe.shape + (1,) * (v.ndim - keep))

    squares = [
        scaled(v).square().sum(trailing_dims(v, keep))
        if w is None
        else (w * scaled(v).square()).sum(trailing_dims(v, keep))
        for v, w in zip(work, weights, strict=True)
    ]
    norm = torch.stack(squares).sum(0).sqrt() * safe
    return torch.where(usable | scale.isnan(), norm, scale).to(dtype)
