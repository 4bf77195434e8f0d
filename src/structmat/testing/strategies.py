"""Random members of any structure, drawn from its declared storage layout.

Everything here reads only :meth:`~structmat.StructuredMatrix.tensor_shapes` and the
public operations of a structure, so it works for any structure, built in or not.
Random tensors come from seeded :class:`torch.Generator` objects: hypothesis draws the
dimension and the seed, which keeps examples cheap and every failure reproducible.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from hypothesis import strategies as st
from torch import Tensor

from structmat.base import StructuredMatrix

S = TypeVar("S", bound=StructuredMatrix)

#: Largest dimension drawn by default.
MAX_DIM = 70

#: Largest dimension of the draws at large sizes (kernels that change route above
#: ~130 or at the k-th member of a family are reached there).
LARGE_MAX_DIM = 300

#: Column counts of batch-sized operands drawn at large sizes.
BATCH_COLUMNS = (64, 128, 200, 256)

#: Seeds of the random generators.
seeds = st.integers(0, 2**31 - 1)


def _empty_pattern(structure: type[StructuredMatrix], dim: int) -> tuple[bool, ...]:
    return tuple(0 in shape for shape in structure.tensor_shapes(dim).values())


def interesting_dims(structure: type[StructuredMatrix], max_dim: int = MAX_DIM) -> list[int]:
    """Dimensions at which the storage of ``structure`` changes form, and a few others.

    A boundary is a dimension ``d`` at which some stored tensor becomes empty or
    non-empty (the last block of a block-diagonal matrix at multiples of the block size,
    the middle and bottom blocks of a hierarchical one, ...). Returns the boundaries and
    their neighbours, together with 1, 2, 3, 41, 64 and ``max_dim``, up to ``max_dim``.
    """
    dims = {1, 2, 3, 41, 64, max_dim}
    previous = _empty_pattern(structure, 1)
    for dim in range(2, max_dim + 1):
        pattern = _empty_pattern(structure, dim)
        if pattern != previous:
            dims |= {dim - 2, dim - 1, dim, dim + 1}
        previous = pattern
    return sorted(d for d in dims if 1 <= d <= max_dim)


def dims(structure: type[StructuredMatrix], max_dim: int = MAX_DIM) -> st.SearchStrategy[int]:
    """A dimension: one of :func:`interesting_dims` or any size from 1 to ``max_dim``."""
    return st.sampled_from(interesting_dims(structure, max_dim)) | st.integers(1, max_dim)


def large_dims(
    structure: type[StructuredMatrix], min_dim: int = 131, max_dim: int = LARGE_MAX_DIM
) -> st.SearchStrategy[int]:
    """A dimension from ``min_dim`` to ``max_dim``.

    One of the storage boundaries in that range, 256, 257, the two ends, or any size.
    """
    fixed = {min_dim, 256, 257, max_dim} | set(interesting_dims(structure, max_dim))
    chosen = sorted(d for d in fixed if min_dim <= d <= max_dim)
    return st.sampled_from(chosen) | st.integers(min_dim, max_dim)


def layouts(X: Tensor) -> dict[str, Tensor]:
    """``X`` (1-d or 2-d) in every memory layout an optimizer passes, equal in value.

    A 2-d ``X`` comes contiguous, as a transposed view stored column by column (like
    ``grad.mT``), as a column-strided slice of a wider buffer, and as a transposed view
    of a row-strided slice (like ``grad[::2].mT``); a vector contiguous and strided.
    Each non-contiguous one has its own storage, so an operation that writes into an
    operand is caught too.
    """
    if X.ndim == 1:
        buffer = X.new_zeros(2 * X.shape[0])
        buffer[::2] = X
        return {"contiguous": X.clone(), "strided": buffer[::2]}
    d, n = X.shape
    columns = X.new_zeros(d, 2 * n)
    columns[:, ::2] = X
    rows = X.new_zeros(2 * n, d)
    rows[::2] = X.mT
    return {
        "contiguous": X.contiguous().clone(),
        "transposed view": X.mT.contiguous().mT,
        "column-strided": columns[:, ::2],
        "transposed strided view": rows[::2].mT,
    }


def random_tensor(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """A standard normal tensor from a seeded generator, rounded to ``dtype``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)


def random_member(
    structure: type[S],
    dim: int,
    seed: int,
    dtype: torch.dtype = torch.float64,
    invertible: bool = False,
) -> S:
    r"""A random, generally non-symmetric, member of ``structure`` of size ``dim``.

    Every stored tensor is standard normal. With ``invertible=True`` the member is
    :math:`I + N` with :math:`N` such a member scaled to :math:`\|N\|_\infty = 1/2`
    (the largest absolute row sum of its dense matrix), so that
    :math:`\|A^{-1}\|_\infty \le 2` and the condition number is at most 3. The member
    is built in float64 and rounded to ``dtype`` at the end.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        name: torch.randn(shape, generator=generator, dtype=torch.float64)
        for name, shape in structure.tensor_shapes(dim).items()
    }
    member = structure(**tensors)
    if invertible:
        norm = float(member.to_dense().abs().sum(1).max())
        member.mul_(0.5 / norm if norm > 0 else 0.0).diag_add_(1.0)
    return member.to(dtype) if dtype != torch.float64 else member


def members(
    structure: type[S],
    dim: int | st.SearchStrategy[int] | None = None,
    *,
    dtype: torch.dtype = torch.float64,
    invertible: bool = False,
) -> st.SearchStrategy[S]:
    """Strategy for random members of ``structure`` (see :func:`random_member`).

    Args:
        structure: Any structure class.
        dim: The dimension, a strategy for it, or ``None`` for :func:`dims`.
        dtype: The dtype of the members.
        invertible: Draw well-conditioned invertible members.
    """
    dim_strategy = dims(structure) if dim is None else dim
    if isinstance(dim_strategy, int):
        dim_strategy = st.just(dim_strategy)
    return st.builds(
        lambda d, seed: random_member(structure, d, seed, dtype=dtype, invertible=invertible),
        dim_strategy,
        seeds,
    )
