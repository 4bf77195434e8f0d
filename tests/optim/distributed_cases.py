"""Training runs that several processes and one process must agree on.

:func:`run_case` trains a small model for a few steps on a fixed sequence of global
batches. In a process group of :math:`R` processes each process takes its shard of
every batch and scales its loss so that the processes' average is the one-process
loss (the mean over the shard times :math:`R B_r / B`, or the sum times :math:`R`);
with one process and no group it trains on the whole batches. The returned state
(parameters, ``K``, ``C``, momenta) must be the same.
"""

from __future__ import annotations

import copy
import os
import socket
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn import functional
from torch.nn.parallel import DistributedDataParallel

from singd_opt import SINGD
from singd_opt.packed import declare_packed


@dataclass(frozen=True)
class Case:
    """One training run.

    Attributes:
        name: Identifies the case.
        model: ``"mlp"``, ``"sequence"`` (3-d inputs) or ``"transformer"``.
        wrapper: ``"bare"``, ``"ddp"`` or ``"fsdp"``.
        options: Keyword arguments of :class:`SINGD`.
        shards: Samples of each process per batch (their sum is the batch size).
        micro_batches: Backward passes per step (gradient accumulation).
        steps: Optimizer steps.
        dtype: Parameter dtype.
        resume_at: Save the optimizer's state after this many steps and continue
            with a new optimizer that loads it (``None``: no interruption).
        resume_from_single: Load, instead of its own, the state that one process
            training on the whole batches saved at ``resume_at``.
    """

    name: str
    model: str = "mlp"
    wrapper: str = "bare"
    options: dict[str, Any] = field(default_factory=dict)
    shards: tuple[int, ...] = (8, 8)
    micro_batches: int = 1
    steps: int = 5
    dtype: torch.dtype = torch.float64
    resume_at: int | None = None
    resume_from_single: bool = False


#: The models are tiny: ``elementwise_below=0`` gives their maps Kronecker blocks.
BASE = {"lr": 0.05, "lr_cov": 0.1, "damping": 0.1, "T": 2, "elementwise_below": 0}


class Transformer(nn.Module):
    def __init__(self, vocabulary: int = 11, dim: int = 8, length: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, dim)
        self.position = nn.Parameter(torch.zeros(length, dim))
        self.block = nn.TransformerEncoderLayer(dim, 2, 12, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocabulary)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.head(self.norm(self.block(h)))


class TransposedMap(nn.Module):
    """``x @ weight + bias`` with ``weight`` stored as ``(d_in, d_out)``."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out) / d_in**0.5)
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x, self.weight)


class Packed(nn.Module):
    """Packed maps split into projections: an ``nn.Linear`` and one stored as ``W^T``."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(7, 9)
        declare_packed(self.qkv, [3, 2, 4])
        self.mix = TransposedMap(9, 6)
        declare_packed(self.mix, {"gate": 2, "up": 4}, transposed=True)
        self.per_head = nn.Linear(6, 12)  # [a (2), b (4)] of each of 2 heads in turn
        declare_packed(self.per_head, {"a": 2, "b": 4}, heads=2)
        self.head = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        query, key, value = self.qkv(x).split([3, 2, 4], dim=-1)
        gate, up = self.mix(torch.cat([query.tanh(), key * key, value], dim=-1)).split([2, 4], -1)
        a, b = (
            self.per_head(torch.cat([gate.tanh(), up], dim=-1))
            .unflatten(-1, (2, 6))
            .split([2, 4], dim=-1)
        )
        return self.head(torch.cat([a.tanh().flatten(-2), b.flatten(-2)], dim=-1))


def make_model(case: Case) -> nn.Module:
    torch.manual_seed(0)
    if case.model == "transformer":
        return Transformer().to(case.dtype)
    if case.model == "packed":
        return Packed().to(case.dtype)
    return nn.Sequential(
        nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 8), nn.Tanh(), nn.Linear(8, 3)
    ).to(case.dtype)


def make_batches(case: Case) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(1)
    batch = sum(case.shards)
    batches = []
    for _ in range(case.steps):
        if case.model == "transformer":
            tokens = torch.randint(0, 11, (batch, 6), generator=generator)
            batches.append((tokens[:, :-1], tokens[:, 1:]))
        elif case.model == "sequence":
            x = torch.randn(batch, 4, 7, generator=generator, dtype=case.dtype)
            batches.append((x, torch.randint(0, 3, (batch, 4), generator=generator)))
        else:
            x = torch.randn(batch, 7, generator=generator, dtype=case.dtype)
            batches.append((x, torch.randint(0, 3, (batch,), generator=generator)))
    return batches


def loss_of(case: Case, model: nn.Module, x: Tensor, y: Tensor, weight: float) -> Tensor:
    """``weight`` times the mean (or sum) loss of the case on ``(x, y)``."""
    reduction = "sum" if case.options.get("loss_average", "batch") is None else "mean"
    logits = model(x)
    loss = functional.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction=reduction)
    return loss * weight


def _shard(case: Case, rank: int, world: int, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, float]:
    """This process's samples and its loss weight (1 for one process)."""
    if world == 1:
        return x, y, 1.0
    start = sum(case.shards[:rank])
    stop = start + case.shards[rank]
    summed = case.options.get("loss_average", "batch") is None
    weight = float(world) if summed else world * case.shards[rank] / sum(case.shards)
    return x[start:stop], y[start:stop], weight


def _wrap(case: Case, model: nn.Module, world: int) -> nn.Module:
    if world == 1 or case.wrapper == "bare":
        return model
    if case.wrapper == "ddp":
        return DistributedDataParallel(model)
    from torch.distributed.fsdp import fully_shard

    # layers that run their own forward get their own shard group (the attention's
    # output projection does not: the attention uses its weight directly)
    units = (nn.TransformerEncoderLayer,) if case.model == "transformer" else (nn.Linear,)
    for module in model.modules():
        if isinstance(module, units):
            fully_shard(module)
    fully_shard(model)
    return model


def _full(tensor: Tensor) -> Tensor:
    full = tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor
    return full.detach().clone()


def state_of(model: nn.Module, optimizer: SINGD) -> dict[str, Tensor]:
    """Parameters, factors and momenta as plain tensors by name."""
    inner = model.module if isinstance(model, DistributedDataParallel) else model
    state = {f"param:{n}": _full(p) for n, p in inner.named_parameters()}
    for kind in ("Ks", "Cs", "m_Ks", "m_Cs"):
        for name, matrix in getattr(optimizer, kind).items():
            state[f"{kind}:{name}"] = matrix.to_dense().clone()
    return state


def run_case(
    case: Case,
    rank: int = 0,
    world: int = 1,
    checkpoint: dict[str, Any] | None = None,
    process_group: dist.ProcessGroup | None = None,
) -> dict[str, Any]:
    """Train the case's model; return its final state and what was communicated.

    Args:
        case: The run.
        rank: This process's rank.
        world: Number of processes (1: no process group is used).
        checkpoint: A state to load at ``case.resume_at`` instead of the own one.
        process_group: Passed to the optimizer.

    Returns:
        ``state`` (see :func:`state_of`), ``calls`` (collectives per step) and, with
        ``resume_at``, ``checkpoint`` (the whole-tensor state saved then).
    """
    if case.resume_from_single and world > 1 and checkpoint is None:
        solo = [dist.new_group([r]) for r in range(world)][rank]  # every process joins each
        single = replace(case, resume_at=None, resume_from_single=False, steps=case.resume_at)
        checkpoint = run_case(single, rank, 1, process_group=solo)["final"]
    model = _wrap(case, make_model(case), world)
    options = {**BASE, **case.options}
    if process_group is not None:
        options["process_group"] = process_group

    def new_optimizer() -> SINGD:
        return SINGD(model, **{"defaults": "reference", "train_all_parameters": True, **options})

    optimizer = new_optimizer()
    calls_per_step = []
    result: dict[str, Any] = {}
    for step, (x, y) in enumerate(make_batches(case)):
        if case.resume_at is not None and step == case.resume_at:
            result["checkpoint"] = copy.deepcopy(optimizer.full_state_dict())
            saved = copy.deepcopy(optimizer.state_dict()) if checkpoint is None else checkpoint
            optimizer.remove_hooks()
            optimizer = new_optimizer()
            optimizer.load_state_dict(saved)
        x, y, weight = _shard(case, rank, world, x, y)
        optimizer.zero_grad()
        pieces = list(
            zip(x.tensor_split(case.micro_batches), y.tensor_split(case.micro_batches), strict=True)
        )
        for x_part, y_part in pieces:
            loss_of(case, model, x_part, y_part, weight * x_part.shape[0] / x.shape[0]).backward()
        before = optimizer.communication.total_calls if optimizer.communication else 0
        optimizer.step()
        after = optimizer.communication.total_calls if optimizer.communication else 0
        calls_per_step.append(after - before)
    result.update(
        state=state_of(model, optimizer),
        calls=calls_per_step,
        final=copy.deepcopy(optimizer.full_state_dict()),
    )
    return result


# --------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(
    rank: int, world: int, port: int, task: Callable[..., Any], args: tuple[Any, ...], out: str
) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result: Any = task(rank, world, *args)
    except Exception:  # reported to the parent, which fails the test with it
        result = {"error": traceback.format_exc()}
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def spawn(world: int, task: Callable[..., Any], *args: Any) -> list[Any]:
    """Run ``task(rank, world, *args)`` in ``world`` gloo processes; return their results."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world, _free_port(), task, args, out), nprocs=world, join=True)
        results = [torch.load(Path(out) / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for rank, result in enumerate(results):
        if isinstance(result, dict) and "error" in result:
            raise RuntimeError(f"process {rank} failed:\n{result['error']}")
    return results


def run_cases(rank: int, world: int, cases: list[Case]) -> dict[str, Any]:
    """Every case in this process (a task for :func:`spawn`)."""
    results = {}
    for case in cases:
        try:
            results[case.name] = run_case(case, rank, world)
        except Exception:
            results[case.name] = {"error": traceback.format_exc()}
    return results


def with_name(case: Case, suffix: str, **changes: Any) -> Case:
    return replace(case, name=f"{case.name}-{suffix}", **changes)
