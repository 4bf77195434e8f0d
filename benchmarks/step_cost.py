"""Cost of one SINGD step at ``T = 1`` per structure, relative to an AdamW step.

On the models of ``benchmarks/time_to_target.py`` (each with one mini-batch of its own
training data, batch size as in that benchmark) and on the MLP 784-512-512-512-10 of
``benchmarks/optimizer_step.py`` (batch 128), every structure's SINGD (``T=1``, the
same structure for ``K`` and ``C``, every parameter trained) is timed against AdamW
in one process on one thread, and so is ``SINGD(model, lr)`` as users construct it
(kind ``"defaults"``: ``T=1`` and a structure chosen per layer).

Protocol: each configuration gets its own copy of the model (same initial weights)
and runs 3 warm-up steps; then, ``--rounds`` times, every configuration in turn runs
a block of ``--steps`` steps (``zero_grad``, forward, backward, ``step``) on the same
mini-batch. Interleaving the configurations makes a changing load on a shared machine
affect them alike. Per configuration the median over the rounds of the time per step
is reported, whole and split into the ``step()`` call and the rest (forward and
backward, where SINGD's hooks record the layer inputs and output gradients), each
relative to AdamW's median.

Usage::

    python benchmarks/step_cost.py                     # every model, the defaults, every structure
    python benchmarks/step_cost.py --models digits_mlp --structures hierarchical15_15

Results go to ``benchmarks/results/step_cost.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The sibling benchmark modules, however this file is loaded.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

import optimizer_step
import time_to_target
from singd_opt import SINGD

RESULTS = Path(__file__).resolve().parent / "results" / "step_cost.json"
STRUCTURES = tuple(optimizer_step.STRUCTURES)
#: Model names: the time-to-target workloads and the MLP of ``optimizer_step.py``.
MODELS = (
    "mlp784",
    "digits_mlp",
    "digits_cnn",
    "lm",
    "gpt2_lm",
    "llama_lm",
    "vit_digits",
    "resnet_digits",
)
WARMUP = 3


def model_and_batch(
    name: str,
) -> tuple[Callable[[], nn.Module], Tensor, Tensor, Callable[[Tensor, Tensor], Tensor], dict]:
    """Return the model builder, one mini-batch, the loss and SINGD's workload options."""
    if name == "mlp784":
        torch.manual_seed(0)
        _, x, y = optimizer_step.mlp()
        return (lambda: optimizer_step.mlp()[0]), x, y, nn.functional.cross_entropy, {}
    workload = time_to_target.WORKLOADS[name]
    split = workload.load_split(False)
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(len(split.x_train), generator=generator)[: workload.batch_size]
    return (
        workload.make_model,
        split.x_train[index],
        split.y_train[index],
        workload.loss,
        dict(workload.singd_options),
    )


#: The kind that times SINGD as a user constructs it: ``SINGD(model, lr)`` (the
#: recommended defaults: ``T=1``, a structure per layer), with the workload's options.
DEFAULTS = "defaults"


def build(kind: str, model: nn.Module, options: dict) -> Optimizer:
    """``"adamw"``, :data:`DEFAULTS`, or a structure (SINGD, ``T=1``, it for ``K`` and ``C``)."""
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-4)
    if kind == DEFAULTS:
        return SINGD(model, lr=1e-4, **options)
    return SINGD(model, lr=1e-4, T=1, structures=(kind, kind), **options)


def measure(
    name: str, kinds: Sequence[str], rounds: int, steps: int
) -> dict[str, dict[str, float]]:
    """Median seconds per step (whole and ``step()`` only) of each kind on one model."""
    make, x, y, loss_fn, options = model_and_batch(name)
    runs = {}
    for kind in kinds:
        torch.manual_seed(0)
        model = make()
        runs[kind] = (model, build(kind, model, options))

    def block(kind: str, count: int) -> tuple[float, float]:
        model, optimizer = runs[kind]
        total = in_step = 0.0
        for _ in range(count):
            begin = time.perf_counter()
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            middle = time.perf_counter()
            optimizer.step()
            end = time.perf_counter()
            total += end - begin
            in_step += end - middle
        return total / count, in_step / count

    for kind in kinds:
        block(kind, WARMUP)
    samples: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    for _ in range(rounds):
        for kind in kinds:
            samples[kind].append(block(kind, steps))
    rows = {}
    for kind in kinds:
        whole = statistics.median(s[0] for s in samples[kind])
        step = statistics.median(s[1] for s in samples[kind])
        rows[kind] = {"seconds": whole, "step_seconds": step, "rest_seconds": whole - step}
    base = rows["adamw"]
    for row in rows.values():
        row["vs_adamw"] = row["seconds"] / base["seconds"]
        row["step_vs_adamw_step"] = row["step_seconds"] / base["step_seconds"]
        row["rest_vs_adamw_rest"] = row["rest_seconds"] / base["rest_seconds"]
    return rows


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: per model, each structure's whole-step time / AdamW's."""
    kinds = [k for k in next(iter(results.values())) if k != "adamw"]
    lines = [
        "| model | AdamW ms/step | " + " | ".join(kinds) + " |",
        "|---|---" + "|---" * len(kinds) + "|",
    ]
    for name, rows in results.items():
        cells = [f"{rows[k]['vs_adamw']:.2f}" if k in rows else "" for k in kinds]
        adamw_ms = rows["adamw"]["seconds"] * 1e3
        lines.append(f"| {name} | {adamw_ms:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Measure, print the table and write the JSON; return what was written."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument(
        "--structures",
        nargs="+",
        default=[DEFAULTS, *STRUCTURES],
        help=f"structure names, and {DEFAULTS!r} for SINGD(model, lr) as constructed by users",
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (median)")
    parser.add_argument("--steps", type=int, default=5, help="steps per block")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    load_start = [round(v, 2) for v in os.getloadavg()]
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in args.models:
            if name != "mlp784" and (reason := time_to_target.WORKLOADS[name].missing()):
                print(f"skipping {name}: {reason}")
                continue
            results[name] = measure(name, ["adamw", *args.structures], args.rounds, args.steps)
            print(name, {k: round(r["vs_adamw"], 2) for k, r in results[name].items()}, flush=True)
    print(table(results))
    return write_results(args.output, results, args.rounds, args.steps, load_start, start)


def write_results(
    output: Path,
    results: dict[str, Any],
    rounds: int,
    steps: int,
    load_start: list[float],
    start: float,
) -> dict[str, Any]:
    """Write ``results`` with the machine, the protocol and the load to ``output``.

    Args:
        output: The JSON file.
        results: The measurements.
        rounds: Interleaved rounds per configuration.
        steps: Steps per block.
        load_start: The load averages when the measurement began.
        start: ``time.perf_counter()`` when it began.

    Returns:
        What was written.
    """
    data = {
        "meta": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "rounds": rounds,
            "steps_per_block": steps,
            "load_average_at_start": load_start,
            "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
            "seconds_total": round(time.perf_counter() - start, 1),
            "date": time.strftime("%Y-%m-%d"),
        },
        "results": results,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(data, indent=1) + "\n")
    return data


if __name__ == "__main__":
    main()
