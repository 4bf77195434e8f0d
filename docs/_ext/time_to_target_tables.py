"""Tables for the page on time to a target accuracy, written when the documentation builds.

These fragments go to ``docs/_generated/``:

- ``time_to_target.rst``: steps and seconds to the target per workload and optimizer,
  read from ``benchmarks/results/time_to_target.json``;
- ``time_to_target_summary.rst``: per workload, the SINGD configurations with the
  fewest steps and the least time, from the same file;
- ``preconditioner_adaptation.rst``: distance of SINGD's factors to their fixed point
  over the steps, read from ``benchmarks/results/preconditioner_adaptation.json``.

A missing results file yields a short note that says how to produce it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from structure_tables import list_table, load_results, missing_note

DISTANCE_STEPS = (0, 10, 50, 100, 300)


def target_text(workload: dict[str, Any]) -> str:
    """The workload's target in words (results from before it was recorded: accuracy)."""
    return workload.get("target_text") or f"{workload['target']:.0%} test accuracy"


def _setting(setting: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value:g}" for key, value in setting.items())


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def time_to_target_tables(path: Path) -> str:
    """One table per workload: steps and seconds to the target, and their ratios to AdamW."""
    data = load_results(path)
    if data is None:
        return missing_note(path, "time_to_target.py")
    meta = data.get("meta", {})
    out = [
        f"Measured on {meta.get('date', '?')} with torch {meta.get('torch', '?')}, "
        f"{meta.get('threads', '?')} thread, heavyball {meta.get('heavyball') or 'not installed'}"
        f", load average {meta.get('load_average_at_start', '?')} at the start "
        f"({meta.get('seconds_total', 0) / 60:.0f} minutes in all).",
        "",
    ]
    for name, workload in data.get("results", {}).items():
        rows = []
        for row in workload["optimizers"].values():
            if "skipped" in row:
                rows.append([row["label"], "skipped", "", "", "", "", "", ""])
                continue
            steps = " / ".join("-" if r["steps"] is None else str(r["steps"]) for r in row["runs"])
            median = row["median_steps"]
            seconds = row["median_seconds"]
            rows.append(
                [
                    row["label"],
                    _setting(row["setting"]),
                    steps,
                    "not reached" if median is None else f"{median:g}",
                    _ratio(row["steps_vs_adamw"]),
                    "" if seconds is None else f"{seconds:.2f}",
                    _ratio(row["seconds_vs_adamw"]),
                    _ratio(row["seconds_per_step_vs_adamw"]),
                ]
            )
        out.append(
            f"**{name}**: {workload['description']}; target {target_text(workload)}, "
            f"evaluated every {workload['eval_every']} steps, at most "
            f"{workload['max_steps']} steps, batch {workload['batch_size']}."
        )
        out.append("")
        header = [
            "optimizer",
            "tuned",
            "steps (seeds 0/1/2)",
            "median steps",
            "steps / AdamW",
            "seconds",
            "seconds / AdamW",
            "step time / AdamW",
        ]
        out.append(list_table(header, rows))
    return "\n".join(out)


def summary_table(path: Path) -> str:
    """Per workload: the SINGD configurations with the fewest steps and the least time."""
    data = load_results(path)
    if data is None:
        return missing_note(path, "time_to_target.py")
    rows = []
    for name, workload in data.get("results", {}).items():
        measured = {
            key: row
            for key, row in workload["optimizers"].items()
            if "skipped" not in row and row["median_steps"] is not None
        }
        singd = {key: row for key, row in measured.items() if key.startswith("singd/")}
        for criterion, field in (("fewest steps", "steps"), ("least time", "seconds")):
            pool = [(row[f"median_{field}"], row) for row in singd.values()]
            if not pool:
                rows.append([name, criterion, "no SINGD configuration reached the target"])
                continue
            _, best = min(pool, key=lambda item: item[0])
            rows.append(
                [
                    name,
                    criterion,
                    best["label"],
                    f"{best['median_steps']:g} ({_ratio(best['steps_vs_adamw'])})",
                    f"{best['median_seconds']:.2f} ({_ratio(best['seconds_vs_adamw'])})",
                ]
            )
    header = ["workload", "SINGD with the", "configuration", "steps (/ AdamW)", "seconds (/ AdamW)"]
    return list_table(header, [row + [""] * (5 - len(row)) for row in rows])


def adaptation_tables(path: Path) -> str:
    """Distance of the factors to their fixed point at a few steps, per configuration."""
    data = load_results(path)
    if data is None:
        return missing_note(path, "preconditioner_adaptation.py")
    out = []
    titles = {
        "stationary": "Fixed weights (stationary curvature)",
        "training": "During training",
    }
    for mode, configs in data.get("results", {}).items():
        rows = []
        for name, record in configs.items():
            by_step = dict(zip(record["steps"], record["distance"], strict=True))
            cells = [f"{by_step[s]:.2f}" if s in by_step else "" for s in DISTANCE_STEPS]
            if "diverged_at" in record:
                cells[-1] = f"diverged at step {record['diverged_at']}"
            rows.append([name, *cells])
        out.append(f"**{titles.get(mode, mode)}**")
        out.append("")
        out.append(list_table(["configuration", *(f"step {s}" for s in DISTANCE_STEPS)], rows))
    out.append(curvature_scale_table(data))
    return "\n".join(out)


def curvature_scale_table(data: dict[str, Any]) -> str:
    """Per layer, the product of the average traces of S_K and S_C during training.

    Shown for the training run that reached the lowest loss (the weights move most).
    """
    training = data.get("results", {}).get("training", {})
    finished = {
        name: record
        for name, record in training.items()
        if "diverged_at" not in record and record.get("curvature_scale")
    }
    if not finished:
        return ""
    name = min(finished, key=lambda n: finished[n]["loss"][-1])
    record = finished[name]
    by_step = dict(zip(record["steps"], record["curvature_scale"], strict=True))
    losses = dict(zip(record["steps"], record["loss"], strict=True))
    layers = list(record["curvature_scale"][0])
    rows = [
        [
            f"``{layer}``",
            *(f"{by_step[s][layer]:.2g}" if s in by_step else "" for s in DISTANCE_STEPS),
        ]
        for layer in layers
    ]
    rows.append(
        [
            "training loss",
            *(f"{losses[s]:.3g}" if s in losses and s else "" for s in DISTANCE_STEPS),
        ]
    )
    return (
        f"**Curvature scale** :math:`\\bar{{\\operatorname{{tr}}}}(S_K)\\,"
        f"\\bar{{\\operatorname{{tr}}}}(S_C)` per layer during training ({name})\n\n"
        + list_table(["layer", *(f"step {s}" for s in DISTANCE_STEPS)], rows)
    )


def write_all(target: Path, results: Path) -> None:
    """Write both fragments into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    fragments = {
        "time_to_target.rst": time_to_target_tables(results / "time_to_target.json"),
        "time_to_target_summary.rst": summary_table(results / "time_to_target.json"),
        "preconditioner_adaptation.rst": adaptation_tables(
            results / "preconditioner_adaptation.json"
        ),
    }
    for name, text in fragments.items():
        (target / name).write_text(text + "\n", encoding="utf-8")
