"""The collectives the optimizer issues, counted by kind and payload bytes.

Every collective goes through :class:`Collectives`, which records the number of calls
and the payload bytes per kind (the bytes a process contributes: the tensor of an
all-reduce, the local chunk of an all-gather). The counts are public
(``optimizer.communication``) so that tests and benchmarks can check how often and how
much the optimizer communicates.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch.distributed as dist
from torch import Tensor


@dataclass
class CommunicationStats:
    """Calls and payload bytes per collective kind since the last :meth:`reset`.

    Attributes:
        calls: Number of collectives per kind (``"all_reduce"``, ``"all_gather"``).
        bytes: Payload bytes per kind (what this process contributes).
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
        """All payload bytes together."""
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

    def all_reduce(self, tensor: Tensor) -> None:
        """Sum ``tensor`` over the processes, in place."""
        self.stats.calls["all_reduce"] += 1
        self.stats.bytes["all_reduce"] += tensor.numel() * tensor.element_size()
        dist.all_reduce(tensor, group=self.group)

    def all_gather(self, local: Tensor) -> Tensor:
        """Return the processes' ``local`` tensors (all of one size) concatenated."""
        self.stats.calls["all_gather"] += 1
        self.stats.bytes["all_gather"] += local.numel() * local.element_size()
        out = local.new_empty((self.world_size * local.numel(),))
        dist.all_gather_into_tensor(out, local.reshape(-1), group=self.group)
        return out
