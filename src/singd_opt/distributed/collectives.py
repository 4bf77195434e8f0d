"""The collectives the optimizer issues, counted by kind and payload bytes.

Every collective goes through :class:`Collectives`, which records the number of calls
and the bytes each process sends per kind, counted as the bandwidth-optimal (ring)
algorithms send them with :math:`R` processes: an all-reduce of :math:`S` bytes sends
:math:`2 (R - 1) S / R`, a reduce-scatter of :math:`S` bytes :math:`(R - 1) S / R`, and an
all-gather of :math:`c` bytes from each process :math:`(R - 1) c`. The counts are
public (``optimizer.communication``) so that tests and benchmarks can check how often
and how much the optimizer communicates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch.distributed as dist
from torch import Tensor


@dataclass
class CommunicationStats:
    """Calls and bytes sent per collective kind since the last :meth:`reset`.

    Attributes:
        calls: Number of collectives per kind (``"all_reduce"``, ``"reduce_scatter"``,
            ``"all_gather"``).
        bytes: Bytes this process sends per kind (see the module docstring).
    """

    calls: Counter[str] = field(default_factory=Counter)
    bytes: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        """Start counting from zero."""
        self.calls.clear()
        self.bytes.clear()

    @property
    def total_calls(self) -> int:
        """All collectives together."""
        return sum(self.calls.values())

    @property
    def total_bytes(self) -> int:
        """All bytes sent together."""
        return sum(self.bytes.values())


class Collectives:
    """The process group and the counted collectives on it.

    Attributes:
        group: The process group (``None`` for the default group).
        world_size: Number of processes :math:`R`.
        rank: This process's rank in the group.
        stats: What was communicated.
    """

    def __init__(self, group: dist.ProcessGroup | None) -> None:
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.stats = CommunicationStats()

    def _count(self, kind: str, sent: float) -> None:
        self.stats.calls[kind] += 1
        self.stats.bytes[kind] += round(sent)

    def all_reduce(self, tensor: Tensor) -> None:
        """Sum ``tensor`` over the processes, in place."""
        world = self.world_size
        self._count("all_reduce", 2 * (world - 1) / world * tensor.numel() * tensor.element_size())
        dist.all_reduce(tensor, group=self.group)

    def reduce_scatter(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the processes; return this process's ``1/R`` part of it."""
        world = self.world_size
        self._count("reduce_scatter", (world - 1) / world * tensor.numel() * tensor.element_size())
        out = tensor.new_empty((tensor.numel() // world,))
        dist.reduce_scatter_tensor(out, tensor, group=self.group)
        return out

    def all_gather(self, local: Tensor) -> Tensor:
        """Return the processes' ``local`` tensors (all of one size) concatenated."""
        self._count("all_gather", (self.world_size - 1) * local.numel() * local.element_size())
        out = local.new_empty((self.world_size * local.numel(),))
        dist.all_gather_into_tensor(out, local.reshape(-1), group=self.group)
        return out
