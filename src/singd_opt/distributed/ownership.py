"""Which process does the work of which splittable block (``distribute="split"``).

Each splittable block (a Kronecker block, or a parameter that may become one)
estimates its cost (:meth:`~singd_opt.blocks.PreconditionerBlock.cost`). Blocks are
assigned greedily, the most expensive first, to the process with the least work so
far (longest processing time first: within 4/3 of the best balance). Other blocks
(element-wise ones) are cheap and stay with every process.
"""

from __future__ import annotations

from collections.abc import Sequence

from singd_opt.blocks import PreconditionerBlock


def assign_owners(blocks: Sequence[PreconditionerBlock], world_size: int) -> dict[str, int]:
    """Return the owning process of every splittable block, by block name.

    Args:
        blocks: The optimizer's blocks (blocks every process computes are left out).
        world_size: Number of processes.
    """
    candidates = [b for b in blocks if b.splittable]
    load = [0.0] * world_size
    owners: dict[str, int] = {}
    for block in sorted(candidates, key=lambda b: b.cost(), reverse=True):
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owners[block.name] = rank
        load[rank] += block.cost()
    return owners
