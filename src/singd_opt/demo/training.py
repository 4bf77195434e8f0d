"""Optimizers, the training loop and its metrics for the digits demo.

Every run starts from the same initial weights (``torch.manual_seed(seed)`` right
before the model is built) and sees the same mini-batches (a ``torch.Generator``
seeded with ``seed`` shuffles each epoch), so runs differ only by their optimizer.
Every optimizer's learning rate follows the same schedule: a cosine decay from the
tuned value to zero over the run (``torch.optim.lr_scheduler.CosineAnnealingLR``,
stepped after every update), so the final accuracy is not read off at a noisy point.
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

from singd_opt.demo.data import DigitsSplit
from singd_opt.demo.models import make_cnn

#: SINGD structures compared by default.
DEFAULT_STRUCTURES = ("dense", "diagonal", "hierarchical15_15", "triltoeplitz")
#: Baseline optimizers compared by default.
DEFAULT_BASELINES = ("adamw", "sgd")
#: Default number of epochs.
DEFAULT_EPOCHS = 10
#: Default mini-batch size.
DEFAULT_BATCH_SIZE = 32
#: Default seed (initial weights and mini-batch order).
DEFAULT_SEED = 0

#: The (peak) hyper-parameters of each optimizer, chosen by ``benchmarks/demo_tuning.py`` on
#: a validation split carved out of the training split (never on the test split).
#: SINGD uses one setting for every structure; unlisted arguments keep the defaults of
#: ``SINGD`` (momentum 0.9, alpha1 0.5, no weight decay), ``torch.optim.AdamW``
#: (betas (0.9, 0.999), weight decay 0.01) and ``torch.optim.SGD`` (no weight decay).
HYPERPARAMETERS: dict[str, dict[str, float]] = {
    "singd": {"lr": 0.01, "lr_cov": 0.1, "damping": 0.1, "T": 10},
    "adamw": {"lr": 0.01},
    "sgd": {"lr": 0.1, "momentum": 0.9},
}

#: Display names of the baselines.
BASELINE_LABELS = {"adamw": "AdamW", "sgd": "SGD"}


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
    hyperparameters: Mapping[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The name shown in the table and the figure, e.g. ``"SINGD (dense)"``."""
        if self.kind == "singd":
            return f"SINGD ({self.structure})"
        return BASELINE_LABELS.get(self.kind, self.kind)

    @classmethod
    def default(cls, kind: str, structure: str | None = None) -> OptimizerSpec:
        """Return the spec with the tuned :data:`HYPERPARAMETERS` of ``kind``."""
        return cls(kind, structure, dict(HYPERPARAMETERS[kind]))


def make_optimizer(spec: OptimizerSpec, model: nn.Module) -> Optimizer:
    """Build the optimizer described by ``spec`` for ``model``.

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
    """Yield every tensor reachable from ``obj`` through containers and structures."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for value in obj.values():
            yield from _tensors_in(value)
    elif isinstance(obj, (list, tuple, set)):
        for value in obj:
            yield from _tensors_in(value)
    elif callable(getattr(obj, "named_tensors", None)):
        # A structured matrix (a preconditioner factor or its momentum).
        for _, tensor in obj.named_tensors():
            yield from _tensors_in(tensor)


def optimizer_state_bytes(optimizer: Optimizer) -> int:
    """Count the bytes of the optimizer's state.

    Sums the bytes of every tensor reachable from ``optimizer.state_dict()`` except
    its ``param_groups`` (which hold only hyper-parameters): the per-parameter state in
    ``["state"]`` (momentum buffers, Adam's moments and step counters) and, for SINGD,
    the preconditioner factors ``K, C``, their momenta ``m_K, m_C`` and any pending
    curvature accumulators, each through the tensors that store the structured matrix.
    For SINGD it adds the products ``K K^T, C C^T`` that the optimizer caches between
    steps (not part of its ``state_dict``). Each storage is counted once, whole.

    Args:
        optimizer: The optimizer, usually after training.

    Returns:
        The number of bytes.
    """
    state_dict = optimizer.state_dict()
    sources = [value for key, value in state_dict.items() if key != "param_groups"]
    sources.append(getattr(optimizer, "_grams", {}))  # SINGD's cached K K^T, C C^T
    storages: dict[int, int] = {}
    for tensor in _tensors_in(sources):
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        storages[pointer] = max(storages.get(pointer, 0), storage.nbytes())
    return sum(storages.values())


@dataclass
class RunResult:
    """What one training run measured.

    Attributes:
        label: The optimizer's display name.
        hyperparameters: The optimizer's hyper-parameters.
        losses: Training loss of every step's mini-batch.
        eval_steps: Steps (number of updates done) at which the model was evaluated.
        eval_accuracies: Accuracy on the evaluation split at ``eval_steps``.
        final_train_loss: Mean loss on the whole training split after training.
        eval_loss: Mean loss on the evaluation split after training.
        accuracy: Accuracy on the evaluation split after training.
        seconds_per_step: Mean wall time of a training step (forward, backward and
            optimizer step), first step excluded as warm-up.
        state_bytes: :func:`optimizer_state_bytes` after training.
    """

    label: str
    hyperparameters: dict[str, float]
    losses: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_accuracies: list[float] = field(default_factory=list)
    final_train_loss: float = float("nan")
    eval_loss: float = float("nan")
    accuracy: float = float("nan")
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


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, precision: str, batch_size: int = 1024
) -> tuple[float, float]:
    """Return the mean cross-entropy loss and the accuracy of ``model`` on ``(x, y)``."""
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        with autocast_context(precision, xb.device):
            logits = model(xb)
        loss_sum += functional.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == yb).sum().item())
    model.train(was_training)
    return loss_sum / len(x), correct / len(x)


def train(
    spec: OptimizerSpec,
    split: DigitsSplit,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = DEFAULT_SEED,
    precision: str = "float32",
    device: torch.device | str = "cpu",
    evaluations: int = 20,
    on_step: Callable[[float], None] | None = None,
) -> RunResult:
    """Train the demo CNN with one optimizer and measure it.

    Args:
        spec: The optimizer.
        split: The data (moved to ``device`` here).
        epochs: Passes over the training split.
        batch_size: Mini-batch size; the last mini-batch of an epoch may be smaller.
        seed: Seeds the initial weights and the mini-batch order.
        precision: ``"float32"`` or ``"bfloat16"`` (autocast of forward pass and loss).
        device: Where to train.
        evaluations: About how many times to evaluate during training (plus once
            before the first step and once at the end).
        on_step: Called with the mini-batch loss after every step (progress bars).

    Returns:
        The measurements.
    """
    device = torch.device(device)
    split = split.to(device)
    torch.manual_seed(seed)
    model = make_cnn().to(device)
    optimizer = make_optimizer(spec, model)
    generator = torch.Generator().manual_seed(seed)
    num_train = len(split.x_train)
    steps_per_epoch = -(-num_train // batch_size)
    total_steps = epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    eval_every = max(1, total_steps // max(1, evaluations))
    result = RunResult(spec.label, dict(spec.hyperparameters))

    def record_evaluation(step: int) -> None:
        result.eval_loss, accuracy = evaluate(model, split.x_eval, split.y_eval, precision)
        result.eval_steps.append(step)
        result.eval_accuracies.append(accuracy)

    record_evaluation(0)
    step_times: list[float] = []
    step = 0
    for _ in range(epochs):
        order = torch.randperm(num_train, generator=generator).to(device)
        for start in range(0, num_train, batch_size):
            index = order[start : start + batch_size]
            xb, yb = split.x_train[index], split.y_train[index]
            begin = time.perf_counter()
            optimizer.zero_grad()
            with autocast_context(precision, device):
                logits = model(xb)
            loss = functional.cross_entropy(logits.float(), yb)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_value = loss.item()  # also waits for the device
            step_times.append(time.perf_counter() - begin)
            step += 1
            result.losses.append(loss_value)
            if on_step is not None:
                on_step(loss_value)
            if step % eval_every == 0 and step != total_steps:
                record_evaluation(step)
    record_evaluation(step)
    result.accuracy = result.eval_accuracies[-1]
    result.final_train_loss, _ = evaluate(model, split.x_train, split.y_train, precision)
    timed = step_times[1:] or step_times
    result.seconds_per_step = sum(timed) / len(timed)
    result.state_bytes = optimizer_state_bytes(optimizer)
    return result
