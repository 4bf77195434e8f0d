r"""How far SINGD's preconditioner is from its fixed point, step by step.

SINGD moves a layer's factors towards the fixed point of its update,
:math:`K K^\top = P_K^\star,\ C C^\top = P_C^\star` (see :mod:`singd_opt.warm_start`).
This script measures the distance to the fixed point of the *whole training split's*
curvature on the digits MLP 64-512-512-10 (dense factors, so the fixed point and the
distance are exact), for several ways of starting and updating the factors:

- **stationary**: the weights stay fixed (``lr = 0``) and the factors see random
  mini-batches of 32, so the curvature is stationary and the curve shows only how
  fast the factors converge;
- **training**: the weights are trained (``lr`` as listed in :data:`CONFIGS`), the full
  curvature is recomputed at every measurement, and the curve shows how well the
  factors track a moving target.

Distance: with :math:`a_i` the log-eigenvalues of :math:`P_K^{\star -1/2} K K^\top
P_K^{\star -1/2}` and :math:`b_j` those of the ``C`` side, the root-mean-square log
eigenvalue of the Kronecker product, :math:`\sqrt{\operatorname{mean}_{ij}(a_i + b_j)^2}`;
it is 0 at the fixed point, does not depend on how the scale is split between ``K`` and
``C``, and ``exp`` of it is the typical factor by which the preconditioner is off. The
value reported is the mean over the three layers. Each record also holds the
``curvature_scale`` of each layer, :math:`\bar{\operatorname{tr}}(S_K)\,
\bar{\operatorname{tr}}(S_C)`, the size of the curvature that the damping competes with.

Usage::

    python benchmarks/preconditioner_adaptation.py   # about 4 minutes, 1 thread

Writes ``benchmarks/results/preconditioner_adaptation.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from torch import Tensor, nn
from torch.nn import functional

from singd_opt import SINGD
from singd_opt.warm_start import coupled_inverse_eigenvalues
from singd_opt_demo.data import load_split
from time_to_target import make_digits_mlp

RESULTS = Path(__file__).resolve().parent / "results" / "preconditioner_adaptation.json"
BATCH = 32
#: name -> SINGD arguments (dense factors, momentum 0.9, alpha1 0.5) and the lr of the
#: training study: one lr per damping for all its configurations, small enough that the
#: warm-started factors (the largest preconditioner from the start) do not diverge.
CONFIGS: dict[str, dict[str, Any]] = {
    "identity start, T=10, damping 1e-3 (defaults, lr_cov 0.01)": {
        "T": 10,
        "damping": 1e-3,
        "lr_cov": 0.01,
        "lr": 3e-5,
    },
    "identity start, T=10, damping 1e-3": {"T": 10, "damping": 1e-3, "lr_cov": 0.1, "lr": 3e-5},
    "identity start, T=1, damping 1e-3": {"T": 1, "damping": 1e-3, "lr_cov": 0.1, "lr": 3e-5},
    "warm start, T=10, damping 1e-3": {
        "T": 10,
        "damping": 1e-3,
        "lr_cov": 0.1,
        "warm_start": True,
        "lr": 3e-5,
    },
    "identity start, T=10, damping 1e-2": {"T": 10, "damping": 1e-2, "lr_cov": 0.1, "lr": 3e-4},
    "warm start, T=10, damping 1e-2": {
        "T": 10,
        "damping": 1e-2,
        "lr_cov": 0.1,
        "warm_start": True,
        "lr": 3e-4,
    },
}


def full_curvature(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    r"""Return :math:`(S_K, S_C)` in float64 per linear layer, over all of ``(x, y)``.

    :math:`S_K` is the mean of :math:`[x_n; 1][x_n; 1]^\top` over the layer inputs and
    :math:`S_C` the mean of :math:`g_n g_n^\top` over the per-sample gradients of the
    per-sample losses with respect to the layer output (SINGD's normalisation for a
    mean loss). Runs on a copy of the weights in fresh modules, so the optimizer's
    hooks on ``model`` record nothing.
    """
    weights = model.state_dict()
    model = make_digits_mlp()
    model.load_state_dict(weights)
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):

            def hook(mod: nn.Module, args: tuple[Tensor], out: Tensor, name: str = name) -> None:
                inputs[name] = args[0].detach()
                out.retain_grad()
                outputs[name] = out

            handles.append(module.register_forward_hook(hook))
    functional.cross_entropy(model(x), y, reduction="sum").backward()
    for handle in handles:
        handle.remove()
    result = {}
    for name, a in inputs.items():
        a = torch.cat([a, torch.ones(len(a), 1)], dim=1).double()
        g = outputs[name].grad.double()  # type: ignore[union-attr]
        result[name] = (a.T @ a / len(a), g.T @ g / len(g))
    return result


def fixed_point(S_K: Tensor, S_C: Tensor, damping: float) -> tuple[Tensor, Tensor]:
    """Return ``M_K^{1/2}`` and ``M_C^{1/2}`` (inverse square roots of the fixed point)."""
    sigma, U = torch.linalg.eigh(S_K)
    tau, V = torch.linalg.eigh(S_C)
    p, q = coupled_inverse_eigenvalues(sigma.clamp(min=0), tau.clamp(min=0), damping)
    return (U * p.rsqrt()) @ U.T, (V * q.rsqrt()) @ V.T


def distance(K: Tensor, C: Tensor, root_M_K: Tensor, root_M_C: Tensor) -> float:
    """RMS log-eigenvalue of the Kronecker product relative to the fixed point."""
    K, C = K.double(), C.double()
    a = torch.linalg.eigvalsh(root_M_K @ K @ K.T @ root_M_K).clamp(min=1e-300).log()
    b = torch.linalg.eigvalsh(root_M_C @ C @ C.T @ root_M_C).clamp(min=1e-300).log()
    mean_square = a.square().mean() + b.square().mean() + 2 * a.mean() * b.mean()
    return math.sqrt(max(mean_square.item(), 0.0))


def minibatches(n: int, seed: int) -> Iterator[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        for start in range(0, n - BATCH + 1, BATCH):
            yield order[start : start + BATCH]


def study(config: dict[str, Any], train: bool, steps: int, every: int, seed: int) -> dict[str, Any]:
    """Run one configuration; return the distances (mean over layers) and the losses."""
    split = load_split()
    torch.manual_seed(seed)
    model = make_digits_mlp()
    arguments = {key: value for key, value in config.items() if key != "lr"}
    optimizer = SINGD(model, lr=config["lr"] if train else 0.0, **arguments)
    roots: dict[str, tuple[Tensor, Tensor]] = {}
    record: dict[str, Any] = {
        "steps": [],
        "distance": [],
        "per_layer": [],
        "curvature_scale": [],
        "loss": [],
    }
    scales: dict[str, float] = {}

    def measure(step: int, loss: float) -> None:
        if train or not roots:
            for name, (S_K, S_C) in full_curvature(model, split.x_train, split.y_train).items():
                roots[name] = fixed_point(S_K, S_C, config["damping"])
                scales[name] = (S_K.diagonal().mean() * S_C.diagonal().mean()).item()
        per_layer = {
            name: distance(
                optimizer.Ks[name].to_dense(),
                optimizer.Cs[name].to_dense(),
                *roots[name],
            )
            for name in roots
        }
        record["steps"].append(step)
        record["loss"].append(loss)
        record["curvature_scale"].append(dict(scales))
        record["per_layer"].append(per_layer)
        record["distance"].append(sum(per_layer.values()) / len(per_layer))

    measure(0, math.nan)
    batches = minibatches(len(split.x_train), seed)
    for step in range(1, steps + 1):
        index = next(batches)
        optimizer.zero_grad()
        loss = functional.cross_entropy(model(split.x_train[index]), split.y_train[index])
        loss.backward()
        optimizer.step()
        if not math.isfinite(loss.item()):
            record["diverged_at"] = step
            break
        if step % every == 0:
            measure(step, loss.item())
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    results: dict[str, Any] = {"stationary": {}, "training": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a diverging run warns about non-finite curvature
        for mode in ("stationary", "training"):
            for name, config in CONFIGS.items():
                record = study(config, mode == "training", args.steps, args.every, args.seed)
                results[mode][name] = {"config": config, **record}
                marks = [0, 10, 50, 100, args.steps]
                summary = ", ".join(
                    f"{s}: {d:.2f}"
                    for s, d in zip(record["steps"], record["distance"], strict=True)
                    if s in marks
                )
                note = (
                    f" (diverged at step {record['diverged_at']})"
                    if "diverged_at" in record
                    else ""
                )
                print(f"{mode:<10} {name:<58} distance at steps {summary}{note}", flush=True)
    data = {
        "meta": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "model": "MLP 64-512-512-10, dense factors, batch 32",
            "seed": args.seed,
            "seconds_total": round(time.perf_counter() - start, 1),
            "date": time.strftime("%Y-%m-%d"),
        },
        "results": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
