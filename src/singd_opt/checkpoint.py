"""Structured matrices as plain checkpoint entries (tensors, strings and ints only).

A matrix is stored as ``{"structure": name, "tensors": {tensor name: tensor}}``, so
optimizer checkpoints load with ``torch.load(path)`` and its default
``weights_only=True``. The optimizer adds its blocks' state to torch's state dict
through state-dict hooks (:func:`add_block_state`, :func:`validate_block_state`,
:func:`load_block_state`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from singd_opt.distributed.sharding import is_sharded, shard_like
from singd_opt.grad_scale import GradScales
from singd_opt.validation import check_group, resolve_structure
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


# ----------------------------------------------------------- optimizer state hooks
_CALLABLE = "<callable>"  # stands for a callable ``lr_cov`` in a state_dict
_ENTRY = "singd"


def add_block_state(optimizer: Any, state: dict[str, Any]) -> dict[str, Any]:
    """State-dict post hook: add the blocks' state, steps and gradient scales.

    The entry ``"singd"`` holds ``steps``, ``skipped_steps``, ``grad_scales`` and
    ``blocks`` (each block's state by block name). A callable ``lr_cov`` is saved as
    the string ``"<callable>"`` (the loading optimizer keeps its own). The tensors are
    the live ones, not copies (as in torch).
    """
    for group in state["param_groups"]:
        if callable(group["lr_cov"]):
            group["lr_cov"] = _CALLABLE
    state[_ENTRY] = {
        "steps": optimizer.steps,
        "skipped_steps": optimizer.skipped_steps,
        "grad_scales": optimizer._grad_scales.state(),
        "blocks": {block.name: block.state_dict() for block in optimizer.blocks},
    }
    return state


def _count(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"state_dict: {name} must be a non-negative int, got {value!r}")
    return value


#: Name segments that model wrappers add (``torch.compile``, ``DistributedDataParallel``).
WRAPPER_PREFIXES: tuple[str, ...] = ("_orig_mod.", "module.")


def unwrapped_name(name: str) -> str:
    """Return a block name without the leading segments a model wrapper adds.

    Used when the saved block names differ from the optimizer's: a state saved by an
    optimizer that named its blocks after a wrapped model (names starting with
    ``_orig_mod.`` or ``module.``) loads into one built on the bare model (the
    optimizer unwraps the model it is given, so it names blocks after the bare model).
    """
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def validate_block_state(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """Load-state-dict pre hook: check everything, prepare the blocks' loading.

    Nothing of the optimizer changes here; :func:`load_block_state` applies what was
    prepared once torch has loaded its part.

    Raises:
        ValueError: If the state does not fit this optimizer: missing entries, other
            parameter groups, other structures (the message names both), or a block
            entry that does not fit its block.
    """
    state = dict(state_dict)
    entry = state.pop(_ENTRY, None)
    if not isinstance(entry, dict) or not {"steps", "blocks", "grad_scales"} <= set(entry):
        raise ValueError(
            f"state_dict: missing the SINGD entry {_ENTRY!r} with 'steps', 'grad_scales' and "
            "'blocks' (was it saved by singd_opt.SINGD?)"
        )
    groups = state.get("param_groups")
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        raise ValueError(
            f"state_dict: expected {len(optimizer.param_groups)} parameter groups, got "
            f"{len(groups) if isinstance(groups, list) else groups!r}"
        )
    new_groups = []
    for index, (saved, current) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        group = dict(saved)
        if group.get("lr_cov") == _CALLABLE:
            if not callable(current["lr_cov"]):
                raise ValueError(
                    f"state_dict: parameter group {index} has a callable lr_cov; create "
                    "the optimizer with a callable lr_cov to load it"
                )
            group["lr_cov"] = current["lr_cov"]
        saved_structures = group.get("structures", current["structures"])
        if tuple(saved_structures) != tuple(current["structures"]):
            raise ValueError(
                f"state_dict: parameter group {index} was saved with structures "
                f"{tuple(saved_structures)!r} but this optimizer uses "
                f"{tuple(current['structures'])!r}; create the optimizer with the saved "
                "structures to load it"
            )
        group["structures"] = tuple(current["structures"])
        filled = {**current, **group}
        check_group(filled, index)
        new_groups.append(group)
    state["param_groups"] = new_groups

    steps = _count(entry["steps"], "steps")
    skipped = _count(entry.get("skipped_steps", 0), "skipped_steps")
    scales = GradScales.validated(entry["grad_scales"])
    blocks = entry["blocks"]
    names = [block.name for block in optimizer.blocks]
    if isinstance(blocks, dict) and set(blocks) != set(names):
        blocks = {unwrapped_name(name): value for name, value in blocks.items()}
    if not isinstance(blocks, dict) or set(blocks) != set(names):
        saved = sorted(blocks) if isinstance(blocks, dict) else blocks
        raise ValueError(
            f"state_dict: the saved blocks {saved} differ from this optimizer's blocks "
            f"{sorted(names)}"
        )
    loaders = []
    for block in optimizer.blocks:
        group = {**optimizer.param_groups[block.group_index], **new_groups[block.group_index]}
        block_state = blocks[block.name]
        if not isinstance(block_state, dict):
            raise ValueError(f"state_dict: block {block.name!r} must be a dict")
        loaders.append(block.load_state_dict(block_state, group))

    def finish() -> None:
        for load in loaders:
            load()
        optimizer.steps = steps
        optimizer.skipped_steps = skipped
        optimizer._grad_scales.scales = scales

    optimizer._finish_loading = finish
    return state


def load_block_state(optimizer: Any) -> None:
    """Load-state-dict post hook: apply what :func:`validate_block_state` prepared.

    Whole-tensor states of sharded (FSDP2) parameters, as saved by a single process
    or by :meth:`~singd_opt.SINGD.full_state_dict`, are cut to the rows this process
    holds.
    """
    finish = optimizer.__dict__.pop("_finish_loading", None)
    if finish is not None:
        finish()
    for param, param_state in optimizer.state.items():
        if not is_sharded(param):
            continue
        for key, value in param_state.items():
            if isinstance(value, Tensor) and not is_sharded(value) and value.shape == param.shape:
                param_state[key] = shard_like(param, value)
    optimizer._set_recording()


def full_tensors(state: Any) -> Any:
    """Return ``state`` with every sharded tensor replaced by the whole tensor.

    Gathering a sharded tensor is a collective: every process must call this.
    """
    if is_sharded(state):
        return state.full_tensor()
    if isinstance(state, dict):
        return {key: full_tensors(value) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(full_tensors(value) for value in state)
    return state
