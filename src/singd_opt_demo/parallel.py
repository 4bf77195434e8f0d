"""Running the demo on several processes (``torchrun``): each takes a share of every batch.

Under ``torchrun --nproc_per_node R -m singd_opt ...`` every process builds the same
model from the same seed and draws the same mini-batch indices; process :math:`r`
trains on its part of each mini-batch (:func:`torch.Tensor.tensor_split`, so the parts
differ by at most one example). The model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` for every optimizer, and each
process's mean loss is scaled by :math:`R B_r / B` so that the averaged gradient is
the one of the whole mini-batch (see :doc:`/distributed`); the results equal those of
one process up to rounding. Process 0 prints and writes the figure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class Processes:
    """This process's place among the data-parallel processes.

    Attributes:
        rank: This process's rank.
        world_size: Number of processes (1 without ``torchrun``).
    """

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process reports (prints, writes the figure)."""
        return self.rank == 0

    def share(self, index: Tensor) -> tuple[Tensor, float]:
        """This process's part of a mini-batch and the weight of its mean loss."""
        if self.world_size == 1:
            return index, 1.0
        part = index.tensor_split(self.world_size)[self.rank]
        return part, self.world_size * len(part) / len(index)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model, wrapped in ``DistributedDataParallel`` with several processes."""
        return DistributedDataParallel(model) if self.world_size > 1 else model

    def mean(self, value: Tensor) -> float:
        """The average of ``value`` over the processes (a scalar)."""
        value = value.detach()
        if self.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return float(value)


def start(device: torch.device) -> Processes:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Uses the ``nccl`` backend on CUDA devices and ``gloo`` otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Processes()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size())


def stop(processes: Processes) -> None:
    """Leave the process group (after a last barrier)."""
    if processes.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
