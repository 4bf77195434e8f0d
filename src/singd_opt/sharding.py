r"""Parameters sharded by FSDP2 (``torch.distributed.fsdp.fully_shard``).

``fully_shard`` replaces each parameter by a :class:`~torch.distributed.tensor.DTensor`
sharded along dimension 0 over a one-dimensional device mesh: process :math:`r` holds
the rows ``[r c, min((r + 1) c, n))`` with :math:`c = \lceil n / R \rceil` (the split
of :func:`torch.chunk`), and after the backward pass each process holds the same rows
of the averaged gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

try:  # torch.distributed may be built without DTensor support
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # pragma: no cover
    DTensor = None  # type: ignore[assignment,misc]
    Shard = None  # type: ignore[assignment,misc]


def is_sharded(tensor: object) -> bool:
    """Whether ``tensor`` is a DTensor (an FSDP2 parameter or gradient)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def check_shardings(params: list[nn.Parameter]) -> None:
    """Require every DTensor parameter to be sharded along dimension 0 on a 1-d mesh.

    Raises:
        ValueError: For another layout (tensor parallelism, a 2-d mesh of HSDP).
    """
    for param in params:
        if not is_sharded(param):
            continue
        placements = param.placements
        if param.device_mesh.ndim != 1 or placements != (Shard(0),):
            raise ValueError(
                "params: only FSDP2's default layout (a DTensor sharded along dimension 0 "
                f"on a one-dimensional mesh) is supported, got placements {placements} on a "
                f"{param.device_mesh.ndim}-d mesh"
            )


def local_rows(param: Tensor) -> slice:
    """The rows of the full tensor this process holds of a sharded ``param``."""
    rows = param.shape[0]
    mesh = param.device_mesh
    chunk = math.ceil(rows / mesh.size())
    start = min(mesh.get_local_rank() * chunk, rows)
    return slice(start, min(start + chunk, rows))


def local_tensor(tensor: Tensor) -> Tensor:
    """The local part of a DTensor, or ``tensor`` itself."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def shard_like(param: Tensor, full: Tensor) -> Tensor:
    """Return ``full`` (the whole tensor) as a DTensor sharded like ``param``."""
    local = full[local_rows(param)].contiguous()
    return DTensor.from_local(
        local,
        param.device_mesh,
        param.placements,
        run_check=False,
        shape=param.shape,
        stride=param.stride(),
    )


def padded_rows(param: Tensor) -> int:
    """Rows of the largest shard (every process pads its shard to it for a gather)."""
    return math.ceil(param.shape[0] / param.device_mesh.size())


def full_from_gathered(param: Tensor, gathered: Tensor) -> Tensor:
    """Return the full tensor from the processes' padded shards laid end to end.

    Args:
        param: The sharded parameter (its global shape and mesh).
        gathered: ``(R * padded_rows, ...)``: each process's shard padded with zero rows.
    """
    chunk = padded_rows(param)
    size = param.device_mesh.size()
    rows = param.shape[0]
    pieces = []
    for r in range(size):
        start = min(r * chunk, rows)
        stop = min(start + chunk, rows)
        pieces.append(gathered[r * chunk : r * chunk + (stop - start)])
    return torch.cat(pieces)
