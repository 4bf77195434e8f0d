"""The ``singd-opt`` command: SINGD against AdamW (and SGD) on bundled data.

Trains one model per optimizer - SINGD with each requested structure, and the
baselines - on one of two tasks (:mod:`singd_opt_demo.tasks`), then prints a table
and writes a PNG figure of the training loss and an evaluation curve over steps:

- ``--task digits`` (the default): the small CNN of :mod:`singd_opt_demo.models` on
  scikit-learn's bundled 8x8 handwritten digits, against AdamW and SGD with
  momentum; the table shows final train loss and test accuracy;
- ``--task lm``: the character-level transformer of :mod:`singd_opt_demo.lm_model` on
  the source of Python's standard library, every parameter trained by SINGD alone,
  against AdamW; the table shows validation and test loss in nats per character.

Both tables end with the wall time per step and the optimizer-state bytes. Splits and
seeds are fixed; nothing is downloaded.

Under ``torchrun --nproc_per_node R -m singd_opt ...`` the same comparison runs with
every mini-batch split over the ``R`` processes (:mod:`singd_opt_demo.parallel`); the
first process prints the table and writes the figure, and the results equal those of
one process up to rounding.

Run ``singd-opt --help`` (or ``python -m singd_opt --help``) for the options. Errors
in the arguments are reported on one line and exit with status 2. An interruption
(Ctrl-C) is reported on one line, after the table and the figure of the runs that
finished; the program then ends by ``SIGINT`` itself, as a program that handles
Ctrl-C should, so that a shell reports status 130 and a calling script stops too.
The demo needs the ``demo`` extra: ``pip install "singd-opt[demo]"``.

The number of threads is left at PyTorch's default. PyTorch's OpenMP threads
busy-wait between parallel regions by default; with the many small kernels of this
demo that makes a run 10 to 70 times slower as soon as another process competes for
the cores. Started as a program (``singd-opt`` or ``python -m singd_opt``), the
command therefore restarts itself once, before training, with
``OMP_WAIT_POLICY=PASSIVE`` unless that variable is already set (OpenMP reads it only
when it is loaded). The results are the same either way.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from singd_opt_demo.interrupt import EXIT_INTERRUPTED, PROG, end_by_sigint, report_interrupt
from singd_opt_demo.tasks import BASELINE_LABELS, TASKS, Task
from singd_opt_demo.training import DEFAULT_SEED

#: Environment variable read by OpenMP when PyTorch loads it (see the module docstring).
WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
DEFAULT_OUT = "singd-opt-output"
#: Modules every task needs.
DEMO_MODULES = ("matplotlib", "tqdm")
DEFAULT_TASK = next(iter(TASKS))


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are a single line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: message`` and exit with status 2."""
        fail(message)


def fail(message: str) -> NoReturn:
    """Print a one-line error to stderr and exit with status 2.

    Args:
        message: What is wrong (newlines are folded into spaces).
    """
    one_line = " ".join(str(message).split())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)
    raise SystemExit(2)


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Print nothing (processes other than the first under ``torchrun``)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def _names(values: Sequence[str]) -> list[str]:
    """Split ``["a,b", "c"]`` into ``["a", "b", "c"]``, dropping blanks and repeats."""
    names: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name and name not in names:
                names.append(name)
    return names


def _count(number: int, noun: str) -> str:
    """``"1 thread"``, ``"2 threads"``: ``number`` and ``noun``, plural unless one."""
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _format_hyperparameters(hyperparameters: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in hyperparameters.items()
    )


def _budget(task: Task) -> str:
    if task.default_epochs is not None:
        return f"{task.default_epochs} epochs"
    return f"{task.default_steps} steps"


def _task_epilog(task: Task) -> str:
    structures = ",".join(task.default_structures)
    baselines = ",".join(task.default_baselines)
    lines = [
        f"--task {task.name}: {task.title}",
        f"  defaults: {_budget(task)} of batch {task.default_batch_size},",
        f"    --structures {structures} --baselines {baselines}",
        f"  hyper-parameters (chosen on a validation split by {task.tuning_script}):",
    ]
    for kind, hyperparameters in task.hyperparameters.items():
        label = "SINGD (every structure)" if kind == "singd" else BASELINE_LABELS[kind]
        text = f"{label}: {_format_hyperparameters(hyperparameters)}"
        lines.append(
            textwrap.fill(text, width=79, initial_indent="    ", subsequent_indent="      ")
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``singd-opt`` command line."""
    parser = _OneLineParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Train a model with SINGD for each structure and with baseline optimizers, "
            "from the same initial weights and mini-batch order, on bundled data: the "
            "digits task (a small CNN on scikit-learn's 8x8 handwritten digits, 1437 "
            "training and 360 test images; against AdamW and SGD with momentum) or the "
            "lm task (a character-level transformer language model on the source of "
            "Python's standard library, split by position into training, validation "
            "and test text; every parameter trained by SINGD alone; against AdamW). "
            "Prints a table (digits: final train loss and test accuracy; lm: validation "
            "and test loss in nats per character and test bits per character; both: "
            "wall time per step and optimizer-state bytes) and writes a PNG figure of "
            "the training loss and the evaluation curve over steps. Runs are "
            "deterministic for a given machine and number of threads.",
            width=79,
        ),
        epilog=(
            "\n\n".join(_task_epilog(task) for task in TASKS.values())
            + "\n\nlr is the peak learning rate of each optimizer, decayed to 0 over the "
            "run by a\ncosine schedule; unlisted arguments keep the constructors' defaults.\n\n"
            "optimizer-state bytes: bytes of every tensor of torch's per-parameter state\n"
            "(momentum buffers, Adam moments) and, for SINGD, of every preconditioner\n"
            "block (factors K, C, their momenta m_K, m_C and cached products K K^T, C C^T;\n"
            "second moments of the element-wise blocks); each storage counted once.\n\n"
            "examples: singd-opt --structures dense,diagonal --epochs 5 --out results\n"
            "          singd-opt --task lm --steps 100"
        ),
    )
    parser.add_argument(
        "--task",
        choices=list(TASKS),
        default=DEFAULT_TASK,
        help=f"what to train (default: {DEFAULT_TASK}; see below)",
    )
    parser.add_argument(
        "--structures",
        nargs="+",
        default=None,
        metavar="NAME",
        help=(
            "SINGD preconditioner structures to compare, separated by commas or spaces "
            "(default: the task's, see below); any key of SINGD.SUPPORTED_STRUCTURES"
        ),
    )
    parser.add_argument(
        "--baselines",
        nargs="+",
        default=None,
        metavar="NAME",
        help=(
            "baseline optimizers to train alongside, or 'none': adamw, sgd (digits), "
            "adamw (lm) (default: all of the task's)"
        ),
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="passes over the training examples per optimizer (default: the task's)",
    )
    budget.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="optimizer steps per optimizer, instead of --epochs (default: the task's)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="mini-batch size, in images or windows of text (default: the task's)",
    )
    parser.add_argument(
        "--precision",
        choices=["float32", "bfloat16"],
        default="float32",
        help=(
            "float32, or bfloat16 autocast of the forward pass (torch.autocast, on CPU "
            "too); parameters and optimizer state stay float32 (default: float32)"
        ),
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda (cuda:N) when a CUDA GPU is available (default: cpu)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(DEFAULT_OUT),
        metavar="DIR",
        help=f"directory for the figure, created if needed (default: ./{DEFAULT_OUT})",
    )
    parser.add_argument(
        "--seed",
        type=_non_negative_int,
        default=DEFAULT_SEED,
        help=f"seed of the initial weights and the mini-batch order (default: {DEFAULT_SEED})",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    return parser


def _check_structures(names: list[str]) -> list[str]:
    from singd_opt_demo.training import available_structures

    valid = available_structures()
    unknown = [name for name in names if name not in valid]
    if unknown:
        fail(
            f"unknown structure {', '.join(map(repr, unknown))} for --structures; "
            f"valid names are: {', '.join(valid)}"
        )
    if not names:
        fail(f"--structures needs at least one name; valid names are: {', '.join(valid)}")
    return names


def _check_baselines(names: list[str], task: Task) -> list[str]:
    if names == ["none"]:
        return []
    unknown = [name for name in names if name not in task.baselines]
    if unknown:
        fail(
            f"unknown baseline {', '.join(map(repr, unknown))} for --baselines with "
            f"--task {task.name}; valid names are: {', '.join(task.baselines)}, none"
        )
    return names


def _check_device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        fail(f"invalid --device {text!r}; use cpu or cuda")
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        fail(f"unsupported --device {text!r}; use cpu or cuda")
    if not torch.cuda.is_available():
        fail(f"--device {text}: CUDA is not available on this machine; use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        fail(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) available")
    return device


def _check_out(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        fail(f"cannot write to output directory {str(out)!r} ({reason})")
    return out


def _import_demo_dependencies(task: Task) -> None:
    for module in (*task.required_modules, *DEMO_MODULES):
        try:
            __import__(module)
        except ImportError:
            fail(
                f"the demo needs {module!r}, which is not installed; "
                'install the demo extra: pip install "singd-opt[demo]"'
            )


def _restart_with_passive_openmp_wait() -> None:
    """Replace this process by ``python -m singd_opt_demo`` with passive OpenMP waiting.

    Does nothing if ``OMP_WAIT_POLICY`` is set (so it restarts at most once) or on
    systems without ``exec``.
    """
    if WAIT_POLICY_VARIABLE in os.environ or os.name != "posix":
        return
    environment = {**os.environ, WAIT_POLICY_VARIABLE: "PASSIVE"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "singd_opt_demo", *sys.argv[1:]], environment)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``singd-opt`` command.

    Args:
        argv: The arguments (without the program name). If ``None``, the command runs
            as a program: it reads ``sys.argv[1:]`` and, once the arguments are
            valid, may restart itself with ``OMP_WAIT_POLICY=PASSIVE`` (see the
            module docstring).

    Returns:
        The exit status, 0 on success. Bad arguments exit with status 2 and a one-line
        message on stderr. An interruption (Ctrl-C) prints a one-line message on
        stderr, after the table and figure of the runs that finished, and returns
        130; as a program (``argv`` is ``None``) the process then ends by ``SIGINT``
        instead, which shells report as status 130.
    """
    try:
        status = _run(argv)
    except KeyboardInterrupt:
        status = report_interrupt("")
    if status == EXIT_INTERRUPTED and argv is None:
        end_by_sigint()
    return status


def _run(argv: Sequence[str] | None) -> int:
    """The command's work (see :func:`main`); interruptions during training handled here."""
    args = build_parser().parse_args(argv)
    task = TASKS[args.task]
    structures = _check_structures(_names(args.structures or task.default_structures))
    baselines = _check_baselines(_names(args.baselines or task.default_baselines), task)
    batch_size = args.batch_size or task.default_batch_size
    device = _check_device(args.device)
    out = _check_out(args.out)
    _import_demo_dependencies(task)
    if argv is None:
        _restart_with_passive_openmp_wait()

    from tqdm import tqdm

    from singd_opt_demo.parallel import start, stop
    from singd_opt_demo.report import format_table, write_figure
    from singd_opt_demo.training import OptimizerSpec, train

    processes = start(device)
    report = print if processes.main else _quiet

    try:
        split = task.load_split()
    except FileNotFoundError as error:
        fail(str(error))
    num_train = len(split.x_train)
    steps = args.steps or task.steps(num_train, batch_size, args.epochs)
    specs = [OptimizerSpec.default(task, "singd", structure) for structure in structures]
    specs += [OptimizerSpec.default(task, kind) for kind in baselines]
    eval_sizes = ", ".join(f"{len(x)} {name}" for name, (x, _) in split.eval_sets.items())
    setting = (
        f"{task.name}: {num_train} train / {eval_sizes} examples, {steps} steps of batch "
        f"{batch_size} ({steps * batch_size / num_train:.2f} epochs), seed {args.seed}, "
        f"{args.precision} on {device}"
    )
    if processes.world_size > 1:
        setting += f", each batch split over {processes.world_size} processes"
    threads = torch.get_num_threads()
    report(f"{setting} (torch {torch.__version__}, {_count(threads, 'thread')})")
    results = []
    interrupted_run: str | None = None
    try:
        for spec in specs:
            with tqdm(
                total=steps,
                desc=spec.label,
                unit="step",
                disable=args.no_progress or not processes.main,
                file=sys.stderr,
                dynamic_ncols=True,
            ) as bar:

                def on_step(loss: float, bar: Any = bar) -> None:
                    bar.update()
                    if bar.n % 10 == 0:
                        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

                results.append(
                    train(
                        spec,
                        task,
                        split,
                        steps=steps,
                        batch_size=batch_size,
                        seed=args.seed,
                        precision=args.precision,
                        device=device,
                        on_step=on_step,
                        processes=processes,
                    )
                )
    except KeyboardInterrupt:
        interrupted_run = specs[len(results)].label if len(results) < len(specs) else ""
    if interrupted_run is None:
        stop(processes)  # after an interruption the other processes may be gone
    if not processes.main:
        return 0 if interrupted_run is None else EXIT_INTERRUPTED
    if interrupted_run is not None:
        finished = f"{len(results)} of {len(specs)} runs finished"
        during = f" during {interrupted_run}" if interrupted_run else ""
        if not results:
            return report_interrupt(f"{during}; no run finished, so no table and no figure")
        report_interrupt(f"{during}; {finished}, their table and figure follow")

    print()
    print(format_table(results, task.columns(list(split.eval_sets))))
    print()
    if task.loss_unit != "nats":
        print(f"Losses are mean cross-entropies in {task.loss_unit}.")
    print(
        f"Hyper-parameters (chosen on a validation split, see {task.tuning_script}; "
        "lr decays to 0 by a cosine schedule):"
    )
    for spec in specs[: len(results)]:
        print(f"  {spec.label}: {_format_hyperparameters(spec.hyperparameters)}")
    print(
        "Optimizer state: bytes of torch's per-parameter state (momentum buffers, Adam "
        "moments) plus, for SINGD, every block's state (K, C, m_K, m_C, cached K K^T, "
        "C C^T; element-wise second moments)."
    )
    figure_path = out / task.figure_name
    write_figure(results, task, split.eval_name, figure_path, setting)
    print(f"Figure written to {figure_path.resolve()}")
    return 0 if interrupted_run is None else EXIT_INTERRUPTED
