r"""Exact data parallelism: what the optimizer communicates, and when.

Per step, with :math:`R` processes (see :mod:`singd_opt.curvature` for why the
combination is exact):

1. **Gradients** (only when the optimizer averages them itself, i.e. for a model that
   is neither wrapped in ``DistributedDataParallel`` nor sharded by FSDP2): one
   all-reduce per dtype of all gradients together, divided by :math:`R`, with one
   extra number per parameter counting the processes that have a gradient for it.
2. **Curvature** (steps that update a preconditioner only): one all-reduce per dtype
   of every recording Kronecker block's :math:`n_r H_K^{(r)}` and :math:`H_C^{(r)}/N_r`
   with the counts :math:`n_r, N_r` (a block without curvature on a process sends zeros).
3. **FSDP2 gradients**: the row shards of the Kronecker blocks' gradients are gathered
   (one all-gather per dtype, each shard padded to the largest) so that
   :math:`C C^\top G K K^\top`, which mixes rows, sees the whole gradient matrix; each
   process then applies the rows it holds.
4. **Split work** (``distribute="split"``): each Kronecker block belongs to one
   process (:mod:`singd_opt.distributed.ownership`), which alone updates its factors
   and computes its directions. One all-gather per dtype then hands every process the
   directions of every block and, on update steps, the new ``K, C, m_K, m_C``, so that
   every process keeps the complete state (checkpoints need no communication) and can
   compute its curvature on the next update step.
5. **Decisions**: before the curvature, the blocks' open decisions (what each process
   recorded, where that decides what a block becomes or reports; see
   :meth:`~singd_opt.blocks.PreconditionerBlock.decision`) are gathered in one
   all-gather, only on steps that have such decisions (the first updates). After the
   proposals, each process's votes (its proposals are not finite; its gradient scaler
   found non-finite gradients) are summed, so that every process takes the same
   decision: one all-reduce of two numbers, or, in split mode, a part of the
   all-gather of step 4.

The number of collectives per step does not depend on the number of layers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from singd_opt.blocks import PreconditionerBlock, Proposal, StepContext
from singd_opt.distributed.buckets import Buckets, Key, Segments
from singd_opt.distributed.collectives import Collectives
from singd_opt.distributed.ownership import assign_owners
from singd_opt.layers import ParameterRows
from singd_opt.sharding import (
    full_from_gathered,
    is_sharded,
    local_tensor,
    padded_rows,
    shard_like,
)

DISTRIBUTE_MODES: tuple[str, ...] = ("replicate", "split")


class DataParallelSync:
    """The communication of one optimizer across the processes of a group.

    Attributes:
        collectives: The process group and the counted collectives.
        split: Whether each Kronecker block's work is done by one process.
        owners: The process of each Kronecker block, by name (``split`` only).
        average_gradients: Whether the optimizer averages the gradients itself.
        sharded: Whether some parameters are FSDP2 DTensors.
        device: Where small collectives (votes, decisions) are communicated: the
            parameters' device.
    """

    def __init__(
        self,
        collectives: Collectives,
        blocks: Sequence[PreconditionerBlock],
        distribute: str,
        average_gradients: bool,
        sharded: bool,
        device: torch.device | None = None,
    ) -> None:
        self.collectives = collectives
        self.split = distribute == "split"
        self.owners = assign_owners(blocks, collectives.world_size) if self.split else {}
        self.average_gradients = average_gradients
        self.sharded = sharded
        self.device = device if device is not None else torch.device("cpu")
        self._gradients_synchronized = False

    # ------------------------------------------------------------ ownership
    def computes(self, block: PreconditionerBlock) -> bool:
        """Whether this process proposes ``block``'s step (always, unless split off)."""
        return not self._owned(block) or self.owners[block.name] == self.collectives.rank

    def _owned(self, block: PreconditionerBlock) -> bool:
        """Whether one process does ``block``'s work (``split`` and a splittable block)."""
        return self.split and block.splittable and block.name in self.owners

    # ------------------------------------------------------------- decisions
    def decide(self, blocks: Sequence[PreconditionerBlock]) -> None:
        """Gather the blocks' open decisions from every process and let them decide.

        One all-gather of the concatenated :meth:`~PreconditionerBlock.decision`
        vectors, only when some block has an open decision (the same blocks on every
        process).
        """
        entries = [(block, seen) for block in blocks if (seen := block.decision()) is not None]
        if not entries:
            return
        local = torch.cat([seen.reshape(-1) for _, seen in entries]).to(self.device)
        world = self.collectives.world_size
        gathered = self.collectives.all_gather(local).view(world, -1).cpu()
        offset = 0
        for block, seen in entries:
            size = seen.numel()
            block.decide([gathered[r, offset : offset + size] for r in range(world)])
            offset += size

    # ----------------------------------------------------------------- step
    def prepare_step(
        self, blocks: Sequence[PreconditionerBlock], groups: list[dict[str, Any]]
    ) -> dict[nn.Parameter, Tensor] | None:
        """Average the gradients and the curvature of this step; gather sharded gradients.

        Returns:
            The full gradients of sharded parameters (``None`` without sharding).
        """
        self.synchronize_gradients(groups)
        self._gradients_synchronized = False  # the next step averages again
        self.reduce_curvature(blocks, groups)
        return self.gather_gradients(blocks) if self.sharded else None

    # ------------------------------------------------------------ gradients
    def synchronize_gradients(self, groups: list[dict[str, Any]]) -> None:
        """Average the (non-sharded) gradients of the groups' parameters, once per step.

        Does nothing when the gradients are averaged elsewhere or already were.
        """
        if not self.average_gradients or self._gradients_synchronized:
            return
        self._gradients_synchronized = True
        params = [p for group in groups for p in group["params"] if not is_sharded(p)]
        if not params:
            return
        layout = Buckets()
        slots = [layout.add_like(p) for p in params]
        # presence counts (small integers, exact in every float dtype) share a bucket
        count_slot = layout.add((len(params),), params[0].dtype, params[0].device)
        buffers = layout.empty()
        counts = layout.view(buffers, count_slot)
        for index, (param, slot) in enumerate(zip(params, slots, strict=True)):
            if param.grad is not None:
                layout.pack(buffers, slot, param.grad)
                counts[index] = 1.0
        for buffer in buffers.values():
            self.collectives.all_reduce(buffer)
        world = self.collectives.world_size
        for index, (param, slot) in enumerate(zip(params, slots, strict=True)):
            if counts[index] == 0:
                continue
            average = layout.view(buffers, slot).div_(world)
            if param.grad is None:
                param.grad = average
            else:
                param.grad.copy_(average)

    def gather_gradients(self, blocks: Sequence[PreconditionerBlock]) -> dict[nn.Parameter, Tensor]:
        """Return the full gradients of the Kronecker blocks' sharded parameters."""
        params: dict[nn.Parameter, None] = {}
        for block in blocks:  # every process holds a shard of every parameter
            if block.mixes_rows:
                for rows in block.params:
                    if is_sharded(rows.param) and rows.param.grad is not None:
                        params[rows.param] = None
        if not params:
            return {}
        layout = Buckets()
        slots = []
        for param in params:
            local = local_tensor(param.grad)
            slots.append(
                layout.add((padded_rows(param), *local.shape[1:]), local.dtype, local.device)
            )
        buffers = layout.empty()
        for param, slot in zip(params, slots, strict=True):
            local = local_tensor(param.grad)
            layout.view(buffers, slot)[: local.shape[0]].copy_(local)
        gathered = {key: self.collectives.all_gather(b) for key, b in buffers.items()}
        world = self.collectives.world_size
        full = {}
        for param, slot in zip(params, slots, strict=True):
            key, offset, shape = layout.slot(slot)
            size = shape.numel()
            total = layout.sizes[key]
            pieces = torch.cat(
                [
                    gathered[key][r * total + offset : r * total + offset + size]
                    for r in range(world)
                ]
            )
            full[param] = full_from_gathered(param, pieces.view(world * shape[0], *shape[1:]))
        return full

    def local_tensors(self, tensors: list[Tensor]) -> list[Tensor]:
        """The local parts of sharded tensors (the others as they are), for checks."""
        return [local_tensor(t) for t in tensors] if self.sharded else tensors

    def fit_update(self, param: nn.Parameter, update: Tensor) -> Tensor:
        """A whole-tensor ``update`` of a sharded ``param`` cut to the rows this process holds."""
        if is_sharded(param) and not is_sharded(update):
            return shard_like(param, update)
        return update

    # ------------------------------------------------------------ curvature
    def reduce_curvature(
        self, blocks: Sequence[PreconditionerBlock], groups: list[dict[str, Any]]
    ) -> None:
        """Combine the blocks' recorded curvature over the processes, in place.

        Each block lists its buffers (:meth:`~PreconditionerBlock.curvature_buffers`)
        and its summands; in replicate mode one all-reduce per dtype leaves every
        process with every block's sums. In split mode only a block's owner needs
        them: the sums are laid out by owner and one reduce-scatter per dtype hands
        each process its part (half the traffic of an all-reduce); other processes
        drop theirs.
        """
        entries = []
        for block in blocks:
            templates = block.curvature_buffers()
            if templates:
                entries.append((block, templates))
        if not entries:
            return
        world, rank = self.collectives.world_size, self.collectives.rank
        owned = [e for e in entries if self._owned(e[0])]
        shared = [e for e in entries if not self._owned(e[0])]
        if owned:
            segments = Segments(world)
            slots = [
                [segments.layouts[self.owners[b.name]].add_like(t) for t in templates]
                for b, templates in owned
            ]
            buffers = segments.empty()
            for (block, _), block_slots in zip(owned, slots, strict=True):
                owner = self.owners[block.name]
                _pack(block, block_slots, lambda slot, o=owner: segments.view(buffers, o, slot))
            mine = {key: self.collectives.reduce_scatter(b) for key, b in buffers.items()}
            layout = segments.layouts[rank]
            for (block, _), block_slots in zip(owned, slots, strict=True):
                if self.owners[block.name] != rank:
                    block.drop_curvature()  # its owner combines it
                    continue
                sums = [layout.view(mine, slot) for slot in block_slots]
                block.set_reduced_curvature(sums, world, groups[block.group_index])
        if shared:
            layout = Buckets()
            slots = [[layout.add_like(t) for t in templates] for _, templates in shared]
            buffers = layout.empty()
            for (block, _), block_slots in zip(shared, slots, strict=True):
                _pack(block, block_slots, lambda slot: layout.view(buffers, slot))
            for buffer in buffers.values():
                self.collectives.all_reduce(buffer)
            for (block, _), block_slots in zip(shared, slots, strict=True):
                sums = [layout.view(buffers, slot) for slot in block_slots]
                block.set_reduced_curvature(sums, world, groups[block.group_index])

    # ------------------------------------------------------------- exchange
    def agree(self, votes: Tensor) -> Tensor:
        """Sum every process's ``votes`` (a float32 vector of 0s and 1s): one all-reduce."""
        summed = votes.to(device=self.device, dtype=torch.float32, copy=True)
        self.collectives.all_reduce(summed)
        return summed.cpu()

    def exchange(
        self,
        blocks: Sequence[PreconditionerBlock],
        proposals: dict[str, Proposal],
        votes: Tensor | None,
        groups: list[dict[str, Any]],
        context: StepContext,
    ) -> Tensor | None:
        """Share the owners' proposals (``split``); return the votes summed over processes.

        Adds to ``proposals`` (by block name) the proposals of the blocks other
        processes own: their directions and, when updated, their new state.

        Args:
            blocks: The optimizer's blocks.
            proposals: This process's proposals by block name (completed in place).
            votes: This process's votes (a short vector of 0s and 1s, the same length
                on every process), or ``None`` when no decision is to be taken.
            groups: The parameter groups.
            context: The step.

        Returns:
            The sums of the votes, ``None`` when ``votes`` is.
        """
        if not self.split:
            return None if votes is None else self.agree(votes)
        world, rank = self.collectives.world_size, self.collectives.rank
        plan = _ExchangePlan(world, 0 if votes is None else votes.numel())
        for block in blocks:
            if self._owned(block):
                plan.add(block, self.owners[block.name])
        gathered = plan.gather(self.collectives, rank, proposals, votes)
        for entry in plan.entries:
            if entry.owner != rank:
                group = groups[entry.block.group_index]
                proposals[entry.block.name] = plan.received(entry, gathered, group, context)
        return None if votes is None else plan.summed_votes(gathered)


def _pack(block: PreconditionerBlock, slots: list[int], view: Callable[[int], Tensor]) -> None:
    """Copy ``block``'s curvature summands into the buffer views of ``slots`` (zeros if none)."""
    summands = block.reducible_curvature()
    if summands is not None:
        for slot, tensor in zip(slots, summands, strict=True):
            view(slot).copy_(tensor)


@dataclass
class _Entry:
    """A split block's slots in its owner's segment of the exchange."""

    owner: int
    block: PreconditionerBlock
    params: list[ParameterRows]
    directions: list[int]
    shared: list[int]
    present: int | None


class _ExchangePlan:
    """The layout of the split-mode all-gather: one segment per process.

    Segment :math:`r` holds the directions of the blocks process :math:`r` owns, room
    for what their proposals share (:meth:`~PreconditionerBlock.shared_buffers`: for a
    Kronecker block that records in this step, the new momenta ``m_K, m_C``, from
    which every process computes the new factors) with a flag saying whether the
    owner filled it, and process :math:`r`'s votes.
    """

    def __init__(self, world: int, votes: int) -> None:
        self.segments = Segments(world)
        self.entries: list[_Entry] = []
        self.votes = votes
        self.flags: list[int] = []

    def add(self, block: PreconditionerBlock, owner: int) -> None:
        layout = self.segments.layouts[owner]
        params = block.gradient_rows()
        directions = [
            layout.add(rows.shape, rows.param.dtype, rows.param.device) for rows in params
        ]
        templates = block.shared_buffers()
        shared = [layout.add_like(t) for t in templates]
        present = layout.add((1,), templates[0].dtype, templates[0].device) if templates else None
        self.entries.append(_Entry(owner, block, params, directions, shared, present))

    def gather(
        self,
        collectives: Collectives,
        rank: int,
        proposals: Mapping[str, Proposal],
        votes: Tensor | None,
    ) -> dict[Key, Tensor]:
        """Fill this process's segment, all-gather; return the full buffers."""
        # the votes (0 or 1, exact in every float dtype) share the first block's bucket
        first = next((e.params[0].param for e in self.entries if e.params), torch.empty(0))
        if self.votes:
            self.flags = [
                layout.add((self.votes,), first.dtype, first.device)
                for layout in self.segments.layouts
            ]
        segments = self.segments
        buffers = segments.empty()
        if votes is not None and self.votes:
            segments.view(buffers, rank, self.flags[rank]).copy_(votes)
        for entry in self.entries:
            if entry.owner != rank:
                continue
            proposal = proposals[entry.block.name]
            for slot, (_, direction) in zip(entry.directions, proposal.directions, strict=True):
                segments.view(buffers, rank, slot).copy_(direction)
            if proposal.shared is not None and entry.present is not None:
                for slot, tensor in zip(entry.shared, proposal.shared, strict=True):
                    segments.view(buffers, rank, slot).copy_(tensor)
                segments.view(buffers, rank, entry.present).fill_(1.0)
        mine = segments.part(buffers, rank)
        return {key: collectives.all_gather(part) for key, part in mine.items()}

    def received(
        self,
        entry: _Entry,
        gathered: dict[Key, Tensor],
        group: Mapping[str, Any],
        context: StepContext,
    ) -> Proposal:
        """The proposal of a block another process owns, from its segment."""
        view = self.segments.view
        directions = [
            (rows, view(gathered, entry.owner, slot))
            for rows, slot in zip(entry.params, entry.directions, strict=True)
        ]
        shared = None
        if entry.present is not None and view(gathered, entry.owner, entry.present)[0] == 1.0:
            shared = [view(gathered, entry.owner, slot).clone() for slot in entry.shared]
        return entry.block.received(directions, shared, group, context)

    def summed_votes(self, gathered: dict[Key, Tensor]) -> Tensor:
        """Every process's votes, summed (float32)."""
        votes = [self.segments.view(gathered, r, slot) for r, slot in enumerate(self.flags)]
        return torch.stack(votes).to(torch.float32).sum(0).cpu()
