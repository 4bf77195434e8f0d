"""Structured matrices as plain checkpoint entries (tensors, strings and ints only).

A matrix is stored as ``{"structure": name, "tensors": {tensor name: tensor}}``, so
optimizer checkpoints load with ``torch.load(path)`` and its default
``weights_only=True``.
"""

from __future__ import annotations

from typing import Any

import torch

from singd_opt.structures import resolve_structure
from structmat import StructuredMatrix


def matrix_to_state(structure: str, matrix: StructuredMatrix) -> dict[str, Any]:
    """Return the checkpoint entry of ``matrix`` (its tensors, not copies).

    Args:
        structure: The registry name of the matrix's structure.
        matrix: The matrix.
    """
    return {"structure": structure, "tensors": dict(matrix.tensors())}


def matrix_from_state(
    entry: object,
    dim: int,
    dtype: torch.dtype,
    device: torch.device,
    what: str,
) -> tuple[str, StructuredMatrix]:
    """Rebuild a matrix from a checkpoint entry, as a copy in ``dtype`` on ``device``.

    Args:
        entry: The entry written by :func:`matrix_to_state`.
        dim: The expected dimension.
        dtype: The dtype of the result.
        device: The device of the result.
        what: Name of the entry, for error messages.

    Returns:
        The structure name and the matrix.

    Raises:
        ValueError: If the entry is malformed, names an unknown structure, or has the
            wrong dimension.
    """
    if not isinstance(entry, dict) or set(entry) != {"structure", "tensors"}:
        raise ValueError(f"state_dict: {what} must be a dict with keys 'structure' and 'tensors'")
    name, tensors = entry["structure"], entry["tensors"]
    if not isinstance(tensors, dict) or not all(
        isinstance(t, torch.Tensor) for t in tensors.values()
    ):
        raise ValueError(f"state_dict: {what}['tensors'] must map names to tensors")
    cls = resolve_structure(name, argument=f"state_dict {what}")
    try:
        matrix = cls(**{k: t.to(device=device, dtype=dtype, copy=True) for k, t in tensors.items()})
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"state_dict: {what} does not describe a {name!r} matrix: {error}"
        ) from None
    if tuple(matrix.shape) != (dim, dim):
        raise ValueError(
            f"state_dict: {what} has shape {tuple(matrix.shape)}, expected {(dim, dim)}"
        )
    return name, matrix
