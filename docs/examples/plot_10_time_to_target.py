"""
Time to a target accuracy
=========================

``benchmarks/time_to_target.py`` trains each workload (the digits CNN and an MLP, the
character transformer of ``singd-opt --task lm``, and GPT-2, Llama, ViT and ResNet
models built from ``transformers`` configs) with every optimizer until the test score
reaches a target (97% accuracy on the digits, 2.2 nats per character for the character
transformer) and records the number of steps and the seconds of training steps that
took (one thread, learning rates tuned on a validation split, three seeds).
``benchmarks/preconditioner_adaptation.py`` measures how far SINGD's factors are from
their fixed point over the steps. This example reads both result files from
``benchmarks/results/`` and plots them; it measures nothing itself.
:doc:`/time_to_target` discusses the numbers and the recommended setting.
"""

# %%
# Reading the results
# -------------------
#
# ``time_to_target.json`` holds ``results[workload]["optimizers"][key]`` with the
# tuned ``setting``, the ``runs`` (steps and seconds per seed), the medians and their
# ratios to AdamW (``steps_vs_adamw``, ``seconds_vs_adamw``); a median of ``None``
# means the target was missed in two of three runs.

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np


def find_results() -> Path:
    """Return ``benchmarks/results`` of the repository around the working dir."""
    for folder in [Path.cwd(), *Path.cwd().parents]:
        if (folder / "benchmarks").is_dir():
            return folder / "benchmarks" / "results"
    return Path("benchmarks") / "results"


def load(name: str) -> dict | None:
    """Load ``benchmarks/results/<name>``; ``None`` (with a note) if missing."""
    path = find_results() / name
    if not path.is_file():
        print(f"{path} does not exist yet: run benchmarks/{name.replace('.json', '.py')}")
        return None
    return json.loads(path.read_text())


targets = load("time_to_target.json")
adaptation = load("preconditioner_adaptation.json")

# %%
# Steps and seconds relative to AdamW
# -----------------------------------
#
# One row per optimizer, the median over three seeds divided by AdamW's median (time on
# a log scale). Left of the dashed line is faster than AdamW. A cross at the right edge
# marks a target that was not reached.

if targets is not None:
    workloads = list(targets["results"])
    measured = {
        workload: [
            row
            for row in targets["results"][workload]["optimizers"].values()
            if "skipped" not in row
        ]
        for workload in workloads
    }
    # one bar per optimizer: each workload's panels are as tall as its list
    heights = [len(measured[workload]) + 2 for workload in workloads]
    fig, axes = plt.subplots(
        len(workloads),
        2,
        figsize=(10, 0.3 * sum(heights)),
        squeeze=False,
        gridspec_kw={"height_ratios": heights},
    )
    for row_axes, workload in zip(axes, workloads, strict=True):
        rows = measured[workload]
        labels = [row["label"] for row in rows]
        positions = np.arange(len(rows))
        for ax, key, title in zip(
            row_axes, ("steps_vs_adamw", "seconds_vs_adamw"), ("steps", "seconds"), strict=True
        ):
            ratios = [row[key] for row in rows]
            reached = [r for r in ratios if r is not None]
            edge = 1.3 * max([*reached, 1.0])
            ax.barh(positions, [r if r is not None else np.nan for r in ratios], color="tab:blue")
            missed = [i for i, r in enumerate(ratios) if r is None]
            ax.plot([edge] * len(missed), missed, "x", color="tab:red", label="not reached")
            ax.axvline(1.0, color="black", linestyle="--", linewidth=1)
            ax.set_yticks(positions, labels if ax is row_axes[0] else [""] * len(labels))
            ax.invert_yaxis()
            if title == "seconds":
                ax.set_xscale("log")
            ax.set(xlabel=f"{title} to target / AdamW", title=f"{workload}: {title}")
            ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()

    for workload, data in targets["results"].items():
        target = data.get("target_text") or f"{data['target']:.0%} test accuracy"
        print(f"\n{workload}: target {target}, every {data['eval_every']} steps")
        for row in data["optimizers"].values():
            if "skipped" in row:
                continue
            steps = row["median_steps"]
            text = "not reached" if steps is None else f"{steps:>4g} steps"
            seconds = row["seconds_vs_adamw"]
            wall = "" if seconds is None else f", {seconds:.2f}x AdamW's time"
            print(f"  {row['label']:<34} {text}{wall}")

# %%
# Distance of the factors to their fixed point
# --------------------------------------------
#
# Root-mean-square log-eigenvalue of :math:`(C C^\top) \otimes (K K^\top)` relative to
# the fixed point of the whole training split's curvature (mean over the MLP's three
# layers, dense factors). With fixed weights the curvature does not move and the curve
# shows how fast the factors converge; during training it shows how well they track it.

if adaptation is not None:
    modes = list(adaptation["results"])
    fig, axes = plt.subplots(1, len(modes), figsize=(11, 5), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], modes, strict=True):
        for name, record in adaptation["results"][mode].items():
            distances = [d if math.isfinite(d) else np.nan for d in record["distance"]]
            ax.semilogy(record["steps"], distances, label=name)
        ax.set(xlabel="step", title=mode)
        ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].set_ylabel("distance to fixed point (log scale)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.2, 1, 1))
