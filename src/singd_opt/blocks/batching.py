"""Proposing a step's blocks, several at once where they declare the same batch key."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from singd_opt.blocks.base import PreconditionerBlock, Proposal, StepContext


def propose_blocks(
    blocks: Sequence[PreconditionerBlock],
    param_groups: Sequence[dict[str, Any]],
    context: StepContext,
) -> dict[str, Proposal]:
    """Return every block's proposal by block name.

    Blocks of one parameter group with the same :meth:`PreconditionerBlock.batch_key`,
    at least :attr:`~PreconditionerBlock.batch_min_size` of them, are proposed by one
    :meth:`PreconditionerBlock.propose_batch` call, the others one by one; each
    proposal equals the block's own :meth:`PreconditionerBlock.propose`.
    """
    proposals: dict[str, Proposal] = {}
    batches: dict[tuple[int, Hashable], list[PreconditionerBlock]] = {}
    for block in blocks:
        group = param_groups[block.group_index]
        key = block.batch_key(group, context)
        if key is None:
            proposals[block.name] = block.propose(group, context)
        else:
            batches.setdefault((block.group_index, key), []).append(block)
    for (index, _), members in batches.items():
        group = param_groups[index]
        if len(members) < members[0].batch_min_size:
            for block in members:
                proposals[block.name] = block.propose(group, context)
            continue
        found = members[0].propose_batch(members, group, context)
        for block, proposal in zip(members, found, strict=True):
            proposals[block.name] = proposal
    return proposals
