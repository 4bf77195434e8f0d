"""The optimizer's checkpoint entry: saving, checking and loading the blocks' state.

torch's optimizer state dict holds the parameter groups and the per-parameter state
(momentum buffers); the optimizer adds the entry ``"singd"`` with its steps, gradient
scales and each block's state (plain tensors, strings and numbers, so checkpoints
load with ``torch.load(path)`` and its default ``weights_only=True``). Loading checks
everything before anything changes.

The step and the curvature recording compute in :func:`torch.inference_mode`, so the
state they leave is made of inference tensors, which cannot be changed in place
outside that mode. A checkpoint loader may write into the tensors of a state dict
(``torch.distributed.checkpoint`` loads in place), so the state dict holds ordinary
copies of them (:func:`writable`); every other tensor is the live one, as in torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from singd_opt.blocks import PreconditionerBlock
from singd_opt.grad_scale import GradScales
from singd_opt.sharding import is_sharded, shard_like
from singd_opt.validation import check_group

# ----------------------------------------------------------- the optimizer's entry
_CALLABLE = "<callable>"  # stands for a callable ``lr_cov`` in a state_dict
_ENTRY = "singd"


@dataclass
class SavedState:
    """The optimizer's own part of a checkpoint (torch's state dict holds the rest).

    Attributes:
        steps: Steps taken.
        skipped_steps: Steps skipped.
        grad_scales: The gradient scales still needed (:class:`GradScales` state).
        blocks: The blocks, whose :attr:`~PreconditionerBlock.origin` saves and loads
            their state.
        settled: Save the state as of the last step, without what was recorded
            since (:meth:`~PreconditionerBlock.settled_state_dict`).
    """

    steps: int
    skipped_steps: int
    grad_scales: dict[int, float]
    blocks: list[PreconditionerBlock]
    settled: bool = False


def pending_curvature_message(steps: int) -> str:
    """The warning for a multi-process ``state_dict()`` taken between backward and step."""
    return (
        "state_dict() was called with curvature recorded since the last step; "
        "each process holds only its share of it, so the checkpoint leaves it out "
        f"and holds the state after step {steps}: resume by redoing this "
        "step's forward and backward passes, or save after step()"
    )


def add_entry(state: dict[str, Any], saved: SavedState) -> dict[str, Any]:
    """Add the optimizer's entry to torch's state dict ``state`` (in place; returned).

    The entry ``"singd"`` holds ``steps``, ``skipped_steps``, ``grad_scales`` and
    ``blocks`` (each block's state by block name; with ``settled``, as of the last
    step). A callable ``lr_cov`` is saved as
    the string ``"<callable>"`` (the loading optimizer keeps its own). The tensors are
    the live ones (as in torch), except inference tensors, which are copied
    (:func:`writable`).
    """
    for group in state["param_groups"]:
        if callable(group["lr_cov"]):
            group["lr_cov"] = _CALLABLE
    state["state"] = writable(state["state"])
    state[_ENTRY] = {
        "steps": saved.steps,
        "skipped_steps": saved.skipped_steps,
        "grad_scales": saved.grad_scales,
        "blocks": {
            block.name: writable(
                block.settled_state_dict() if saved.settled else block.origin.state_dict()
            )
            for block in saved.blocks
        },
    }
    return state


def writable(state: Any) -> Any:
    """Return ``state`` with every inference tensor replaced by an ordinary copy.

    Dictionaries, lists and tuples are rebuilt around the copies; every other value,
    ordinary tensors included, is kept as it is (the live object).
    """
    return map_leaves(state, _ordinary)


def _ordinary(value: Any) -> Any:
    if not isinstance(value, Tensor) or not value.is_inference():
        return value
    with torch.inference_mode(False):
        return value.clone()


def map_leaves(state: Any, convert: Callable[[Any], Any]) -> Any:
    """Return ``state`` with ``convert`` applied to every value that is no container.

    Dictionaries, lists and tuples are rebuilt around the converted values (tensors,
    sharded ones included, are values).
    """
    if isinstance(state, dict):
        return {key: map_leaves(value, convert) for key, value in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(map_leaves(value, convert) for value in state)
    return convert(state)


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


@dataclass
class PreparedLoad:
    """A validated checkpoint entry, ready to be applied.

    Attributes:
        steps: The saved steps.
        skipped_steps: The saved skipped steps.
        grad_scales: The saved gradient scales.
        loaders: One function per block (in the optimizer's order) that loads its
            state and returns the block that holds it.
    """

    steps: int
    skipped_steps: int
    grad_scales: dict[int, float]
    loaders: list[Callable[[], PreconditionerBlock]]


def prepare_load(
    state_dict: dict[str, Any],
    param_groups: list[dict[str, Any]],
    blocks: list[PreconditionerBlock],
) -> tuple[dict[str, Any], PreparedLoad]:
    """Check a state dict against the optimizer and prepare the blocks' loading.

    Nothing changes here; the returned :class:`PreparedLoad` is applied once torch has
    loaded its part.

    Args:
        state_dict: The state dict being loaded.
        param_groups: The optimizer's parameter groups.
        blocks: The optimizer's blocks.

    Returns:
        torch's part of the state dict (the entry removed, groups completed) and the
        prepared load.

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
    if not isinstance(groups, list) or len(groups) != len(param_groups):
        raise ValueError(
            f"state_dict: expected {len(param_groups)} parameter groups, got "
            f"{len(groups) if isinstance(groups, list) else groups!r}"
        )
    new_groups = []
    for index, (saved, current) in enumerate(zip(groups, param_groups, strict=True)):
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
    saved_blocks = entry["blocks"]
    names = [block.name for block in blocks]
    if isinstance(saved_blocks, dict) and set(saved_blocks) != set(names):
        saved_blocks = {unwrapped_name(name): value for name, value in saved_blocks.items()}
    if not isinstance(saved_blocks, dict) or set(saved_blocks) != set(names):
        saved_names = sorted(saved_blocks) if isinstance(saved_blocks, dict) else saved_blocks
        raise ValueError(
            f"state_dict: the saved blocks {saved_names} differ from this optimizer's blocks "
            f"{sorted(names)} (the options that choose blocks must match the saved "
            "optimizer's: train_all_parameters, tied_embeddings, packed_projections, "
            "elementwise_below)"
        )
    loaders = []
    for block in blocks:
        group = {**param_groups[block.group_index], **new_groups[block.group_index]}
        block_state = saved_blocks[block.name]
        if not isinstance(block_state, dict):
            raise ValueError(f"state_dict: block {block.name!r} must be a dict")
        loaders.append(block.origin.load_state_dict(block_state, group))
    return state, PreparedLoad(steps, skipped, scales, loaders)


def shard_parameter_state(state: dict[Any, dict[str, Any]]) -> None:
    """Cut whole-tensor per-parameter states of sharded (FSDP2) parameters to local rows.

    States saved by a single process or by :meth:`~singd_opt.SINGD.full_state_dict`
    hold whole tensors; each process keeps the rows it holds.
    """
    for param, param_state in state.items():
        if not is_sharded(param):
            continue
        for key, value in param_state.items():
            if isinstance(value, Tensor) and not is_sharded(value) and value.shape == param.shape:
                param_state[key] = shard_like(param, value)


def full_tensors(state: Any) -> Any:
    """Return ``state`` with every sharded tensor replaced by the whole tensor.

    Gathering a sharded tensor is a collective: every process must call this.
    """
    return map_leaves(state, lambda value: value.full_tensor() if is_sharded(value) else value)
