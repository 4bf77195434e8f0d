r"""Which process does the preconditioner work of which Kronecker block (``distribute="split"``).

The cost of a Kronecker block's step is estimated from its factors: with :math:`s_K`
the number of stored entries of ``K`` (``d_K^2`` dense, ``d_K`` diagonal, ...),
updating ``K`` costs about :math:`s_K d_K` multiply-adds (the products
:math:`K^\top K` and :math:`K m_K`), and the natural gradient about
:math:`d_C d_K (s_K / d_K + s_C / d_C)` (one structured product per side and row or
column of the gradient matrix, twice). Blocks are assigned greedily, the most
expensive first, to the process with the least work so far (longest processing time
first: within 4/3 of the best balance). Element-wise blocks are cheap and stay with
every process.
"""

from __future__ import annotations

from collections.abc import Sequence

from singd_opt.blocks import KroneckerBlock, PreconditionerBlock


def block_cost(block: PreconditionerBlock) -> float:
    """Estimated multiply-adds of one update and one natural gradient of ``block``."""
    effective = block.effective
    if isinstance(effective, KroneckerBlock):
        dim_K, dim_C = effective.layer.dim_K, effective.layer.dim_C
        stored_K = sum(t.numel() for t in effective.K.tensors().values())
        stored_C = sum(t.numel() for t in effective.C.tensors().values())
        update = 2.0 * (stored_K * dim_K + stored_C * dim_C)
        precondition = 2.0 * dim_C * dim_K * (stored_K / dim_K + stored_C / dim_C)
        return update + precondition
    rows = block.params[0].value
    dim_C, dim_K = rows.shape[0], rows[0].numel()
    return 2.0 * (dim_K**3 + dim_C**3) + 2.0 * dim_C * dim_K * (dim_K + dim_C)


def assign_owners(blocks: Sequence[PreconditionerBlock], world_size: int) -> dict[str, int]:
    """Return the owning process of every block that may be Kronecker, by block name.

    Args:
        blocks: The optimizer's blocks (element-wise blocks are left out).
        world_size: Number of processes.
    """
    candidates = [b for b in blocks if b.effective.kind != "elementwise"]
    load = [0.0] * world_size
    owners: dict[str, int] = {}
    for block in sorted(candidates, key=block_cost, reverse=True):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[block.name] = rank
        load[rank] += block_cost(block)
    return owners
