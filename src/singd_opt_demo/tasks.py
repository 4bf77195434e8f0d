"""The demo's tasks: what is trained, on which data, with which tuned hyper-parameters.

- ``digits`` (the default): the small CNN of :mod:`~singd_opt_demo.models` on
  scikit-learn's bundled 8x8 digits (:mod:`~singd_opt_demo.data`), 10 epochs, compared by
  test accuracy; SINGD against AdamW and SGD.
- ``lm``: the character-level transformer of :mod:`~singd_opt_demo.lm_model` on the
  source of Python's standard library (:mod:`~singd_opt_demo.lm_data`), 300 steps,
  compared by validation and test loss in nats per character; SINGD (training every
  parameter, :class:`singd_opt.SINGD` with ``params=None``) against AdamW.

The hyper-parameters were chosen on validation splits, never on the test split, by
``benchmarks/demo_tuning.py`` (``--task lm`` for the language model). Unlisted
arguments of SINGD keep the reference's defaults (``defaults="reference"``, under which
they were tuned: momentum 0.9, alpha1 0.5, no weight decay, dense factors, absolute
damping; every parameter trained), ``torch.optim.AdamW`` (betas (0.9, 0.999), weight decay 0.01) and
``torch.optim.SGD`` (no weight decay). Every learning rate decays from the listed
value to zero over the run (cosine schedule).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from singd_opt_demo import data, lm_data
from singd_opt_demo.lm_model import make_char_transformer
from singd_opt_demo.models import make_cnn
from singd_opt_demo.split import Metrics, Split

#: Display names of the baselines.
BASELINE_LABELS = {"adamw": "AdamW", "sgd": "SGD"}

#: Tuned hyper-parameters of the digits task (``benchmarks/demo_tuning.py``). SINGD uses
#: one setting for every structure.
DIGITS_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "singd": {
        "lr": 0.01,
        "lr_cov": 0.1,
        "damping": 0.1,
        "T": 10,
        "defaults": "reference",
        "train_all_parameters": True,
    },
    "adamw": {"lr": 0.01},
    "sgd": {"lr": 0.1, "momentum": 0.9},
}

#: Tuned hyper-parameters of the language-model task (``benchmarks/demo_tuning.py --task
#: lm``: 12 settings per optimizer, validation loss after 300 steps; the scores are in
#: ``benchmarks/results/demo_tuning_lm.txt``). SINGD uses one setting for every
#: structure; ``elementwise_lr`` is the learning rate of its element-wise blocks
#: (position embedding, layer norms); ``loss_average="batch+sequence"`` is not tuned but
#: states how the loss averages (over windows and positions).
LM_HYPERPARAMETERS: dict[str, dict[str, Any]] = {
    "singd": {
        "lr": 0.01,
        "damping": 0.001,
        "elementwise_lr": 0.002,
        "lr_cov": 0.1,
        "T": 10,
        "loss_average": "batch+sequence",
        "defaults": "reference",
        "train_all_parameters": True,
    },
    "adamw": {"lr": 0.02, "betas": (0.9, 0.99)},
}


@dataclass(frozen=True)
class Column:
    """One metric column of the results table.

    Attributes:
        header: The column's header.
        cell: Formats the column's cell from the final metrics by set name
            (``RunResult.final``).
    """

    header: str
    cell: Callable[[Mapping[str, Metrics]], str]


@dataclass(frozen=True)
class Task:
    """A training task of the demo.

    Attributes:
        name: The value of ``--task``.
        title: One line describing model and data.
        load_split: Returns the data; with ``validation=True`` only the validation
            set is returned for evaluation (for tuning).
        make_model: Builds the model (seed ``torch`` first).
        hyperparameters: Tuned constructor arguments by optimizer kind (``"singd"``
            and the baselines this task supports).
        default_structures: SINGD structures compared by default.
        default_baselines: Baselines compared by default.
        default_batch_size: Mini-batch size (examples: images or windows).
        default_epochs: The default budget in passes over the training examples
            (``None`` if it is given in steps).
        default_steps: The default budget in steps (``None`` if given in epochs).
        evaluations: About how many times the first evaluation set is evaluated
            during training (for the figure).
        train_loss: Whether to evaluate the loss on the whole training set at the end.
        curve: ``"accuracy"`` or ``"loss"``: what the figure shows over the steps.
        loss_unit: The unit of the loss (per target).
        tuning_script: The script that chose :attr:`hyperparameters`.
        figure_name: File name of the figure.
        required_modules: Modules the task needs besides the demo's own.
        columns: Builds the table's metric columns from the evaluation-set names.
    """

    name: str
    title: str
    load_split: Callable[..., Split]
    make_model: Callable[[], nn.Module]
    hyperparameters: Mapping[str, Mapping[str, Any]]
    default_structures: tuple[str, ...]
    default_baselines: tuple[str, ...]
    default_batch_size: int
    default_epochs: int | None
    default_steps: int | None
    evaluations: int
    train_loss: bool
    curve: str
    loss_unit: str
    tuning_script: str
    figure_name: str
    required_modules: tuple[str, ...]
    columns: Callable[[Sequence[str]], list[Column]]

    @property
    def baselines(self) -> tuple[str, ...]:
        """The baselines with tuned hyper-parameters for this task."""
        return tuple(kind for kind in BASELINE_LABELS if kind in self.hyperparameters)

    def steps(self, num_train: int, batch_size: int, epochs: int | None = None) -> int:
        """Return the step budget: ``epochs`` (or the default budget) at ``batch_size``.

        Args:
            num_train: Number of training examples.
            batch_size: Mini-batch size (the last mini-batch of an epoch may be smaller).
            epochs: Passes over the training examples; ``None`` for the default budget.
        """
        epochs = self.default_epochs if epochs is None else epochs
        if epochs is not None:
            return epochs * -(-num_train // batch_size)
        assert self.default_steps is not None, "a task has a default budget"
        return self.default_steps


def _digits_columns(eval_names: Sequence[str]) -> list[Column]:
    return [
        Column("final train loss", lambda final: f"{final['train'].loss:.4f}"),
        *(
            Column(
                f"{name} accuracy", lambda final, name=name: f"{100 * final[name].accuracy:.2f}%"
            )
            for name in eval_names
        ),
    ]


def _lm_columns(eval_names: Sequence[str]) -> list[Column]:
    columns = [
        Column(f"{name} loss", lambda final, name=name: f"{final[name].loss:.4f}")
        for name in eval_names
    ]
    last = eval_names[-1]
    columns.append(
        Column(f"{last} bits/char", lambda final: f"{final[last].loss / math.log(2):.4f}")
    )
    return columns


DIGITS = Task(
    name="digits",
    title="a small CNN on scikit-learn's bundled 8x8 digits",
    load_split=data.load_split,
    make_model=make_cnn,
    hyperparameters=DIGITS_HYPERPARAMETERS,
    default_structures=("dense", "diagonal", "hierarchical15_15", "triltoeplitz"),
    default_baselines=("adamw", "sgd"),
    default_batch_size=32,
    default_epochs=10,
    default_steps=None,
    evaluations=20,
    train_loss=True,
    curve="accuracy",
    loss_unit="nats",
    tuning_script="benchmarks/demo_tuning.py",
    figure_name="singd_opt_digits.png",
    required_modules=("sklearn",),
    columns=_digits_columns,
)

LM = Task(
    name="lm",
    title="a character-level transformer on the source of Python's standard library",
    load_split=lm_data.load_split,
    make_model=make_char_transformer,
    hyperparameters=LM_HYPERPARAMETERS,
    default_structures=("dense", "diagonal", "hierarchical15_15"),
    default_baselines=("adamw",),
    default_batch_size=32,
    default_epochs=None,
    default_steps=300,
    evaluations=8,
    train_loss=False,
    curve="loss",
    loss_unit="nats/char",
    tuning_script="benchmarks/demo_tuning.py --task lm",
    figure_name="singd_opt_lm.png",
    required_modules=(),
    columns=_lm_columns,
)

#: The tasks by name; the first is the default.
TASKS: dict[str, Task] = {task.name: task for task in (DIGITS, LM)}
