"""
Benchmark results
=================

The repository's ``benchmarks/`` folder measures two things, each in one process on one
thread so that the ratios are comparable:

- ``benchmarks/optimizer_step.py``: the time of a whole training step
  (``zero_grad``, forward, backward, ``step``) and the bytes of optimizer state, for
  SINGD with each structure, AdamW and SGD, on an MLP and a small CNN;
- ``benchmarks/structmat_kernels.py``: every structured kernel against the dense
  computation of the same result, for several dimensions.

Both write JSON to ``benchmarks/results/``. This example reads those files and plots
them; it measures nothing itself. To refresh the numbers on your machine, run the two
scripts and rebuild the documentation (or run this file from the repository root).
"""

# %%
# Reading the results
# -------------------
#
# ``optimizer_step.json`` holds ``results[model][key]`` with keys ``"adamw"``,
# ``"sgd"`` and ``"singd_opt/<structure>/T=<T>"``; every entry has ``time`` (seconds per
# step) and ``bytes``, the SINGD entries also ``time_vs_adamw`` and ``bytes_vs_adamw``.
# ``structmat_kernels.json`` holds ``results[structure][d][operation]`` with the
# ``structured`` and ``dense`` times and their ``ratio``.

import json
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
        script = "benchmarks/" + name.replace(".json", ".py")
        print(f"{path} does not exist yet: run {script}")
        return None
    data = json.loads(path.read_text())
    print(f"{name}: measured with {data.get('meta', {})}")
    return data


steps = load("optimizer_step.json")
kernels = load("structmat_kernels.json")


def singd_rows(rows: dict) -> dict[str, dict[str, dict]]:
    """Group one model's SINGD entries as ``{structure: {"T=1": row, ...}}``."""
    grouped: dict[str, dict[str, dict]] = {}
    for key, row in rows.items():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "singd_opt":
            grouped.setdefault(parts[1], {})[parts[2]] = row
    return grouped


# %%
# Step time relative to AdamW
# ---------------------------
#
# One bar per structure and preconditioner update interval ``T``: with ``T = 1`` SINGD
# updates its factors every step, with ``T = 10`` every tenth step (the default). The
# dashed line is AdamW (1.0), the dotted one SGD with momentum.

if steps is not None:
    models = list(steps["results"])
    fig, axes = plt.subplots(
        len(models), 1, figsize=(8, 3.2 * len(models)), squeeze=False
    )
    for ax, model in zip(axes[:, 0], models, strict=True):
        rows = steps["results"][model]
        grouped = singd_rows(rows)
        structures = list(grouped)
        intervals = sorted({T for by_T in grouped.values() for T in by_T}, key=len)
        width = 0.8 / max(len(intervals), 1)
        positions = np.arange(len(structures))
        for i, T in enumerate(intervals):
            ratios = [
                grouped[s].get(T, {}).get("time_vs_adamw", np.nan)
                for s in structures
            ]
            ax.bar(
                positions + (i - (len(intervals) - 1) / 2) * width,
                ratios,
                width,
                label=T,
            )
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="AdamW")
        if "sgd" in rows and "adamw" in rows:
            sgd = rows["sgd"]["time"] / rows["adamw"]["time"]
            ax.axhline(sgd, color="gray", linestyle=":", linewidth=1.5, label="SGD")
        ax.set_xticks(positions, structures, rotation=20, ha="right")
        ax.set(ylabel="step time / AdamW", title=f"{model}: time per training step")
        ax.legend(fontsize=8, ncols=2)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()

# %%
# Optimizer state relative to AdamW
# ---------------------------------
#
# AdamW keeps two buffers of the size of the parameters. SINGD keeps the parameter
# momentum (one buffer) plus the structured factors :math:`K, C` and their momenta, so
# everything below 1.0 is a saving. The state does not depend on ``T``.

if steps is not None:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    models = list(steps["results"])
    grouped_by_model = {
        model: singd_rows(steps["results"][model]) for model in models
    }
    structures = list(
        dict.fromkeys(s for g in grouped_by_model.values() for s in g)
    )
    width = 0.8 / len(models)
    positions = np.arange(len(structures))
    for i, model in enumerate(models):
        ratios = []
        for structure in structures:
            by_T = grouped_by_model[model].get(structure, {})
            row = next(iter(by_T.values()), {})
            ratios.append(row.get("bytes_vs_adamw", np.nan))
        ax.bar(
            positions + (i - (len(models) - 1) / 2) * width,
            ratios,
            width,
            label=model,
        )
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="AdamW")
    ax.set_xticks(positions, structures, rotation=20, ha="right")
    ax.set(ylabel="state bytes / AdamW", title="Optimizer state")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()

# %%
# Structured kernels against dense
# --------------------------------
#
# For every operation, the time of the structured kernel divided by the time of the
# dense computation, against the dimension. Below the dashed line the structure is
# faster; most kernels gain more the larger the matrix.

if kernels is not None:
    results = kernels["results"]
    entries = [entry for by_d in results.values() for entry in by_d.values()]
    operations = list(dict.fromkeys(op for entry in entries for op in entry))
    columns = 3
    rows_count = -(-len(operations) // columns)
    fig, axes = plt.subplots(
        rows_count,
        columns,
        figsize=(11, 3.2 * rows_count),
        sharey=True,
        squeeze=False,
    )
    for ax, op in zip(axes.flat, operations, strict=False):
        for i, (structure, by_d) in enumerate(results.items()):
            dims = sorted(int(d) for d in by_d if op in by_d[d])
            ratios = [by_d[str(d)][op]["ratio"] for d in dims]
            style = "o-" if i < 10 else "s--"  # ten colours, then dashed lines
            ax.loglog(dims, ratios, style, markersize=3, label=structure)
        ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set(title=op, xlabel="dimension d")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("structured / dense time")
    for ax in axes.flat[len(operations) :]:
        ax.set_axis_off()
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncols=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))

# %%
# :doc:`/choosing_a_structure` lists the same measurements as tables next to the cost
# formulas of each structure.
