"""Checking at construction that every process set up the same optimizer.

The processes of a group communicate buffers laid out by their blocks and apply the
same updates; an optimizer created with a different model, structure, ``T``, mode or
learning rate on one process would make the collectives mismatch (an abort without a
Python traceback) or the replicas drift apart silently. :func:`check_alike` compares
a description of the set-up (:func:`describe_setup`: each block's name, kind,
parameter shapes and structures, each parameter group's hyper-parameters, and the
optimizer's own settings) across the processes before any other collective: one
all-gather of a 32-byte digest, and, only when the digests differ, an all-gather of
the descriptions, from which every process raises the same error naming the first
difference.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist

from singd_opt.blocks import PreconditionerBlock
from singd_opt.distributed.collectives import Collectives
from singd_opt.validation import HYPERPARAMETERS

Description = list[tuple[str, str]]


def _text(value: Any) -> str:
    """A process-independent text of a setting (callables by name, floats exactly)."""
    if callable(value):
        return f"<callable {getattr(value, '__qualname__', type(value).__qualname__)}>"
    if isinstance(value, torch.Tensor):
        return repr(value.tolist())
    return repr(value)


def describe_setup(
    blocks: Sequence[PreconditionerBlock],
    groups: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
) -> Description:
    """The set-up every process must share, as ``(what, value)`` texts in a fixed order.

    Args:
        blocks: The optimizer's blocks.
        groups: The parameter groups (their hyper-parameters).
        settings: Further settings of the optimizer by name (``distribute``, ...).
    """
    entries: Description = [(name, _text(value)) for name, value in settings.items()]
    entries.append(("number of parameter groups", str(len(groups))))
    for index, group in enumerate(groups):
        for name in HYPERPARAMETERS:
            entries.append((f"parameter group {index} {name!r}", _text(group.get(name))))
    for block in blocks:
        what = f"block {block.name!r}"
        entries.append((f"{what} parameter group", str(block.group_index)))
        shapes = [(tuple(rows.param.shape), rows.row_slice, rows.dim) for rows in block.params]
        entries.append((f"{what} parameter shapes", _text(shapes)))
        for key, value in block.describe().items():
            entries.append((f"{what} {key}", _text(value)))
    entries.append(("number of blocks", str(len(blocks))))
    return entries


def _digest(description: Description) -> torch.Tensor:
    """A 32-byte digest of ``description`` as four int64 numbers."""
    data = hashlib.sha256(repr(description).encode()).digest()
    return torch.frombuffer(bytearray(data), dtype=torch.int64).clone()


def first_difference(descriptions: Sequence[Description]) -> str:
    """The first entry in which a process's description differs from process 0's."""
    reference = descriptions[0]
    for rank, description in enumerate(descriptions[1:], start=1):
        for index in range(max(len(reference), len(description))):
            mine = reference[index] if index < len(reference) else ("(nothing)", "")
            theirs = description[index] if index < len(description) else ("(nothing)", "")
            if mine == theirs:
                continue
            if mine[0] == theirs[0]:
                return f"{mine[0]} is {mine[1]} on process 0 but {theirs[1]} on process {rank}"
            return (
                f"process 0 has {mine[0]} = {mine[1]} where process {rank} has "
                f"{theirs[0]} = {theirs[1]}"
            )
    return "the descriptions differ"  # digests collide only for different texts


def check_alike(collectives: Collectives, description: Description, device: torch.device) -> None:
    """Check that every process of the group has the same ``description``.

    A collective: every process of the group must call it (the optimizer's
    constructor does).

    Args:
        collectives: The process group.
        description: This process's set-up (:func:`describe_setup`).
        device: Where the digest is communicated (the parameters' device).

    Raises:
        ValueError: On every process, naming the first difference, when the processes
            were set up differently.
    """
    digest = _digest(description)
    gathered = collectives.all_gather(digest.to(device)).view(collectives.world_size, -1)
    if bool((gathered == gathered[0]).all()):
        return
    descriptions: list[Any] = [None] * collectives.world_size
    dist.all_gather_object(descriptions, description, group=collectives.group)
    raise ValueError(
        "SINGD must be created alike on every process (the same model, parameter "
        "groups and arguments), but " + first_difference(descriptions)
    )
