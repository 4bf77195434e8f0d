"""Choose the ``singd-opt`` demo's hyper-parameters on a validation split.

The demo (``singd-opt``) trains one CNN per optimizer on scikit-learn's digits and
reports *test* accuracy. To keep that number honest, its hyper-parameters are chosen
here, without ever touching the test split: the training split (1437 images) is split
once more, stratified and with a fixed seed, into 1149 training and 288 validation
images (:func:`singd_opt.demo.data.load_split` with ``validation=True``), and a small
grid per optimizer is trained exactly as the demo trains (default epochs and batch
size, cosine learning-rate decay), once per seed (0 and 1 by default):

- AdamW: ``lr`` in {1e-3, 3e-3, 1e-2, 3e-2} (other arguments at PyTorch's defaults);
- SGD with momentum 0.9: ``lr`` in {0.01, 0.03, 0.1};
- SINGD: ``lr`` in {1e-2, 3e-2, 1e-1} x ``lr_cov`` in {0.01, 0.1} x ``damping`` in
  {0.1, 1}, ``T = 10``, each setting run with every default structure (dense,
  diagonal, hierarchical15_15, triltoeplitz).

The baselines take the setting with the best validation accuracy (mean over seeds);
SINGD takes one setting for all structures, the one with the best validation accuracy
averaged over structures and seeds. Ties go to the lower mean validation loss. The
script prints the validation accuracies, the chosen settings and whether they equal
the demo's defaults (:data:`singd_opt.demo.training.HYPERPARAMETERS`).

Usage::

    python benchmarks/demo_tuning.py              # the full grid (about 6 minutes, 2 cores)
    python benchmarks/demo_tuning.py --threads 1  # one thread
    python benchmarks/demo_tuning.py --epochs 2 --structures dense  # a quick look
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import time
import warnings

# Before torch loads OpenMP: idle threads sleep instead of spinning, which keeps the
# many small kernels fast when other processes share the cores (as singd-opt does).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from singd_opt.demo.data import load_split
from singd_opt.demo.training import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_SEED,
    DEFAULT_STRUCTURES,
    HYPERPARAMETERS,
    OptimizerSpec,
    train,
)

GRIDS: dict[str, list[dict[str, float]]] = {
    "adamw": [{"lr": lr} for lr in (1e-3, 3e-3, 1e-2, 3e-2)],
    "sgd": [{"lr": lr, "momentum": 0.9} for lr in (0.01, 0.03, 0.1)],
    "singd": [
        {"lr": lr, "lr_cov": lr_cov, "damping": damping, "T": 10}
        for lr, lr_cov, damping in itertools.product((1e-2, 3e-2, 1e-1), (0.01, 0.1), (0.1, 1.0))
    ],
}


def _loss_key(loss: float) -> float:
    """Diverged runs (NaN loss) rank last."""
    return math.inf if math.isnan(loss) else loss


def _format(setting: dict[str, float]) -> str:
    return ", ".join(f"{key}={value:g}" for key, value in setting.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--seeds", type=int, nargs="+", default=[DEFAULT_SEED, DEFAULT_SEED + 1])
    parser.add_argument(
        "--structures", nargs="+", default=list(DEFAULT_STRUCTURES), help="SINGD structures"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    split = load_split(validation=True)
    print(
        f"validation split: {len(split.x_train)} training / {len(split.x_eval)} validation "
        f"images (test split unused); {args.epochs} epochs, batch {args.batch_size}, "
        f"seeds {args.seeds}, {torch.get_num_threads()} threads; "
        "accuracy = mean over seeds, (loss) = mean validation loss"
    )
    start = time.perf_counter()

    def evaluate(
        kind: str, structure: str | None, setting: dict[str, float]
    ) -> tuple[float, float]:
        """Mean validation accuracy and loss over the seeds."""
        accuracies, losses = [], []
        for seed in args.seeds:
            with warnings.catch_warnings():
                # Diverging settings warn about non-finite curvature; they rank last.
                warnings.simplefilter("ignore")
                result = train(
                    OptimizerSpec(kind, structure, setting),
                    split,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    seed=seed,
                )
            accuracies.append(result.accuracy)
            losses.append(_loss_key(result.eval_loss))
        return sum(accuracies) / len(accuracies), sum(losses) / len(losses)

    chosen: dict[str, dict[str, float]] = {}
    for kind in ("adamw", "sgd"):
        print(f"\n{kind}: validation accuracy (loss)")
        scored = []
        for setting in GRIDS[kind]:
            accuracy, loss = evaluate(kind, None, setting)
            scored.append((accuracy, -loss, setting))
            print(f"  {_format(setting):<28} {100 * accuracy:6.2f}%  ({loss:.4f})", flush=True)
        chosen[kind] = max(scored, key=lambda item: item[:2])[2]

    structures = args.structures
    print("\nsingd: validation accuracy per structure, mean over structures (loss)")
    header = " ".join(f"{name[:17]:>17}" for name in structures)
    print(f"  {'setting':<44} {header}    mean")
    scored = []
    for setting in GRIDS["singd"]:
        results = [evaluate("singd", structure, setting) for structure in structures]
        mean_accuracy = sum(accuracy for accuracy, _ in results) / len(results)
        mean_loss = sum(loss for _, loss in results) / len(results)
        scored.append((mean_accuracy, -mean_loss, setting))
        cells = " ".join(f"{100 * accuracy:16.2f}%" for accuracy, _ in results)
        print(
            f"  {_format(setting):<44} {cells} {100 * mean_accuracy:6.2f}%  ({mean_loss:.4f})",
            flush=True,
        )
    chosen["singd"] = max(scored, key=lambda item: item[:2])[2]

    print(f"\nchosen settings ({time.perf_counter() - start:.0f} s):")
    for kind, setting in chosen.items():
        default = HYPERPARAMETERS[kind]
        same = {key: float(value) for key, value in setting.items()} == {
            key: float(value) for key, value in default.items()
        }
        note = "= the demo's default" if same else f"differs from the demo's default {default}"
        print(f"  {kind}: {_format(setting)}  ({note})")


if __name__ == "__main__":
    main()
