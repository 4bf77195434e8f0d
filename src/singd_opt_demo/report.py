"""The demo's results table and figure, for every task."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from singd_opt_demo.tasks import Column, Task
from singd_opt_demo.training import RunResult


def format_bytes(num_bytes: int) -> str:
    """Format a byte count as ``"424.4 KiB"`` (binary prefixes)."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_table(results: Sequence[RunResult], columns: Sequence[Column]) -> str:
    """Render the results as a plain-text table.

    Args:
        results: One result per optimizer.
        columns: The metric columns (see :attr:`Task.columns`); the optimizer's name
            comes first, time per step and optimizer-state bytes last.

    Returns:
        The table, one optimizer per line, without trailing newline.
    """
    header = ("optimizer", *(column.header for column in columns), "time/step", "optimizer state")
    rows = [
        (
            result.label,
            *(column.cell(result.final) for column in columns),
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


def write_figure(
    results: Sequence[RunResult], task: Task, eval_name: str, path: Path, title: str
) -> None:
    """Write the training loss and the evaluation curve over steps as PNG.

    The left panel shows every step's mini-batch loss (faint) and its moving mean;
    the right panel the task's :attr:`~Task.curve` (accuracy or loss) on the first
    evaluation set. One line per optimizer.

    Args:
        results: One result per optimizer.
        task: The task (what the right panel shows).
        eval_name: The name of the evaluation set of the right panel.
        path: The PNG file to write.
        title: The figure's title.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    loss_axes, eval_axes = figure.subplots(1, 2)
    accuracy = task.curve == "accuracy"
    for result in results:
        losses = torch.tensor(result.losses)
        window = max(1, min(20, len(losses) // 10))
        smooth = losses.unfold(0, window, 1).mean(dim=1) if len(losses) >= window else losses
        steps = torch.arange(len(losses) - len(smooth) + 1, len(losses) + 1)
        (line,) = loss_axes.plot(steps.tolist(), smooth.tolist(), label=result.label)
        loss_axes.plot(
            range(1, len(losses) + 1), losses.tolist(), color=line.get_color(), alpha=0.15
        )
        if accuracy:
            values = [100 * metrics.accuracy for metrics in result.eval_metrics]
            last = f"{values[-1]:.1f}%"
        else:
            values = [metrics.loss for metrics in result.eval_metrics]
            last = f"{values[-1]:.3f}"
        eval_axes.plot(
            result.eval_steps,
            values,
            marker="o",
            markersize=3,
            color=line.get_color(),
            label=f"{result.label}: {last}",
        )
    loss_axes.set(
        xlabel="step",
        ylabel=f"mini-batch loss ({task.loss_unit})",
        yscale="log",
        title="Training loss (line: moving mean)",
    )
    if accuracy:
        eval_axes.set(xlabel="step", ylabel=f"{eval_name} accuracy (%)")
        eval_axes.set_ylim(bottom=max(0.0, eval_axes.get_ylim()[0]), top=100)
    else:
        eval_axes.set(xlabel="step", ylabel=f"{eval_name} loss ({task.loss_unit})", yscale="log")
    eval_axes.set_title(f"{eval_name.capitalize()} {task.curve}")
    loss_axes.legend(fontsize="small")
    eval_axes.legend(fontsize="small", loc="lower right" if accuracy else "upper right")
    for axes in (loss_axes, eval_axes):
        axes.grid(alpha=0.3)
    figure.suptitle(title)
    figure.savefig(path, dpi=120)
