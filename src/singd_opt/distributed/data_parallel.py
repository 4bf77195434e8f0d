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
   compute its curvature on the next update step. The finiteness flag of each process
   travels along, so all processes agree on skipping a step.

The number of collectives per step does not depend on the number of layers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from singd_opt.blocks import KroneckerBlock, PreconditionerBlock, Proposal, StepContext
from singd_opt.curvature import CurvatureSums
from singd_opt.distributed.buckets import Buckets, Key, Segments
from singd_opt.distributed.collectives import Collectives
from singd_opt.distributed.ownership import assign_owners
from singd_opt.distributed.sharding import (
    full_from_gathered,
    is_sharded,
    local_tensor,
    padded_rows,
)
from singd_opt.layers import ParameterRows

DISTRIBUTE_MODES: tuple[str, ...] = ("replicate", "split")


class DataParallelSync:
    """The communication of one optimizer across the processes of a group.

    Attributes:
        collectives: The process group and the counted collectives.
        split: Whether each Kronecker block's work is done by one process.
        owners: The process of each Kronecker block, by name (``split`` only).
        average_gradients: Whether the optimizer averages the gradients itself.
        sharded: Whether some parameters are FSDP2 DTensors.
    """

    def __init__(
        self,
        collectives: Collectives,
        blocks: Sequence[PreconditionerBlock],
        distribute: str,
        average_gradients: bool,
        sharded: bool,
    ) -> None:
        self.collectives = collectives
        self.split = distribute == "split"
        self.owners = assign_owners(blocks, collectives.world_size) if self.split else {}
        self.average_gradients = average_gradients
        self.sharded = sharded
        self._gradients_synchronized = False

    # ------------------------------------------------------------ ownership
    def computes(self, block: PreconditionerBlock) -> bool:
        """Whether this process proposes ``block``'s step (always, unless split off)."""
        if not self.split or not isinstance(block.effective, KroneckerBlock):
            return True
        return self.owners.get(block.name, 0) == self.collectives.rank

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
            if isinstance(block.effective, KroneckerBlock):
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

    # ------------------------------------------------------------ curvature
    def reduce_curvature(
        self, blocks: Sequence[PreconditionerBlock], groups: list[dict[str, Any]]
    ) -> None:
        """Combine the recording Kronecker blocks' curvature over the processes, in place.

        In replicate mode one all-reduce per dtype leaves every process with every
        block's curvature. In split mode only a block's owner needs it: the sums are
        laid out by owner and one reduce-scatter per dtype hands each process its part
        (half the traffic of an all-reduce); other processes drop theirs.
        """
        recording = [
            block.effective
            for block in blocks
            if block.recording and isinstance(block.effective, KroneckerBlock)
        ]
        if not recording:
            return
        world, rank = self.collectives.world_size, self.collectives.rank
        segments = Segments(world if self.split else 1)
        slots = []
        for block in recording:
            segment = self.owners.get(block.name, 0) if self.split else 0
            layout = segments.layouts[segment]
            matrix_slots = [
                layout.add_like(t) for m in (block.K, block.C) for t in m.tensors().values()
            ]
            count_slot = layout.add((2,), torch.float64, block.K.device)
            slots.append((segment, matrix_slots, count_slot))
        buffers = segments.empty()
        for block, (segment, matrix_slots, count_slot) in zip(recording, slots, strict=True):
            if block.curvature is None:
                continue
            tensors, block_counts = block.curvature.reducible()
            for slot, tensor in zip(matrix_slots, tensors, strict=True):
                segments.view(buffers, segment, slot).copy_(tensor)
            segments.view(buffers, segment, count_slot).copy_(
                torch.tensor(block_counts, dtype=torch.float64)
            )
        if self.split:
            mine = {key: self.collectives.reduce_scatter(b) for key, b in buffers.items()}
        else:
            for buffer in buffers.values():
                self.collectives.all_reduce(buffer)
            mine = buffers
        own = rank if self.split else 0
        for block, (segment, matrix_slots, count_slot) in zip(recording, slots, strict=True):
            if segment != own:
                block.curvature = None  # its owner combines it
                continue
            layout = segments.layouts[segment]
            rows, terms = layout.view(mine, count_slot).tolist()
            if rows == 0:
                block.curvature = None
                continue
            views = iter(layout.view(mine, slot) for slot in matrix_slots)
            H_K = type(block.K).from_tensors({n: next(views) for n in block.K.tensors()})
            H_C = type(block.C).from_tensors({n: next(views) for n in block.C.tensors()})
            mean_loss = groups[block.group_index]["loss_average"] is not None
            curvature = CurvatureSums(H_K, H_C, 1, 1, mean_loss)
            curvature.set_reduced([rows, terms], world)
            block.curvature = curvature

    # ------------------------------------------------------------- exchange
    def exchange(
        self,
        blocks: Sequence[PreconditionerBlock],
        proposals: dict[str, Proposal],
        local_finite: Tensor,
        groups: list[dict[str, Any]],
        context: StepContext,
        check: bool = True,
    ) -> Tensor:
        """Share the owners' proposals (``split``); return whether all processes are finite.

        Adds to ``proposals`` (by block name) the proposals of the blocks other
        processes own: their directions and, when updated, their new state.

        Args:
            blocks: The optimizer's blocks.
            proposals: This process's proposals by block name (completed in place).
            local_finite: Whether this process's proposals are all finite.
            groups: The parameter groups.
            context: The step.
            check: Whether the finiteness flags matter (else no collective is spent on
                them without ``split``).
        """
        if not self.split:
            if not (self.sharded and check):
                return local_finite
            flag = (~local_finite).to(torch.float32).reshape(1)
            self.collectives.all_reduce(flag)
            return flag[0] == 0
        world, rank = self.collectives.world_size, self.collectives.rank
        plan = _ExchangePlan(world)
        for block in blocks:
            if isinstance(block.effective, KroneckerBlock):
                plan.add(block, self.owners.get(block.name, 0))
        gathered = plan.gather(self.collectives, rank, proposals, local_finite)
        for entry in plan.entries:
            if entry.owner != rank:
                group = groups[entry.block.group_index]
                proposals[entry.block.name] = plan.received(entry, gathered, group, context)
        return plan.all_finite(gathered)


@dataclass
class _Entry:
    """A Kronecker block's slots in its owner's segment of the exchange."""

    owner: int
    block: PreconditionerBlock
    params: list[ParameterRows]
    directions: list[int]
    state: list[tuple[str, str, int]]
    updated: int | None


class _ExchangePlan:
    """The layout of the split-mode all-gather: one segment per process.

    Segment :math:`r` holds the directions of the blocks process :math:`r` owns and,
    for those that record curvature in this step, room for their new momenta
    ``m_K, m_C`` with a flag saying whether they were updated (a block without
    curvature on any process is not), and process :math:`r`'s finiteness flag. The
    new factors follow from the momenta (:func:`~singd_opt.preconditioner.factor_step`),
    so they need not travel: every process computes them from the same numbers. A
    warm start (whose first update sets the factors directly) sends the factors in
    the same room instead, flagged as such.
    """

    def __init__(self, world: int) -> None:
        self.segments = Segments(world)
        self.entries: list[_Entry] = []
        self.flags: list[int] = []

    def add(self, block: PreconditionerBlock, owner: int) -> None:
        effective = block.effective
        assert isinstance(effective, KroneckerBlock)
        layout = self.segments.layouts[owner]
        params = [rows for rows in effective.layer.params if rows.param.grad is not None]
        directions = [
            layout.add(rows.value.shape, rows.value.dtype, rows.value.device) for rows in params
        ]
        state, updated = [], None
        if block.recording:
            for side, factor in (("K", effective.K), ("C", effective.C)):
                for name, tensor in factor.tensors().items():
                    state.append((side, name, layout.add_like(tensor)))
            updated = layout.add((1,), effective.K.dtype, effective.K.device)
        self.entries.append(_Entry(owner, block, params, directions, state, updated))

    def gather(
        self,
        collectives: Collectives,
        rank: int,
        proposals: Mapping[str, Proposal],
        local_finite: Tensor,
    ) -> dict[Key, Tensor]:
        """Fill this process's segment, all-gather; return the full buffers."""
        # the flags (0 or 1, exact in every float dtype) share the first block's bucket
        first = self.entries[0].params[0].value if self.entries else torch.empty(0)
        self.flags = [
            layout.add((1,), first.dtype, first.device) for layout in self.segments.layouts
        ]
        segments = self.segments
        buffers = segments.empty()
        segments.view(buffers, rank, self.flags[rank]).copy_(local_finite)
        for entry in self.entries:
            if entry.owner != rank:
                continue
            proposal = proposals[entry.block.name]
            for slot, (_, direction) in zip(entry.directions, proposal.directions, strict=True):
                segments.view(buffers, rank, slot).copy_(direction)
            shared = proposal.matrices
            if shared and entry.updated is not None:
                momenta = "m_K" in shared
                for side, name, slot in entry.state:
                    matrix = shared[f"m_{side}" if momenta else side]
                    segments.view(buffers, rank, slot).copy_(matrix.tensors()[name])
                # 1: the new momenta travel; 2: the new factors (a warm start)
                segments.view(buffers, rank, entry.updated).fill_(1.0 if momenta else 2.0)
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
        effective = entry.block.effective
        assert isinstance(effective, KroneckerBlock)
        kind = view(gathered, entry.owner, entry.updated)[0] if entry.updated is not None else 0
        shared = {}
        if kind in (1.0, 2.0):
            tensors: dict[str, dict[str, Tensor]] = {}
            for side, name, slot in entry.state:
                tensors.setdefault(side, {})[name] = view(gathered, entry.owner, slot).clone()
            prefix = "m_" if kind == 1.0 else ""
            shared = {
                prefix + side: type(getattr(effective, side)).from_tensors(values)
                for side, values in tensors.items()
            }
        return effective.received(directions, shared, group, context)

    def all_finite(self, gathered: dict[Key, Tensor]) -> Tensor:
        """Whether every process's proposals were finite."""
        flags = [self.segments.view(gathered, r, slot)[0] for r, slot in enumerate(self.flags)]
        return (torch.stack(flags) == 1.0).all()
