"""Steps and time to target of AdamW and ``SINGD(model, lr)`` over many seeds at fixed rates.

``time_to_target.py`` tunes each optimizer's rate on two seeds and measures three, so
one run's time ratio moves with those seeds' draw (the ResNet's 97% on 360 test images
takes AdamW 60 to 210 steps between seeds). This benchmark takes the rates as given and
runs many seeds, AdamW and SINGD with the recommended defaults alternating seed by seed
(so that a changing load on a shared machine affects both alike), on one thread.

Reported per optimizer: the steps of each seed, their mean over the seeds that reached
the target, the misses, the mean time of the training steps (a miss counts the steps it
ran) and the median time per step; and the time of SINGD relative to AdamW's, as the
ratio of the mean times and as the median of the per-seed ratios.

Usage::

    python benchmarks/fixed_rate_seeds.py --workload vit_digits --adamw-lr 3e-4 --singd-lr 1e-3

Results are added to ``benchmarks/results/fixed_rate_seeds.json`` under
``"<workload> adamw=<lr> singd=<lr> seeds=<n>"``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The sibling benchmark modules, however this file is loaded.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from torch import nn
from torch.optim import Optimizer

import time_to_target
from singd_opt import SINGD

RESULTS = Path(__file__).resolve().parent / "results" / "fixed_rate_seeds.json"


def builders(
    workload: time_to_target.Workload, adamw_lr: float, singd_lr: float
) -> dict[str, Callable[[nn.Module], Optimizer]]:
    """AdamW at ``adamw_lr`` and ``SINGD(model, lr=singd_lr)`` with the workload's options."""
    options = dict(workload.singd_options)
    return {
        "adamw": lambda model: torch.optim.AdamW(model.parameters(), lr=adamw_lr),
        "singd": lambda model: SINGD(model, lr=singd_lr, **options),
    }


def summary(runs: list[Any]) -> dict[str, Any]:
    """Steps, misses, mean time and median time per step of one optimizer's runs."""
    steps = [run.steps for run in runs]
    reached = [s for s in steps if s is not None]
    return {
        "steps": steps,
        "mean_steps": statistics.mean(reached) if reached else None,
        "missed": len(steps) - len(reached),
        "mean_seconds": statistics.mean(run.seconds for run in runs),
        "median_seconds_per_step": statistics.median(run.seconds_per_step for run in runs),
    }


def measure(
    name: str, adamw_lr: float, singd_lr: float, seeds: int, max_steps: int | None = None
) -> dict[str, Any]:
    """Run both optimizers on seeds ``0 .. seeds - 1``, alternating; return the summary."""
    workload = time_to_target.WORKLOADS[name]
    split = workload.load_split(False)
    builds = builders(workload, adamw_lr, singd_lr)
    runs: dict[str, list[Any]] = {key: [] for key in builds}
    for seed in range(seeds):
        for key, build in builds.items():
            runs[key].append(time_to_target.run_to_target(workload, split, build, seed, max_steps))
    result = {key: summary(value) for key, value in runs.items()}
    ratios = [s.seconds / a.seconds for s, a in zip(runs["singd"], runs["adamw"], strict=True)]
    result["time_vs_adamw"] = result["singd"]["mean_seconds"] / result["adamw"]["mean_seconds"]
    result["time_vs_adamw_per_seed_median"] = statistics.median(ratios)
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print, and add the result to the JSON file; return the result."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", required=True, choices=sorted(time_to_target.WORKLOADS))
    parser.add_argument("--adamw-lr", type=float, required=True)
    parser.add_argument("--singd-lr", type=float, required=True)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--max-steps", type=int, default=None, help="the workload's if unset")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = measure(args.workload, args.adamw_lr, args.singd_lr, args.seeds, args.max_steps)
    result["date"] = time.strftime("%Y-%m-%d")
    key = f"{args.workload} adamw={args.adamw_lr:g} singd={args.singd_lr:g} seeds={args.seeds}"
    print(key, json.dumps(result))
    stored = json.loads(args.output.read_text()) if args.output.exists() else {}
    stored[key] = result
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(stored, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
