"""Choosing the data-parallel set-up from the constructor's arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from singd_opt.blocks import PreconditionerBlock
from singd_opt.distributed.agreement import check_alike, describe_setup
from singd_opt.distributed.collectives import Collectives
from singd_opt.distributed.data_parallel import DISTRIBUTE_MODES, DataParallelSync
from singd_opt.sharding import check_shardings, is_sharded, local_tensor


def check_distribute(distribute: object, process_group: object) -> None:
    """Validate ``distribute`` and ``process_group``.

    Raises:
        ValueError: For an unknown mode, or a ``process_group`` without an initialised
            default group.
        TypeError: For a ``process_group`` that is not one.
    """
    if distribute not in DISTRIBUTE_MODES:
        raise ValueError(f"distribute must be one of {DISTRIBUTE_MODES}, got {distribute!r}")
    if process_group is not None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("process_group: torch.distributed is not initialised")
        if not isinstance(process_group, dist.ProcessGroup):
            raise TypeError(
                f"process_group must be a torch.distributed.ProcessGroup, got "
                f"{type(process_group).__name__}"
            )


def make_sync(
    blocks: Sequence[PreconditionerBlock],
    params: Sequence[nn.Parameter],
    process_group: dist.ProcessGroup | None,
    distribute: str,
    average_gradients: bool | None,
    wrapped: bool,
    groups: Sequence[Mapping[str, Any]] = (),
    settings: Mapping[str, Any] | None = None,
) -> DataParallelSync | None:
    """Return the communication of a data-parallel optimizer, or ``None`` for one process.

    With several processes, first checks that every process was set up alike
    (:func:`~singd_opt.distributed.agreement.check_alike`, a collective).

    Args:
        blocks: The optimizer's blocks.
        params: The trained parameters.
        process_group: The group, ``None`` for the default one.
        distribute: ``"replicate"`` or ``"split"``.
        average_gradients: Whether the optimizer averages gradients; ``None`` for
            automatic (not for a ``DistributedDataParallel`` or FSDP2 model).
        wrapped: Whether the model came wrapped in ``DistributedDataParallel``.
        groups: The parameter groups (compared across processes).
        settings: Further settings compared across processes, by name.

    Raises:
        ValueError: For FSDP2 parameters in a layout other than FSDP2's default, or
            (on every process) when the processes were set up differently.
    """
    if process_group is None and not (dist.is_available() and dist.is_initialized()):
        return None
    collectives = Collectives(process_group)
    if collectives.world_size == 1:
        return None
    sharded = any(is_sharded(p) for p in params)
    if average_gradients is None:
        average_gradients = not (wrapped or sharded)
    shared_settings = {
        "distribute": distribute,
        "average_gradients": average_gradients,
        "sharded parameters": sharded,
        **(settings or {}),
    }
    description = describe_setup(blocks, groups, shared_settings)
    device = local_tensor(params[0]).device if params else torch.device("cpu")
    check_alike(collectives, description, device)
    check_shardings(list(params))
    return DataParallelSync(collectives, blocks, distribute, average_gradients, sharded, device)
