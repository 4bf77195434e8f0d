"""The ``singd-opt`` command: SINGD against AdamW and SGD on bundled digits.

Trains the small CNN of :mod:`singd_opt.demo.models` on scikit-learn's bundled 8x8
handwritten digits (fixed split and seed, nothing downloaded) once per optimizer -
SINGD with each requested structure, AdamW and SGD with momentum - then prints a
table (final train loss, test accuracy, wall time per step, optimizer-state bytes)
and writes a PNG figure of loss and test accuracy over steps.

Run ``singd-opt --help`` (or ``python -m singd_opt --help``) for the options. Errors
in the arguments are reported on one line and exit with status 2. The demo needs
the ``demo`` extra: ``pip install "singd-opt[demo]"``.

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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import torch

from singd_opt.demo.training import (
    BASELINE_LABELS,
    DEFAULT_BASELINES,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_SEED,
    DEFAULT_STRUCTURES,
    HYPERPARAMETERS,
)

if TYPE_CHECKING:
    from singd_opt.demo.training import RunResult

PROG = "singd-opt"
#: Environment variable read by OpenMP when PyTorch loads it (see the module docstring).
WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
#: File name of the figure inside ``--out``.
FIGURE_NAME = "singd_opt_digits.png"
DEFAULT_OUT = "singd-opt-output"
DEMO_MODULES = ("sklearn", "matplotlib", "tqdm")


class UsageError(Exception):
    """A problem with the command line, reported on one line with exit status 2."""


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


def _format_hyperparameters(hyperparameters: dict[str, float]) -> str:
    return ", ".join(f"{key}={value:g}" for key, value in hyperparameters.items())


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of the ``singd-opt`` command line."""
    hyperparameter_lines = "\n".join(
        f"  {label}: {_format_hyperparameters(HYPERPARAMETERS[kind])}"
        for kind, label in [("singd", "SINGD (every structure)"), *BASELINE_LABELS.items()]
    )
    parser = _OneLineParser(
        prog=PROG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "Train a small CNN on scikit-learn's bundled 8x8 handwritten digits "
            "(1437 training and 360 test images, fixed split) with SINGD for each "
            "structure, AdamW and SGD with momentum, from the same initial weights and "
            "mini-batch order. Prints a table of final train loss, test accuracy, wall "
            "time per step and optimizer-state bytes, and writes a PNG figure of loss "
            "and test accuracy over steps. Runs are deterministic for a given machine "
            "and number of threads.",
            width=79,
        ),
        epilog=(
            "hyper-parameters (chosen on a validation split carved out of the training\n"
            "split by benchmarks/demo_tuning.py; lr is the peak learning rate, decayed to 0\n"
            "over the run by a cosine schedule):\n"
            f"{hyperparameter_lines}\n\n"
            "optimizer-state bytes: bytes of every tensor in optimizer.state_dict() except\n"
            "param_groups (momentum buffers, Adam moments; for SINGD also the\n"
            "preconditioner factors K, C and their momenta m_K, m_C) plus SINGD's cached\n"
            "products K K^T, C C^T; each storage counted once.\n\n"
            "example: singd-opt --structures dense,diagonal --epochs 5 --out results"
        ),
    )
    parser.add_argument(
        "--structures",
        nargs="+",
        default=list(DEFAULT_STRUCTURES),
        metavar="NAME",
        help=(
            "SINGD preconditioner structures to compare, separated by commas or spaces "
            f"(default: {','.join(DEFAULT_STRUCTURES)}); any key of "
            "SINGD.SUPPORTED_STRUCTURES"
        ),
    )
    parser.add_argument(
        "--baselines",
        nargs="+",
        default=list(DEFAULT_BASELINES),
        metavar="NAME",
        help=(
            "baseline optimizers to train alongside, from adamw, sgd, or 'none' "
            f"(default: {','.join(DEFAULT_BASELINES)})"
        ),
    )
    parser.add_argument(
        "--epochs",
        type=_positive_int,
        default=DEFAULT_EPOCHS,
        help=f"passes over the training split per optimizer (default: {DEFAULT_EPOCHS})",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"mini-batch size (default: {DEFAULT_BATCH_SIZE})",
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
    from singd_opt.demo.training import available_structures

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


def _check_baselines(names: list[str]) -> list[str]:
    if names == ["none"]:
        return []
    unknown = [name for name in names if name not in BASELINE_LABELS]
    if unknown:
        fail(
            f"unknown baseline {', '.join(map(repr, unknown))} for --baselines; "
            f"valid names are: {', '.join(BASELINE_LABELS)}, none"
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


def _import_demo_dependencies() -> None:
    for module in DEMO_MODULES:
        try:
            __import__(module)
        except ImportError:
            fail(
                f"the demo needs {module!r}, which is not installed; "
                'install the demo extra: pip install "singd-opt[demo]"'
            )


def format_bytes(num_bytes: int) -> str:
    """Format a byte count as ``"424.4 KiB"`` (binary prefixes)."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_table(results: Sequence[RunResult], eval_name: str = "test") -> str:
    """Render the results as a plain-text table.

    Args:
        results: One result per optimizer.
        eval_name: Name of the evaluation split, for the accuracy column's header.

    Returns:
        The table, one optimizer per line, without trailing newline.
    """
    header = (
        "optimizer",
        "final train loss",
        f"{eval_name} accuracy",
        "time/step",
        "optimizer state",
    )
    rows = [
        (
            result.label,
            f"{result.final_train_loss:.4f}",
            f"{100 * result.accuracy:.2f}%",
            f"{1e3 * result.seconds_per_step:.2f} ms",
            f"{result.state_bytes:,} B ({format_bytes(result.state_bytes)})",
        )
        for result in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def write_figure(results: Sequence[RunResult], path: Path, title: str) -> None:
    """Write loss and test accuracy over steps, one line per optimizer, as PNG.

    Args:
        results: One result per optimizer.
        path: The PNG file to write.
        title: The figure's title.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for result in results:
        losses = torch.tensor(result.losses)
        window = max(1, min(20, len(losses) // 10))
        smooth = losses.unfold(0, window, 1).mean(dim=1) if len(losses) >= window else losses
        steps = torch.arange(len(losses) - len(smooth) + 1, len(losses) + 1)
        (line,) = loss_axes.plot(steps.tolist(), smooth.tolist(), label=result.label)
        loss_axes.plot(
            range(1, len(losses) + 1), losses.tolist(), color=line.get_color(), alpha=0.15
        )
        accuracy_axes.plot(
            result.eval_steps,
            [100 * accuracy for accuracy in result.eval_accuracies],
            marker="o",
            markersize=3,
            color=line.get_color(),
            label=f"{result.label}: {100 * result.accuracy:.1f}%",
        )
    loss_axes.set(
        xlabel="step",
        ylabel="training loss (mini-batch; line: moving mean)",
        yscale="log",
        title="Training loss",
    )
    accuracy_axes.set(xlabel="step", ylabel="test accuracy (%)", title="Test accuracy")
    accuracy_axes.set_ylim(bottom=max(0.0, accuracy_axes.get_ylim()[0]), top=100)
    loss_axes.legend(fontsize="small")
    accuracy_axes.legend(fontsize="small", loc="lower right")
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.savefig(path, dpi=120)


def _restart_with_passive_openmp_wait() -> None:
    """Replace this process by ``python -m singd_opt`` with passive OpenMP waiting.

    Does nothing if ``OMP_WAIT_POLICY`` is set (so it restarts at most once) or on
    systems without ``exec``.
    """
    if WAIT_POLICY_VARIABLE in os.environ or os.name != "posix":
        return
    environment = {**os.environ, WAIT_POLICY_VARIABLE: "PASSIVE"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "singd_opt", *sys.argv[1:]], environment)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``singd-opt`` command.

    Args:
        argv: The arguments (without the program name). If ``None``, the command runs
            as a program: it reads ``sys.argv[1:]`` and, once the arguments are
            valid, may restart itself with ``OMP_WAIT_POLICY=PASSIVE`` (see the
            module docstring).

    Returns:
        The exit status, 0 on success. Bad arguments exit with status 2 and a one-line
        message on stderr.
    """
    args = build_parser().parse_args(argv)
    structures = _check_structures(_names(args.structures))
    baselines = _check_baselines(_names(args.baselines))
    device = _check_device(args.device)
    out = _check_out(args.out)
    _import_demo_dependencies()
    if argv is None:
        _restart_with_passive_openmp_wait()

    from tqdm import tqdm

    from singd_opt.demo.data import load_split
    from singd_opt.demo.training import OptimizerSpec, train

    split = load_split()
    specs = [OptimizerSpec.default("singd", structure) for structure in structures]
    specs += [OptimizerSpec.default(kind) for kind in baselines]
    steps_per_epoch = -(-len(split.x_train) // args.batch_size)
    setting = (
        f"digits: {len(split.x_train)} train / {len(split.x_eval)} test images, "
        f"{args.epochs} epochs x {steps_per_epoch} steps of batch {args.batch_size}, "
        f"seed {args.seed}, {args.precision} on {device}"
    )
    print(f"{setting} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    results = []
    for spec in specs:
        with tqdm(
            total=args.epochs * steps_per_epoch,
            desc=spec.label,
            unit="step",
            disable=args.no_progress,
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
                    split,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    seed=args.seed,
                    precision=args.precision,
                    device=device,
                    on_step=on_step,
                )
            )

    print()
    print(format_table(results, split.eval_name))
    print()
    print(
        "Hyper-parameters (chosen on a validation split carved out of the training split, "
        "see benchmarks/demo_tuning.py; lr decays to 0 by a cosine schedule):"
    )
    for spec in specs:
        print(f"  {spec.label}: {_format_hyperparameters(dict(spec.hyperparameters))}")
    print(
        "Optimizer state: bytes of every tensor in optimizer.state_dict() except "
        "param_groups (for SINGD: K, C, m_K, m_C) plus SINGD's cached K K^T, C C^T."
    )
    figure_path = out / FIGURE_NAME
    write_figure(results, figure_path, setting)
    print(f"Figure written to {figure_path.resolve()}")
    return 0
