"""Runs in which two processes are tempted to disagree.

Each :class:`Fault` trains a small model for a few steps like
:mod:`tests.optim.distributed_cases` (each process on its shard of fixed global
batches), with one thing that differs between the processes: a non-finite gradient
on process 1 only, a gradient scaler that checks the local gradients, a layer used
only on process 1, a different configuration, or a checkpoint taken between the
backward pass and the step. :func:`run_fault` returns what the test compares: the
final state, the skipped steps, the scale, the warnings and the error of each process.
"""

from __future__ import annotations

import copy
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional
from torch.nn.parallel import DistributedDataParallel

from singd_opt import SINGD
from tests.optim.distributed_cases import BASE, Case, make_batches, make_model, state_of


class FunctionalExpert(nn.Module):
    """A layer whose weight goes through ``functional.linear`` (a deferred block)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, dim) / dim**0.5)

    def forward(self, x: Tensor) -> Tensor:
        return functional.linear(x, self.weight)


class Routed(nn.Module):
    """An MLP with an expert that only the samples of ``mask`` go through."""

    def __init__(self, expert: str) -> None:
        super().__init__()
        self.inp = nn.Linear(7, 9)
        self.expert = FunctionalExpert(9) if expert == "functional" else nn.Linear(9, 9)
        self.out = nn.Linear(9, 3)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        if bool(mask.any()):
            routed = torch.zeros_like(h)
            routed[mask] = self.expert(h[mask])
            h = h + routed
        return self.out(h)


@dataclass(frozen=True)
class Fault:
    """One run with a reason to disagree.

    Attributes:
        name: Identifies the run.
        wrapper: ``"bare"``, ``"ddp"`` or ``"fsdp"``.
        options: Keyword arguments of :class:`SINGD` (on top of ``BASE``).
        rank_options: Further keyword arguments of one process only (by rank).
        widths: Hidden width of the model of one process (by rank), default 9.
        nan_at: Step whose gradient process 1 (or the only process) makes non-finite
            after the gradients were averaged (``None``: no fault).
        scaler: Train with a :class:`torch.amp.GradScaler`.
        overflow: ``nan_at`` makes process 1's loss infinite (the gradients are then
            non-finite before any averaging) instead of its averaged gradient.
        synchronize: Call ``optimizer.synchronize_gradients()`` before ``scaler.step``.
        routed: ``"functional"`` or ``"linear"``: an expert that only process 1's samples
            go through in the first step (all samples later).
        save_at: Take ``state_dict()`` between the backward pass and the step of this
            step, and resume a new optimizer from it after training.
        steps: Optimizer steps.
    """

    name: str
    wrapper: str = "bare"
    options: dict[str, Any] = field(default_factory=dict)
    rank_options: dict[int, dict[str, Any]] = field(default_factory=dict)
    widths: dict[int, int] = field(default_factory=dict)
    nan_at: int | None = None
    scaler: bool = False
    overflow: bool = False
    synchronize: bool = False
    routed: str | None = None
    save_at: int | None = None
    steps: int = 4


SHARDS = (8, 8)


def _model(fault: Fault, rank: int) -> nn.Module:
    torch.manual_seed(0)
    if fault.routed is not None:
        return Routed(fault.routed).double()
    width = fault.widths.get(rank, 9)
    if width == 9:
        return make_model(Case(fault.name))
    layers = [nn.Linear(7, width), nn.Tanh(), nn.Linear(width, 8), nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).double()


def _wrap(fault: Fault, model: nn.Module, world: int) -> nn.Module:
    if world == 1 or fault.wrapper == "bare":
        return model
    if fault.wrapper == "ddp":
        return DistributedDataParallel(model, find_unused_parameters=fault.routed is not None)
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if isinstance(module, nn.Linear):
            fully_shard(module)
    fully_shard(model)
    return model


def _local(tensor: Tensor) -> Tensor:
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _poison(model: nn.Module, value: float) -> None:
    """Put ``value`` into the first gradient entry of every parameter (local part)."""
    for param in model.parameters():
        if param.grad is not None and _local(param.grad).numel():
            _local(param.grad).view(-1)[0] = value


def _plain(tensors: dict[str, Any]) -> dict[str, Any]:
    """A detached copy of a state dict's tensors (DTensors made whole)."""

    def copy_of(value: Any) -> Any:
        if isinstance(value, Tensor):
            whole = value.full_tensor() if hasattr(value, "full_tensor") else value
            return whole.detach().clone()
        if isinstance(value, dict):
            return {k: copy_of(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(copy_of(v) for v in value)
        return value

    return copy_of(tensors)


def _train(
    fault: Fault,
    rank: int,
    world: int,
    model: nn.Module,
    optimizer: SINGD,
    first: int,
    result: dict[str, Any],
) -> None:
    """Train from step ``first`` to ``fault.steps``."""
    scaler = result.get("_scaler")
    batches = make_batches(Case(fault.name, steps=fault.steps, shards=SHARDS))
    start, stop = sum(SHARDS[:rank]), sum(SHARDS[: rank + 1])
    for step, (x, y) in enumerate(batches):
        if step < first:
            continue
        mask = torch.ones(x.shape[0], dtype=torch.bool)
        if step == 0:
            mask[: SHARDS[0]] = False  # only process 1's samples use the expert
        weight = 1.0
        if world > 1:
            x, y, mask = x[start:stop], y[start:stop], mask[start:stop]
            weight = world * SHARDS[rank] / sum(SHARDS)
        optimizer.zero_grad()
        logits = model(x, mask) if fault.routed is not None else model(x)
        loss = functional.cross_entropy(logits, y) * weight
        faulty = fault.nan_at == step and (world == 1 or rank == 1)
        if faulty and fault.overflow:
            loss = loss * torch.inf  # an overflow in this process's forward pass
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if fault.synchronize:
            optimizer.synchronize_gradients()
        if faulty and not fault.overflow:
            if fault.wrapper == "bare":
                optimizer.synchronize_gradients()  # a fault after the averaging
            _poison(model, torch.nan)
        if fault.save_at == step and "checkpoint" not in result:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result["checkpoint"] = _plain(optimizer.state_dict())
            result["save_warnings"] = [str(w.message) for w in caught]
            result["resume_model"] = copy.deepcopy(_inner(model).state_dict())
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()


def _inner(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def run_fault(fault: Fault, rank: int = 0, world: int = 1) -> dict[str, Any]:
    """Train the run in this process; return its state, skips, scale, warnings, error."""
    result: dict[str, Any] = {"error": None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = _wrap(fault, _model(fault, rank), world)
            options = {**BASE, **fault.options}
            if world > 1:
                options.update(fault.rank_options.get(rank, {}))
            optimizer = SINGD(model, **options)
            if fault.scaler:
                result["_scaler"] = torch.amp.GradScaler("cpu", init_scale=2.0**10)
            _train(fault, rank, world, model, optimizer, 0, result)
            result["state"] = state_of(model, optimizer)
            result["skipped"] = optimizer.skipped_steps
            result["steps"] = optimizer.steps
            if fault.scaler:
                result["scale"] = result["_scaler"].get_scale()
            if fault.save_at is not None:
                result["resumed"] = _resume(fault, rank, world, result)
        except Exception as error:  # every process must end in the same clear error
            result["error"] = f"{type(error).__name__}: {error}"
            result["traceback"] = traceback.format_exc()
    result.pop("_scaler", None)
    result.pop("resume_model", None)
    result["warnings"] = [str(w.message) for w in caught]
    return result


def _resume(fault: Fault, rank: int, world: int, result: dict[str, Any]) -> dict[str, Tensor]:
    """Redo the run from the checkpoint (its step again) with a new model and optimizer."""
    model = _model(fault, rank)
    model.load_state_dict(result["resume_model"])
    model = _wrap(fault, model, world)
    optimizer = SINGD(model, **{**BASE, **fault.options})
    optimizer.load_state_dict(result["checkpoint"])
    _train(replace_save(fault), rank, world, model, optimizer, fault.save_at or 0, result)
    return state_of(model, optimizer)


def replace_save(fault: Fault) -> Fault:
    from dataclasses import replace

    return replace(fault, save_at=None)


def run_faults(rank: int, world: int, faults: list[Fault]) -> dict[str, Any]:
    """Every run in this process (a task for :func:`tests.optim.distributed_cases.spawn`)."""
    return {fault.name: run_fault(fault, rank, world) for fault in faults}
