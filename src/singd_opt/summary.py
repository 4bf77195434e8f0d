"""A readable table of an optimizer's blocks (``SINGD.describe()``)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from singd_opt.blocks import PreconditionerBlock


def state_bytes(tensors: list[Tensor], seen: set[int] | None = None) -> int:
    """Bytes of the distinct storages behind ``tensors`` (views counted once).

    Args:
        tensors: The tensors.
        seen: Storages counted before (by data pointer), skipped and updated.
    """
    seen = set() if seen is None else seen
    total = 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def tensor_bytes(tensors: list[Tensor], seen: set[tuple[int, int]]) -> int:
    """Bytes of the distinct tensors in ``tensors`` (by address and size), ``seen`` updated.

    Unlike :func:`state_bytes` this counts a view's own bytes, not its storage's, so
    tensors carved out of one flat buffer are each counted with their own size.
    """
    total = 0
    for tensor in tensors:
        key = (tensor.data_ptr(), tensor.numel() * tensor.element_size())
        if key not in seen:
            seen.add(key)
            total += key[1]
    return total


def _parameters(block: PreconditionerBlock, names: dict[int, str]) -> str:
    parts = []
    for rows in block.params:
        parts.append(names.get(id(rows.param), "?") + rows.label)
    return ", ".join(parts)


def describe_blocks(optimizer: Any) -> str:
    """Return one line per block: name, kind, structures or shape, parameters, state bytes.

    The state bytes count the block's state and the momentum buffers of its
    parameters (a buffer shared by several blocks with its first block; each tensor
    with its own size, also where several are views of one flat buffer); the last
    line sums them.
    """
    names = {
        id(p): f"{i}:{tuple(p.shape)}"
        for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])
    }
    names.update(optimizer.parameter_names)
    table = [("block", "kind", "preconditioner", "parameters", "state bytes")]
    total = 0
    seen: set[tuple[int, int]] = set()
    for block in optimizer.blocks:
        summary = block.describe()
        kind, preconditioner = summary["kind"], summary["preconditioner"]
        momenta = [
            optimizer.state[rows.param]["momentum_buffer"]
            for rows in block.params
            if "momentum_buffer" in optimizer.state.get(rows.param, {})
        ]
        size = tensor_bytes(block.state_tensors() + momenta, seen)
        total += size
        table.append((block.name, kind, preconditioner, _parameters(block, names), f"{size:,}"))
    table.append(("total", "", "", "", f"{total:,}"))
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in table
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def total_state_bytes(optimizer: Any) -> int:
    """Bytes of the optimizer's whole state, each storage counted once.

    Every block's state (cached products included) and the per-parameter state
    (momentum buffers).
    """
    tensors = [t for block in optimizer.blocks for t in block.state_tensors()]
    for param_state in optimizer.state.values():
        tensors.extend(v for v in param_state.values() if isinstance(v, Tensor))
    return state_bytes(tensors)
