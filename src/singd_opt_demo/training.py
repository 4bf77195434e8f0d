"""Optimizers, the training loop and its metrics, shared by the demo's tasks.

Every run of a task starts from the same initial weights (``torch.manual_seed(seed)``
right before the model is built) and sees the same mini-batches (a
``torch.Generator`` seeded with ``seed`` shuffles the training examples each epoch),
so runs differ only by their optimizer. Every optimizer's learning rate follows the
same schedule: a cosine decay from the tuned value to zero over the run
(``torch.optim.lr_scheduler.CosineAnnealingLR``, stepped after every update), so the
final metrics are not read off at a noisy point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional
from torch.optim import Optimizer

from singd_opt_demo.parallel import Processes
from singd_opt_demo.split import Metrics, Split
from singd_opt_demo.tasks import BASELINE_LABELS, Task

#: Default seed (initial weights and mini-batch order).
DEFAULT_SEED = 0
#: Fewest steps between two evaluations during training (short runs evaluate less).
MIN_STEPS_BETWEEN_EVALUATIONS = 10
#: Most targets evaluated in one forward pass.
EVAL_TARGETS_PER_BATCH = 16384


def singd_class() -> type[Optimizer]:
    """Return :class:`singd_opt.SINGD` (imported lazily)."""
    import singd_opt

    return singd_opt.SINGD


def available_structures() -> list[str]:
    """Return the names of the structures ``SINGD`` accepts, sorted."""
    return sorted(singd_class().SUPPORTED_STRUCTURES)


@dataclass(frozen=True)
class OptimizerSpec:
    """Which optimizer to train with, and how.

    Attributes:
        kind: ``"singd"``, ``"adamw"`` or ``"sgd"``.
        structure: The structure of SINGD's preconditioner factors ``K`` and ``C``
            (``None`` for the baselines).
        hyperparameters: Keyword arguments of the optimizer's constructor.
    """

    kind: str
    structure: str | None = None
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The name shown in the table and the figure, e.g. ``"SINGD (dense)"``."""
        if self.kind == "singd":
            return f"SINGD ({self.structure})"
        return BASELINE_LABELS.get(self.kind, self.kind)

    @classmethod
    def default(cls, task: Task, kind: str, structure: str | None = None) -> OptimizerSpec:
        """Return the spec with the tuned hyper-parameters of ``kind`` for ``task``.

        Raises:
            ValueError: If ``task`` has no tuned hyper-parameters for ``kind``.
        """
        if kind not in task.hyperparameters:
            raise ValueError(
                f"task {task.name!r} has no hyper-parameters for {kind!r}; "
                f"valid optimizers are: {', '.join(task.hyperparameters)}"
            )
        return cls(kind, structure, dict(task.hyperparameters[kind]))


def make_optimizer(spec: OptimizerSpec, model: nn.Module) -> Optimizer:
    """Build the optimizer described by ``spec`` for ``model``.

    SINGD trains every parameter of ``model`` (``params=None``).

    Args:
        spec: The optimizer and its hyper-parameters.
        model: The network to train.

    Returns:
        The optimizer.

    Raises:
        ValueError: If ``spec.kind`` is unknown.
    """
    hyperparameters = dict(spec.hyperparameters)
    if spec.kind == "singd":
        if "T" in hyperparameters:
            hyperparameters["T"] = int(hyperparameters["T"])
        return singd_class()(model, structures=(spec.structure, spec.structure), **hyperparameters)
    if spec.kind == "adamw":
        return torch.optim.AdamW(model.parameters(), **hyperparameters)
    if spec.kind == "sgd":
        return torch.optim.SGD(model.parameters(), **hyperparameters)
    raise ValueError(f"unknown optimizer {spec.kind!r}; expected 'singd', 'adamw' or 'sgd'")


def _tensors_in(obj: Any) -> Iterator[Tensor]:
    """Yield every tensor reachable from ``obj`` through mappings and sequences."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors_in(value)
    elif isinstance(obj, (list, tuple, set)):
        for value in obj:
            yield from _tensors_in(value)


def optimizer_state_bytes(optimizer: Optimizer) -> int:
    """Count the bytes of the optimizer's state.

    For SINGD, :meth:`singd_opt.SINGD.state_bytes`: every block's state (the factors
    ``K, C``, their momenta ``m_K, m_C`` and the cached products ``K K^T, C C^T``; the
    element-wise blocks' second moments) and the momentum buffers. For other
    optimizers, every tensor of torch's per-parameter state (``optimizer.state``:
    momentum buffers, Adam's moments and step counters). Each storage is counted
    once, whole (:func:`singd_opt.summary.state_bytes`).

    Args:
        optimizer: The optimizer, usually after training.

    Returns:
        The number of bytes.
    """
    if isinstance(optimizer, singd_class()):
        return optimizer.state_bytes()
    from singd_opt.summary import state_bytes

    return state_bytes(list(_tensors_in(dict(optimizer.state))))


@dataclass
class RunResult:
    """What one training run measured.

    Attributes:
        label: The optimizer's display name.
        hyperparameters: The optimizer's hyper-parameters.
        losses: Training loss of every step's mini-batch.
        eval_steps: Steps (number of updates done) at which the first evaluation set
            was evaluated.
        eval_metrics: Its metrics at ``eval_steps``.
        final: Metrics after training, by evaluation-set name (plus ``"train"`` when
            the task evaluates the whole training set).
        seconds_per_step: Mean wall time of a training step (forward, backward and
            optimizer step), first step excluded as warm-up.
        state_bytes: :func:`optimizer_state_bytes` after training.
    """

    label: str
    hyperparameters: dict[str, Any]
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_metrics: list[Metrics] = field(default_factory=list)
    final: dict[str, Metrics] = field(default_factory=dict)
    seconds_per_step: float = float("nan")
    state_bytes: int = 0


def autocast_context(precision: str, device: torch.device) -> AbstractContextManager[Any]:
    """Return the autocast context of ``precision`` (``"float32"`` or ``"bfloat16"``).

    Args:
        precision: ``"float32"`` (no autocast) or ``"bfloat16"``.
        device: The device the model runs on.

    Returns:
        ``torch.autocast(device.type, dtype=torch.bfloat16)`` for ``"bfloat16"``, a
        no-op context otherwise.

    Raises:
        ValueError: If ``precision`` is neither.
    """
    if precision == "float32":
        return nullcontext()
    if precision == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; expected 'float32' or 'bfloat16'")


def cross_entropy(logits: Tensor, targets: Tensor, reduction: str = "mean") -> Tensor:
    """Cross-entropy of logits ``(*, classes)`` (cast to float32) and targets ``(*)``."""
    return functional.cross_entropy(
        logits.float().flatten(0, -2), targets.flatten(), reduction=reduction
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, precision: str) -> Metrics:
    """Return the mean cross-entropy per target and the accuracy of ``model`` on ``(x, y)``.

    Examples are evaluated in chunks of at most :data:`EVAL_TARGETS_PER_BATCH` targets.
    """
    was_training = model.training
    model.eval()
    targets_per_example = max(1, y[:1].numel())
    batch_size = max(1, EVAL_TARGETS_PER_BATCH // targets_per_example)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        with autocast_context(precision, xb.device):
            logits = model(xb)
        loss_sum += cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(dim=-1) == yb).sum().item())
    model.train(was_training)
    return Metrics(loss_sum / y.numel(), correct / y.numel())


def minibatches(num_examples: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Yield the indices of mini-batches, epoch after epoch, without end.

    Each epoch is a new permutation (drawn from ``generator``) cut into mini-batches of
    ``batch_size``; the last one of an epoch may be smaller.
    """
    while True:
        order = torch.randperm(num_examples, generator=generator)
        yield from order.split(batch_size)


def train(
    spec: OptimizerSpec,
    task: Task,
    split: Split,
    steps: int,
    batch_size: int,
    seed: int = DEFAULT_SEED,
    precision: str = "float32",
    device: torch.device | str = "cpu",
    evaluations: int | None = None,
    on_step: Callable[[float], None] | None = None,
    processes: Processes | None = None,
) -> RunResult:
    """Train the task's model with one optimizer for ``steps`` steps and measure it.

    Args:
        spec: The optimizer.
        task: The task (model, what to evaluate).
        split: The data (moved to ``device`` here).
        steps: Number of optimizer steps.
        batch_size: Mini-batch size (see :func:`minibatches`).
        seed: Seeds the initial weights and the mini-batch order.
        precision: ``"float32"`` or ``"bfloat16"`` (autocast of forward pass and loss).
        device: Where to train.
        evaluations: About how many times to evaluate the first evaluation set during
            training (plus once before the first step and once at the end), at least
            :data:`MIN_STEPS_BETWEEN_EVALUATIONS` steps apart; default
            ``task.evaluations``.
        on_step: Called with the mini-batch loss after every step (progress bars).
        processes: The data-parallel processes (each trains on its share of every
            mini-batch, see :mod:`singd_opt_demo.parallel`); default one process.

    Returns:
        The measurements.
    """
    device = torch.device(device)
    split = split.to(device)
    processes = processes or Processes()
    torch.manual_seed(seed)
    model = processes.wrap(task.make_model().to(device))
    optimizer = make_optimizer(spec, model)
    generator = torch.Generator().manual_seed(seed)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    evaluations = task.evaluations if evaluations is None else evaluations
    eval_every = max(steps // max(1, evaluations), min(steps, MIN_STEPS_BETWEEN_EVALUATIONS))
    result = RunResult(spec.label, dict(spec.hyperparameters))

    def record_evaluation(step: int) -> None:
        result.eval_steps.append(step)
        result.eval_metrics.append(evaluate(model, split.x_eval, split.y_eval, precision))

    record_evaluation(0)
    step_times: list[float] = []
    batches = minibatches(len(split.x_train), batch_size, generator)
    for step in range(1, steps + 1):
        # each process trains on its share of the mini-batch (all of it in one process)
        index, weight = processes.share(next(batches).to(device))
        xb, yb = split.x_train[index], split.y_train[index]
        begin = time.perf_counter()
        optimizer.zero_grad()
        with autocast_context(precision, device):
            logits = model(xb)
        loss = cross_entropy(logits, yb)
        (loss * weight if weight != 1.0 else loss).backward()
        optimizer.step()
        scheduler.step()
        loss_value = processes.mean(loss * weight)  # also waits for the device
        step_times.append(time.perf_counter() - begin)
        result.losses.append(loss_value)
        if on_step is not None:
            on_step(loss_value)
        if step % eval_every == 0 and step != steps:
            record_evaluation(step)
    record_evaluation(steps)
    result.final = {split.eval_name: result.eval_metrics[-1]}
    for name, (x, y) in list(split.eval_sets.items())[1:]:
        result.final[name] = evaluate(model, x, y, precision)
    if task.train_loss:
        result.final["train"] = evaluate(model, split.x_train, split.y_train, precision)
    timed = step_times[1:] or step_times
    result.seconds_per_step = sum(timed) / len(timed)
    result.state_bytes = optimizer_state_bytes(optimizer)
    return result
