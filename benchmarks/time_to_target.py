r"""Steps and wall-clock time to a target test accuracy, per optimizer and workload.

What a user of an optimizer feels is the time to a result, not the cost of one step.
This benchmark trains each workload with each optimizer until the evaluation split
reaches a target score and records how many training steps and how many seconds of
training steps (``zero_grad``, forward, backward, ``step``; evaluation excluded) that
took, on one thread, everything in one process so the ratios to AdamW are measured
side by side.

Protocol:

- **Workloads** (:data:`WORKLOADS`, pluggable through :func:`register_workload`): the
  digits CNN of the ``singd-opt`` demo and an MLP 64-512-512-10 on the same data
  (scikit-learn's bundled 8x8 digits, the fixed split of
  :func:`singd_opt_demo.data.load_split`), mini-batches of 32, constant learning rates.
  Target: 97% accuracy on the 360 test images, evaluated every 5 steps, at most 600
  steps (13 epochs). ``lm``: the demo's character transformer. **Real model families**
  (:mod:`real_architectures`, built from ``transformers`` configs, skipped when it is
  not installed): GPT-2 and Llama decoders on the demo's language-model text (batches
  of 16 windows of 64 characters, a test-loss target), a ViT on the 8x8 digits and a
  ResNet on the digits upsampled to 16x16 (accuracy targets); they run the optimizers
  of :data:`REAL_OPTIMIZERS` unless ``--optimizers`` names others.
- **Optimizers**: SINGD as a user who swaps AdamW for it writes it,
  ``SINGD(model, lr=...)`` (every other argument the installed constructor's default,
  recorded in the JSON); SINGD with each standard structure in two configurations, the
  constructor's defaults (``SINGD_DEFAULTS``) and the recommended fast-adapting one
  (``SINGD_FAST``: ``warm_start=True``, damping 0.01); AdamW; SGD with momentum 0.9;
  and, if the optional ``bench`` extra (heavyball) is installed, SOAP, PSGD-Kron and
  Muon (with AdamW for the non-matrix parameters), run without ``torch.compile``.
  The SINGD configurations are named entries of :data:`SINGD_CONFIGS`; ``--singd
  NAME=JSON`` adds one from the command line.
- **Tuning**, never on the test split: every optimizer's learning rate (and SINGD's
  ``lr_cov``) is chosen from a small grid (:func:`candidates`, printed and stored in the
  JSON) by the mean number of steps to the same target on a validation split carved out
  of the training split (1149 training / 288 validation images), over two tuning seeds
  (100, 101; ``--tuning-seeds 1`` for the first only) that differ from the measurement
  seeds; a run that misses the target counts as twice the step limit, and ties go to
  the smaller wall-clock time. AdamW, SOAP, PSGD-Kron, Muon and ``SINGD(model, lr)``
  choose from the same learning rates (:data:`LR_GRID`).
- **Measurement**: the tuned setting, trained on the whole training split with seeds
  0, 1, 2 (seed-major: every optimizer's seed-0 run, then seed 1, then seed 2, so that
  a changing load on a shared machine affects all optimizers alike); the table gives
  the median steps and seconds to the target (a run that misses it counts as
  infinitely slow, so the median is "not reached" when two of three miss), both
  relative to AdamW's medians, and the mean time per step relative to AdamW's (the
  mean includes SINGD's preconditioner updates, one every ``T`` steps).

Usage::

    python benchmarks/time_to_target.py              # everything (over an hour)
    python benchmarks/time_to_target.py --quick      # smoke test: tiny grid, 1 seed
    python benchmarks/time_to_target.py --workloads digits_mlp --optimizers adamw \\
        singd/diagonal/fast                           # a subset
    python benchmarks/time_to_target.py --tuning-seeds 1 --workloads gpt2_lm \\
        llama_lm vit_digits resnet_digits             # the real architectures
    python benchmarks/time_to_target.py --workloads vit_digits \\
        --singd 'every_step={"T": 1}'                 # one more SINGD configuration

Results go to ``benchmarks/results/time_to_target.json`` (``--output`` to change it);
``docs/examples/plot_10_time_to_target.py`` plots them.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Before torch loads OpenMP: idle threads sleep instead of spinning (shared cores).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The sibling module with the real-architecture models, however this file is loaded.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from torch import Tensor, nn
from torch.nn import functional
from torch.optim import Optimizer

import real_architectures
from singd_opt import SINGD
from singd_opt_demo.data import NUM_CLASSES, load_split
from singd_opt_demo.models import make_cnn
from singd_opt_demo.tasks import LM
from singd_opt_demo.training import evaluate

RESULTS = Path(__file__).resolve().parent / "results" / "time_to_target.json"
MEASUREMENT_SEEDS = (0, 1, 2)
TUNING_SEEDS = (100, 101)
STRUCTURES = ("dense", "diagonal", "block30diagonal", "hierarchical15_15", "triltoeplitz")

#: SINGD's constructor defaults (only ``lr`` and ``lr_cov`` are tuned).
SINGD_DEFAULTS: dict[str, Any] = {}
#: The fast-adapting configuration: factors start at the fixed point of the first
#: curvature (``warm_start``), lr_cov 0.1 (``lr`` and ``damping`` tuned).
SINGD_FAST: dict[str, Any] = {"warm_start": True, "lr_cov": 0.1}
#: Dense SINGD updating its factors at every step (T 1, damping 1e-3, lr_cov 0.1), the
#: step-efficient but expensive setting (``lr`` tuned).
SINGD_EVERY_STEP: dict[str, Any] = {"T": 1, "lr_cov": 0.1}


# ------------------------------------------------------------------ workloads
@dataclass(frozen=True)
class Workload:
    """A model, its data and the target to reach.

    Attributes:
        name: Key in :data:`WORKLOADS` and in the results.
        description: One line for the table and the JSON.
        make_model: Builds the network (called right after ``torch.manual_seed``).
        load_split: ``load_split(validation)`` returns an object with ``x_train,
            y_train, x_eval, y_eval`` (tensors); with ``validation=True`` the evaluation
            part must come out of the training data (tuning never sees the test split).
        target: Score to reach on the evaluation split (higher is better).
        batch_size: Mini-batch size.
        eval_every: Evaluate after every this many steps.
        max_steps: Give up after this many steps.
        loss: ``loss(outputs, targets)``, a mean over the batch.
        score: ``score(model, x, y)``, e.g. accuracy; evaluated in ``eval`` mode.
        singd_options: Extra keyword arguments of SINGD for this workload (for example
            ``loss_average`` of a sequence model).
        target_text: The target in words, for the table.
        optimizers: Keys of the candidates run on this workload when the command line
            names none (``None``: every candidate).
        missing: Returns why the workload cannot run here (a package is missing), or
            ``None``; such a workload is skipped with that note.
    """

    name: str
    description: str
    make_model: Callable[[], nn.Module]
    load_split: Callable[[bool], Any]
    target: float = 0.97
    batch_size: int = 32
    eval_every: int = 5
    max_steps: int = 600
    loss: Callable[[Tensor, Tensor], Tensor] = functional.cross_entropy
    score: Callable[[nn.Module, Tensor, Tensor], float] = field(
        default=lambda model, x, y: evaluate(model, x, y, "float32").accuracy
    )
    singd_options: Mapping[str, Any] = field(default_factory=dict)
    target_text: str = "97% test accuracy"
    optimizers: tuple[str, ...] | None = None
    missing: Callable[[], str | None] = field(default=lambda: None)


WORKLOADS: dict[str, Workload] = {}


def register_workload(workload: Workload) -> Workload:
    """Add ``workload`` to :data:`WORKLOADS` (a later one of the same name replaces it)."""
    WORKLOADS[workload.name] = workload
    return workload


def make_digits_mlp() -> nn.Sequential:
    """MLP 64-512-512-10 with ReLUs on the flattened 8x8 digits (about 300k parameters)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, NUM_CLASSES),
    )


register_workload(
    Workload(
        "digits_cnn",
        "the singd-opt demo CNN (about 14k parameters) on 8x8 digits",
        make_cnn,
        load_split,
    )
)
register_workload(
    Workload("digits_mlp", "MLP 64-512-512-10 on 8x8 digits", make_digits_mlp, load_split)
)

#: Test loss (nats per character) the language model must reach.
LM_TARGET_LOSS = 2.2


def _sequence_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return functional.cross_entropy(logits.flatten(0, -2), targets.flatten())


def _negative_loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return -evaluate(model, x, y, "float32").loss


register_workload(
    Workload(
        "lm",
        f"the singd-opt character transformer ({LM.title}), every parameter by one optimizer",
        LM.make_model,
        LM.load_split,
        target=-LM_TARGET_LOSS,
        max_steps=600,
        loss=_sequence_loss,
        score=_negative_loss,
        singd_options={"loss_average": "batch+sequence"},
        target_text=f"test loss {LM_TARGET_LOSS} nats/char",
    )
)

# ---------------------------------------------------- real model families
#: The optimizers run by default on the real-architecture workloads: the baselines, the
#: peers, SINGD as a user writes it (only ``lr``) and dense SINGD updating its factors
#: at every step (the setting the measurements recommend for layers this narrow).
REAL_OPTIMIZERS = (
    "adamw",
    "sgd",
    "singd/defaults",
    "singd/dense/every_step",
    "soap",
    "psgd_kron",
    "muon",
)
#: Test losses (nats per character) the GPT-2 and Llama decoders must reach.
GPT2_TARGET_LOSS, LLAMA_TARGET_LOSS = 2.7, 2.45
#: Accuracy targets of the ViT and the ResNet.
VIT_TARGET, RESNET_TARGET = 0.75, 0.97
#: Every how many-th evaluation window of the language-model split is evaluated.
LM_EVAL_STRIDE = 4


def _load_lm_strided_eval(validation: bool) -> Any:
    """The language-model split with every :data:`LM_EVAL_STRIDE`-th evaluation window."""
    split = LM.load_split(validation)
    stride = slice(None, None, LM_EVAL_STRIDE)
    return dataclasses.replace(
        split, eval_sets={name: (x[stride], y[stride]) for name, (x, y) in split.eval_sets.items()}
    )


for _name, _model, _make, _target in (
    ("gpt2_lm", "GPT-2", real_architectures.make_gpt2, GPT2_TARGET_LOSS),
    ("llama_lm", "Llama", real_architectures.make_llama, LLAMA_TARGET_LOSS),
):
    register_workload(
        Workload(
            _name,
            f"{_model} decoder (transformers config, tied embeddings), 2 layers of width "
            f"64, on characters of Python's standard library",
            _make,
            _load_lm_strided_eval,
            target=-_target,
            batch_size=16,
            max_steps=300,
            loss=_sequence_loss,
            score=_negative_loss,
            singd_options={"loss_average": "batch+sequence"},
            target_text=f"test loss {_target} nats/char (every {LM_EVAL_STRIDE}th test window)",
            optimizers=REAL_OPTIMIZERS,
            missing=real_architectures.transformers_missing,
        )
    )
register_workload(
    Workload(
        "vit_digits",
        "ViT (transformers config), 2 layers of width 64, patches 2x2, on 8x8 digits",
        real_architectures.make_vit,
        load_split,
        target=VIT_TARGET,
        max_steps=400,
        target_text=f"{VIT_TARGET:.0%} test accuracy",
        optimizers=REAL_OPTIMIZERS,
        missing=real_architectures.transformers_missing,
    )
)
register_workload(
    Workload(
        "resnet_digits",
        "ResNet with basic blocks (transformers config), 16/32/64 channels, on digits "
        "upsampled to 16x16",
        real_architectures.make_resnet,
        real_architectures.load_digits_16,
        target=RESNET_TARGET,
        max_steps=300,
        target_text=f"{RESNET_TARGET:.0%} test accuracy",
        optimizers=REAL_OPTIMIZERS,
        missing=real_architectures.transformers_missing,
    )
)


# ----------------------------------------------------------------- optimizers
@dataclass(frozen=True)
class Candidate:
    """An optimizer configuration and the grid its tuned hyper-parameters come from.

    Attributes:
        key: Identifier, e.g. ``"adamw"`` or ``"singd/dense/fast"``.
        label: Name in the table.
        build: ``build(model, setting, workload)`` returns the optimizer.
        grid: The settings tried on the validation split.
        fixed: Hyper-parameters that are not tuned (recorded in the results).
    """

    key: str
    label: str
    build: Callable[[nn.Module, Mapping[str, Any], Workload], Optimizer]
    grid: Sequence[Mapping[str, Any]]
    fixed: Mapping[str, Any] = field(default_factory=dict)


def _grid(**axes: Iterable[Any]) -> list[dict[str, Any]]:
    settings: list[dict[str, Any]] = [{}]
    for name, values in axes.items():
        settings = [{**s, name: v} for s in settings for v in values]
    return settings


def _singd(options: Mapping[str, Any]) -> Callable[..., Optimizer]:
    def build(model: nn.Module, setting: Mapping[str, Any], workload: Workload) -> Optimizer:
        return SINGD(model, **{**workload.singd_options, **options, **setting})

    return build


def _torch(cls: type[Optimizer], **fixed: Any) -> Callable[..., Optimizer]:
    def build(model: nn.Module, setting: Mapping[str, Any], workload: Workload) -> Optimizer:
        return cls(model.parameters(), **{**fixed, **setting})

    return build


def _heavyball(name: str) -> Callable[..., Optimizer]:
    def build(model: nn.Module, setting: Mapping[str, Any], workload: Workload) -> Optimizer:
        heavyball = import_heavyball()
        return getattr(heavyball, name)(model.parameters(), **setting)

    return build


def import_heavyball() -> Any:
    import heavyball

    heavyball.utils.compile_mode = None
    return heavyball


def heavyball_missing() -> str | None:
    """Return why heavyball cannot be used, or ``None`` if it can."""
    try:
        import_heavyball()
    except Exception as error:  # ImportError, or a broken install
        reason = f"{type(error).__name__}: {error}"
        return f"heavyball unavailable ({reason}); pip install -e '.[bench]'"
    return None


#: The learning rates every Adam-like optimizer chooses from: AdamW, SOAP, PSGD-Kron,
#: Muon+AdamW and SINGD with its constructor's defaults.
LR_GRID = (1e-3, 3e-3, 1e-2, 3e-2)


@dataclass(frozen=True)
class SingdConfig:
    """A named SINGD configuration: what is fixed and what is tuned.

    The optimizer is ``SINGD(model, **workload.singd_options, **options, **setting)``
    for each ``setting`` of ``grid``; every argument not named keeps the constructor's
    default of the installed version.

    Attributes:
        label: Name in the table.
        options: Fixed keyword arguments (``structures`` included, if any).
        grid: The settings tried on the validation split.
    """

    label: str
    options: Mapping[str, Any]
    grid: Sequence[Mapping[str, Any]]


def _standard_singd_configs() -> dict[str, SingdConfig]:
    configs = {
        # What a user who swaps AdamW for SINGD writes: only the learning rate.
        "singd/defaults": SingdConfig("SINGD(model, lr)", {}, _grid(lr=LR_GRID)),
    }
    fast_grid = [
        {"lr": damping * ratio, "damping": damping}
        for damping in (0.01, 0.1)
        for ratio in (0.03, 0.1, 0.3)
    ]
    for structure in STRUCTURES:
        structures = {"structures": (structure, structure)}
        configs[f"singd/{structure}/default"] = SingdConfig(
            f"SINGD {structure} (default)",
            {**structures, **SINGD_DEFAULTS},
            _grid(lr=(1e-4, 3e-4, 1e-3), lr_cov=(0.01, 0.1)),
        )
        configs[f"singd/{structure}/fast"] = SingdConfig(
            f"SINGD {structure} (fast)", {**structures, **SINGD_FAST}, fast_grid
        )
        if structure == "dense":
            configs["singd/dense/every_step"] = SingdConfig(
                "SINGD dense (T=1)",
                {**structures, **SINGD_EVERY_STEP},
                _grid(lr=(1e-4, 3e-4, 1e-3)),
            )
    return configs


#: The SINGD configurations by candidate key. Add one here (or with ``--singd
#: NAME=JSON`` on the command line) to benchmark it beside the others.
SINGD_CONFIGS: dict[str, SingdConfig] = _standard_singd_configs()


def parse_singd_config(text: str) -> tuple[str, SingdConfig]:
    """Parse ``NAME=JSON`` (fixed SINGD keyword arguments) into a configuration.

    The learning rate is tuned over :data:`LR_GRID` unless the JSON fixes ``lr``; a
    JSON list becomes a tuple (for ``structures``).

    Returns:
        The candidate key ``"singd/NAME"`` and the configuration.

    Raises:
        ValueError: If ``text`` has no ``=``, the name is empty or the JSON is not an
            object.
    """
    name, sep, payload = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--singd expects NAME=JSON, e.g. 'graft={{\"T\": 1}}'; got {text!r}")
    options = json.loads(payload)
    if not isinstance(options, dict):
        raise ValueError(f"--singd {name}: the JSON must be an object of keyword arguments")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    grid = [{}] if "lr" in options else _grid(lr=LR_GRID)
    return f"singd/{name}", SingdConfig(f"SINGD {name}", options, grid)


def candidates(
    quick: bool = False, singd_configs: Mapping[str, SingdConfig] | None = None
) -> list[Candidate]:
    """Return every optimizer configuration with its tuning grid.

    Grids (lr is the learning rate of the parameters; SINGD's damping makes its
    useful lr roughly proportional to the damping):

    - AdamW (weight decay 0.01), SOAP, PSGD-Kron, Muon+AdamW and SINGD with only ``lr``
      set: lr in :data:`LR_GRID` {1e-3, 3e-3, 1e-2, 3e-2};
    - SGD, momentum 0.9: lr in {0.03, 0.1, 0.3};
    - SINGD per structure, defaults (damping 1e-3, T 10): lr in {1e-4, 3e-4, 1e-3} x
      lr_cov in {0.01, 0.1};
    - SINGD per structure, fast (warm start, T 10, lr_cov 0.1): damping in {0.01, 0.1} x
      lr / damping in {0.03, 0.1, 0.3};
    - SINGD dense, every step (T 1, damping 1e-3, lr_cov 0.1): lr in {1e-4, 3e-4, 1e-3};
    - further SINGD configurations from ``singd_configs``.

    Args:
        quick: One setting per optimizer and only AdamW, SGD and SINGD (diagonal default
            and fast, and with only ``lr`` set), for a smoke test.
        singd_configs: The SINGD configurations (default :data:`SINGD_CONFIGS`).
    """
    configs = SINGD_CONFIGS if singd_configs is None else singd_configs
    if quick:
        quick_settings = {
            "singd/defaults": {"lr": 3e-3},
            "singd/diagonal/default": {"lr": 3e-4, "lr_cov": 0.1},
            "singd/diagonal/fast": {"lr": 1e-3, "damping": 0.01},
        }
        return [
            Candidate("adamw", "AdamW", _torch(torch.optim.AdamW), [{"lr": 3e-3}]),
            Candidate(
                "sgd",
                "SGD",
                _torch(torch.optim.SGD, momentum=0.9),
                [{"lr": 0.1}],
                {"momentum": 0.9},
            ),
            *(
                Candidate(key, config.label, _singd(config.options), [quick_settings[key]],
                          config.options)
                for key, config in configs.items()
                if key in quick_settings
            ),
        ]
    result = [
        Candidate("adamw", "AdamW", _torch(torch.optim.AdamW), _grid(lr=LR_GRID)),
        Candidate(
            "sgd",
            "SGD",
            _torch(torch.optim.SGD, momentum=0.9),
            _grid(lr=(0.03, 0.1, 0.3)),
            {"momentum": 0.9},
        ),
    ]
    result += [
        Candidate(key, config.label, _singd(config.options), config.grid, config.options)
        for key, config in configs.items()
    ]
    result += [
        Candidate("soap", "SOAP", _heavyball("SOAP"), _grid(lr=LR_GRID)),
        Candidate("psgd_kron", "PSGD-Kron", _heavyball("PSGDKron"), _grid(lr=LR_GRID)),
        Candidate("muon", "Muon+AdamW", _heavyball("MuonAdamW"), _grid(lr=LR_GRID)),
    ]
    return result


HEAVYBALL_KEYS = ("soap", "psgd_kron", "muon")


# ----------------------------------------------------------------------- runs
@dataclass
class Run:
    """One training run to the target.

    Attributes:
        seed: Seeds the initial weights and the mini-batch order.
        steps: Steps until the target was reached, ``None`` if it was not.
        steps_run: Steps run (``steps`` if reached, else up to the limit or divergence).
        seconds: Time of the ``steps_run`` training steps.
        seconds_per_step: ``seconds / steps_run``, the mean, which spreads the cost of
            SINGD's preconditioner updates (every ``T`` steps) over all steps.
        score: The last evaluation's score.
        diverged: The loss became non-finite.
    """

    seed: int
    steps: int | None
    steps_run: int
    seconds: float
    seconds_per_step: float
    score: float
    diverged: bool = False


def run_to_target(
    workload: Workload,
    split: Any,
    build: Callable[[nn.Module], Optimizer],
    seed: int,
    max_steps: int | None = None,
) -> Run:
    """Train until the evaluation split reaches ``workload.target``.

    Args:
        workload: The model, loss, score, target and schedule of evaluations.
        split: Data from ``workload.load_split``.
        build: Returns the optimizer for the freshly built model.
        seed: Seeds the model's initial weights and the mini-batch order.
        max_steps: Step limit (default ``workload.max_steps``).

    Returns:
        The run's measurements.
    """
    limit = workload.max_steps if max_steps is None else max_steps
    torch.manual_seed(seed)
    model = workload.make_model()
    optimizer = build(model)
    generator = torch.Generator().manual_seed(seed)
    x, y = split.x_train, split.y_train
    step_times: list[float] = []
    score = float("nan")
    while len(step_times) < limit:
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), workload.batch_size):
            index = order[start : start + workload.batch_size]
            xb, yb = x[index], y[index]
            begin = time.perf_counter()
            optimizer.zero_grad()
            loss = workload.loss(model(xb), yb)
            loss.backward()
            optimizer.step()
            value = loss.item()
            step_times.append(time.perf_counter() - begin)
            steps = len(step_times)
            if not math.isfinite(value):
                return _finished(seed, None, step_times, score, diverged=True)
            if steps % workload.eval_every == 0 or steps == limit:
                score = workload.score(model, split.x_eval, split.y_eval)
                if score >= workload.target:
                    return _finished(seed, steps, step_times, score)
            if steps == limit:
                break
    return _finished(seed, None, step_times, score)


def _finished(
    seed: int, steps: int | None, step_times: list[float], score: float, diverged: bool = False
) -> Run:
    seconds = sum(step_times)
    return Run(seed, steps, len(step_times), seconds, seconds / len(step_times), score, diverged)


def median_or_none(values: Sequence[float | None]) -> float | None:
    """Median where ``None`` (target missed) counts as infinitely slow; ``None`` if so."""
    ordered = sorted(math.inf if v is None else v for v in values)
    middle = statistics.median(ordered) if ordered else math.inf
    return None if math.isinf(middle) else middle


# --------------------------------------------------------------------- tuning
def tune(
    workload: Workload,
    candidate: Candidate,
    split: Any,
    seeds: Sequence[int],
    log: Callable[[str], None],
) -> tuple[Mapping[str, Any], list[dict[str, Any]]]:
    """Pick the setting of ``candidate.grid`` with the fewest mean steps on ``split``.

    A missed target counts as ``2 * workload.max_steps`` steps; ties go to the smaller
    total time.

    Returns:
        The chosen setting and one record per setting.
    """
    records = []
    for setting in candidate.grid:
        runs = [
            run_to_target(workload, split, _builder(candidate, setting, workload), seed)
            for seed in seeds
        ]
        penalty = 2 * workload.max_steps
        mean_steps = statistics.mean(penalty if r.steps is None else r.steps for r in runs)
        seconds = sum(r.seconds for r in runs)
        records.append(
            {
                "setting": dict(setting),
                "steps": [r.steps for r in runs],
                "mean_steps": mean_steps,
                "seconds": seconds,
            }
        )
        log(f"    {_format(setting):<26} steps {[r.steps for r in runs]}")
    best = min(records, key=lambda r: (r["mean_steps"], r["seconds"]))
    return best["setting"], records


def _builder(
    candidate: Candidate, setting: Mapping[str, Any], workload: Workload
) -> Callable[[nn.Module], Optimizer]:
    return lambda model: candidate.build(model, setting, workload)


def _format(setting: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in setting.items()
    )


# ---------------------------------------------------------------------- main
def benchmark(
    workload_names: Sequence[str],
    candidate_list: Sequence[Candidate],
    measurement_seeds: Sequence[int],
    tuning_seeds: Sequence[int],
    log: Callable[[str], None] = print,
    max_steps: int | None = None,
    select: Callable[[Workload, Candidate], bool] | None = None,
) -> dict[str, Any]:
    """Tune and measure every candidate on every workload; return the results dict.

    ``select(workload, candidate)`` (default: always) says which candidates run on which
    workload.
    """
    results: dict[str, Any] = {}
    for name in workload_names:
        workload = WORKLOADS[name]
        if max_steps is not None:
            workload = dataclasses.replace(workload, max_steps=max_steps)
        validation, test = workload.load_split(True), workload.load_split(False)
        log(f"\n== {name}: {workload.description}")
        chosen: dict[str, tuple[Candidate, Mapping[str, Any], list[dict[str, Any]]]] = {}
        for candidate in candidate_list:
            if select is not None and not select(workload, candidate):
                continue
            log(f"  {candidate.label}: tuning on the validation split")
            setting, records = tune(workload, candidate, validation, tuning_seeds, log)
            chosen[candidate.key] = (candidate, setting, records)
            log(f"  -> {_format(setting)}")
        # Seed-major order: every optimizer's seed-0 run, then seed 1, ..., so that a
        # changing load on a shared machine affects all optimizers alike.
        log("  measuring on the test split")
        runs: dict[str, list[Run]] = {key: [] for key in chosen}
        for seed in measurement_seeds:
            for key, (candidate, setting, _) in chosen.items():
                run = run_to_target(workload, test, _builder(candidate, setting, workload), seed)
                runs[key].append(run)
                log(
                    f"    seed {seed} {candidate.label:<32} steps {run.steps} ({run.seconds:.2f} s)"
                )
        rows: dict[str, Any] = {}
        for key, (candidate, setting, records) in chosen.items():
            rows[key] = {
                "label": candidate.label,
                "fixed": dict(candidate.fixed),
                "setting": dict(setting),
                "tuning": records,
                "runs": [vars(r) for r in runs[key]],
                "median_steps": median_or_none([r.steps for r in runs[key]]),
                "median_seconds": median_or_none(
                    [r.seconds if r.steps is not None else None for r in runs[key]]
                ),
                "median_seconds_per_step": statistics.median(r.seconds_per_step for r in runs[key]),
            }
        _add_ratios(rows)
        results[name] = {
            "description": workload.description,
            "target": workload.target,
            "target_text": workload.target_text,
            "eval_every": workload.eval_every,
            "max_steps": workload.max_steps,
            "batch_size": workload.batch_size,
            "singd_options": dict(workload.singd_options),
            "optimizers": rows,
        }
    return results


def _add_ratios(rows: dict[str, Any]) -> None:
    adamw = rows.get("adamw")
    for row in rows.values():
        for key in ("steps", "seconds", "seconds_per_step"):
            mine = row[f"median_{key}"]
            base = adamw[f"median_{key}"] if adamw else None
            row[f"{key}_vs_adamw"] = mine / base if mine is not None and base else None


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(results: Mapping[str, Any]) -> str:
    """Format the results as a Markdown table per workload."""
    lines = []
    for name, workload in results.items():
        lines.append(
            f"\n{name} ({workload['description']}): target {workload['target_text']}, "
            f"evaluated every {workload['eval_every']} steps, at most "
            f"{workload['max_steps']} steps"
        )
        lines.append(
            "| optimizer | tuned | steps (seeds) | median steps | vs AdamW | seconds | vs AdamW "
            "| step time vs AdamW |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for row in workload["optimizers"].values():
            if "skipped" in row:
                lines.append(f"| {row['label']} | skipped: {row['skipped']} |||||||")
                continue
            steps = "/".join("-" if r["steps"] is None else str(r["steps"]) for r in row["runs"])
            median = row["median_steps"]
            lines.append(
                f"| {row['label']} | {_format(row['setting'])} | {steps} | "
                f"{'not reached' if median is None else f'{median:g}'} | "
                f"{_ratio(row['steps_vs_adamw'])} | {_seconds(row['median_seconds'])} | "
                f"{_ratio(row['seconds_vs_adamw'])} | {_ratio(row['seconds_per_step_vs_adamw'])} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark from the command line; return the results written."""
    global LR_GRID  # --lr-grid replaces the shared grid for this run
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny grid, 1 seed")
    parser.add_argument("--workloads", nargs="+", default=None, choices=sorted(WORKLOADS))
    parser.add_argument(
        "--optimizers",
        nargs="+",
        default=None,
        help="candidate keys (default: each workload's own list, or every candidate)",
    )
    parser.add_argument(
        "--singd",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="add SINGD with these fixed keyword arguments as candidate singd/NAME "
        "(lr tuned over the shared grid unless given); repeatable",
    )
    parser.add_argument(
        "--lr-grid",
        type=float,
        nargs="+",
        default=None,
        help=f"the shared learning-rate grid (default {' '.join(map(str, LR_GRID))})",
    )
    parser.add_argument("--tuning-seeds", type=int, default=len(TUNING_SEEDS))
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not 1 <= args.tuning_seeds <= len(TUNING_SEEDS):
        parser.error(f"--tuning-seeds must be 1 to {len(TUNING_SEEDS)}, got {args.tuning_seeds}")
    torch.set_num_threads(args.threads)

    configs = dict(SINGD_CONFIGS)
    if args.lr_grid:
        LR_GRID = tuple(args.lr_grid)
        configs["singd/defaults"] = dataclasses.replace(
            configs["singd/defaults"], grid=_grid(lr=LR_GRID)
        )
    added = []
    for text in args.singd:
        try:
            key, config = parse_singd_config(text)
        except ValueError as error:
            parser.error(str(error))
        configs[key] = config
        added.append(key)
    all_candidates = candidates(args.quick, configs)
    known = [c.key for c in all_candidates]
    if args.optimizers is not None:
        unknown = sorted(set(args.optimizers) - set(known))
        if unknown:
            parser.error(f"unknown optimizers {unknown}; choose from {known}")
        all_candidates = [c for c in all_candidates if c.key in args.optimizers + added]
    missing = heavyball_missing() if any(c.key in HEAVYBALL_KEYS for c in all_candidates) else None
    if missing:
        print(f"skipping SOAP, PSGD-Kron and Muon: {missing}")
    usable = [c for c in all_candidates if not (missing and c.key in HEAVYBALL_KEYS)]

    def select(workload: Workload, candidate: Candidate) -> bool:
        if args.quick or args.optimizers is not None or workload.optimizers is None:
            return True
        return candidate.key in workload.optimizers or candidate.key in added

    workloads = []
    for name in args.workloads or sorted(WORKLOADS):
        reason = WORKLOADS[name].missing()
        if reason:
            print(f"skipping workload {name}: {reason}")
        else:
            workloads.append(name)
    measurement_seeds = MEASUREMENT_SEEDS[:1] if args.quick else MEASUREMENT_SEEDS
    tuning_seeds = TUNING_SEEDS[: 1 if args.quick else args.tuning_seeds]
    start = time.perf_counter()
    load_start = [round(x, 2) for x in os.getloadavg()]
    with warnings.catch_warnings():
        # Diverging settings warn about non-finite curvature; they count as misses.
        warnings.simplefilter("ignore")
        results = benchmark(
            workloads,
            usable,
            measurement_seeds,
            tuning_seeds,
            max_steps=20 if args.quick else None,
            select=select,
        )
    if missing:
        for name, workload in results.items():
            for candidate in all_candidates:
                if candidate.key in HEAVYBALL_KEYS and select(WORKLOADS[name], candidate):
                    workload["optimizers"][candidate.key] = {
                        "label": candidate.label,
                        "skipped": missing,
                    }
    elapsed = time.perf_counter() - start
    data = {
        "meta": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "heavyball": _version("heavyball"),
            "transformers": _version("transformers"),
            "singd_constructor_defaults": singd_constructor_defaults(),
            "quick": args.quick,
            "measurement_seeds": list(measurement_seeds),
            "tuning_seeds": list(tuning_seeds),
            "grids": {c.key: [dict(s) for s in c.grid] for c in all_candidates},
            "seconds_total": round(elapsed, 1),
            "load_average_at_start": load_start,
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%d"),
        },
        "results": results,
    }
    print(table(results))
    print(f"\ntotal {elapsed:.0f} s; writing {args.output}")
    if args.output.exists() and not args.quick:
        # keep the results of workloads not run this time (with the meta of their run)
        previous = json.loads(args.output.read_text())
        for name, earlier in previous.get("results", {}).items():
            if name not in results:
                data["results"][name] = earlier
                data.setdefault("earlier_runs", {})[name] = previous.get("meta")
        for name, meta in previous.get("earlier_runs", {}).items():
            if name not in results:
                data.setdefault("earlier_runs", {})[name] = meta
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(data, indent=1, default=_json_default) + "\n")
    return data


def singd_constructor_defaults() -> dict[str, str]:
    """The default of every keyword argument of the installed ``SINGD`` (as ``repr``)."""
    return {
        name: repr(parameter.default)
        for name, parameter in inspect.signature(SINGD).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }


def _version(package: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:
        return None


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


if __name__ == "__main__":
    main()
