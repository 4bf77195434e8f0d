"""Optimizer step time and state memory of SINGD per structure, against AdamW and SGD.

Two models, everything in one process with ``torch.set_num_threads(1)``:

- MLP 784-512-512-512-10, batch 128;
- CNN Conv(3->32) / pool / Conv(32->64) / pool / Linear(4096->128) / Linear(128->10),
  32x32 inputs, batch 64.

A "step" is ``zero_grad + forward + backward + step``. Each measurement times
blocks of 10 consecutive steps (so with ``T = 10`` one preconditioner update is
amortised over the block) and reports the median per-step time over the blocks.
State bytes count every tensor the optimizer keeps (its ``state_dict``, the
Kronecker factors and momenta included), each storage once.

Usage::

    python benchmarks/optimizer_step.py                  # singd_opt only
    python benchmarks/optimizer_step.py --reference      # also singd 0.0.5, if installed
    python benchmarks/optimizer_step.py --reference dense diagonal   # for these only
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from singd_opt import SINGD

STRUCTURES = [
    "dense",
    "diagonal",
    "block30diagonal",
    "hierarchical15_15",
    "triltoeplitz",
    "triutoeplitz",
    "triltopleftdiag",
    "trilbottomrightdiag",
]
BLOCK = 10


def mlp() -> tuple[nn.Module, Tensor, Tensor]:
    """The MLP and one batch of 128 inputs with labels."""
    model = nn.Sequential(
        nn.Linear(784, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 512),
        nn.ReLU(),
        nn.Linear(512, 10),
    )
    return model, torch.randn(128, 784), torch.randint(0, 10, (128,))


def cnn() -> tuple[nn.Module, Tensor, Tensor]:
    """The CNN and one batch of 64 RGB 32x32 inputs with labels."""
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4096, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )
    return model, torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))


MODELS: dict[str, Callable[[], tuple[nn.Module, Tensor, Tensor]]] = {"mlp": mlp, "cnn": cnn}


def _tensors(obj: Any) -> Iterable[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from _tensors(value)
    elif hasattr(obj, "named_tensors"):  # a structured matrix kept as an object
        for _, tensor in obj.named_tensors():
            yield tensor


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer holds, each storage counted once."""
    if isinstance(optimizer, SINGD):
        return optimizer.state_bytes()  # blocks' state with cached products, momenta
    sources: list[Any] = [optimizer.state_dict()]
    # factors the reference holds outside its state_dict
    for attribute in ("Ks", "Cs", "m_Ks", "m_Cs"):
        sources.append(getattr(optimizer, attribute, {}))
    seen: dict[int, int] = {}
    for tensor in _tensors(sources):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(seen.values())


def make_optimizer(kind: str, model: nn.Module, structure: str, T: int) -> torch.optim.Optimizer:
    """Build one of ``adamw``, ``sgd``, ``singd_opt`` or ``reference`` (singd 0.0.5)."""
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=1e-3)
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    cls = SINGD
    if kind == "reference":
        from singd.optim.optimizer import SINGD as cls  # noqa: N811
    return cls(model, lr=1e-3, momentum=0.9, T=T, structures=(structure, structure))


def step_time(kind: str, model_name: str, structure: str, T: int, blocks: int) -> tuple[float, int]:
    """Median per-step seconds over ``blocks`` blocks of 10 steps, and the state bytes."""
    torch.manual_seed(0)
    model, inputs, labels = MODELS[model_name]()
    optimizer = make_optimizer(kind, model, structure, T)
    loss_fn = nn.CrossEntropyLoss()

    def one_step() -> None:
        optimizer.zero_grad()
        loss_fn(model(inputs), labels).backward()
        optimizer.step()

    for _ in range(BLOCK):  # warm-up, allocates the state
        one_step()
    times = []
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(BLOCK):
            one_step()
        times.append((time.perf_counter() - start) / BLOCK)
    return statistics.median(times), state_bytes(optimizer)


def missed_targets(rows: dict[str, dict[str, float]]) -> list[str]:
    """The targets of one model's rows that do not hold (empty when all hold)."""
    missed = []
    limits_T1 = {
        "diagonal": 1.15,
        "block30diagonal": 1.5,
        "hierarchical15_15": 1.5,
        "triltoeplitz": 1.5,
        "triutoeplitz": 1.5,
    }
    for key, row in rows.items():
        if not key.startswith("singd_opt/"):
            continue
        _, structure, T = key.split("/")
        if structure == "dense":
            reference = rows.get(f"reference/dense/{T}")
            if reference and row["time"] > reference["time"]:
                missed.append(
                    f"{key}: {row['time'] / reference['time']:.2f}x the reference (target <= 1)"
                )
            continue
        limit = limits_T1.get(structure) if T == "T=1" else 1.1 if T == "T=10" else None
        if limit is not None and row["time_vs_adamw"] > limit:
            missed.append(f"{key}: {row['time_vs_adamw']:.2f}x AdamW time (target <= {limit})")
        memory = 0.55 if structure in ("diagonal", "triltoeplitz", "triutoeplitz") else 1.0
        if row["bytes_vs_adamw"] > memory:
            missed.append(f"{key}: {row['bytes_vs_adamw']:.2f}x AdamW state (target <= {memory})")
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--structures", nargs="+", default=STRUCTURES)
    parser.add_argument("--T", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--blocks", type=int, default=5, help="timed blocks of 10 steps (median)")
    parser.add_argument(
        "--reference",
        nargs="*",
        metavar="STRUCTURE",
        help="also time singd 0.0.5 (for the given structures; all when none given)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "optimizer_step.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    # runs for some models update an existing file, keeping the other models' rows
    stored = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results: dict[str, Any] = stored.get("results", {})
    blocks_per_model: dict[str, int] = stored.get("meta", {}).get("blocks_per_model", {})
    for model_name in args.models:
        blocks_per_model[model_name] = args.blocks
        adamw_time, adamw_bytes = step_time("adamw", model_name, "", 1, args.blocks)
        sgd_time, sgd_bytes = step_time("sgd", model_name, "", 1, args.blocks)
        rows = {
            "adamw": {"time": adamw_time, "bytes": adamw_bytes},
            "sgd": {"time": sgd_time, "bytes": sgd_bytes},
        }
        print(
            f"\n{model_name}: AdamW {adamw_time * 1e3:.2f} ms/step, "
            f"{adamw_bytes / 2**20:.2f} MiB state; SGD {sgd_time * 1e3:.2f} ms/step"
        )
        print(
            f"{'optimizer':<12}{'structure':<22}{'T':>4}{'ms/step':>10}"
            f"{'/AdamW':>9}{'/SGD':>8}{'state/AdamW':>13}"
        )
        for structure in args.structures:
            kinds = ["singd_opt"]
            if args.reference is not None and (not args.reference or structure in args.reference):
                kinds.append("reference")
            for T in args.T:
                for kind in kinds:
                    try:
                        seconds, nbytes = step_time(kind, model_name, structure, T, args.blocks)
                    except Exception as error:  # the reference refuses some configurations
                        print(
                            f"{kind:<12}{structure:<22}{T:>4}  failed: "
                            f"{type(error).__name__}: {error}"
                        )
                        continue
                    row = {
                        "time": seconds,
                        "bytes": nbytes,
                        "time_vs_adamw": seconds / adamw_time,
                        "time_vs_sgd": seconds / sgd_time,
                        "bytes_vs_adamw": nbytes / adamw_bytes,
                    }
                    rows[f"{kind}/{structure}/T={T}"] = row
                    print(
                        f"{kind:<12}{structure:<22}{T:>4}{seconds * 1e3:>10.2f}"
                        f"{row['time_vs_adamw']:>9.2f}{row['time_vs_sgd']:>8.2f}"
                        f"{row['bytes_vs_adamw']:>13.2f}"
                    )
        results[model_name] = rows
        missed = missed_targets(rows)
        print(f"targets ({model_name}): " + ("all met" if not missed else f"{len(missed)} missed"))
        for line in missed:
            print("  missed:", line)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": 1,
        "blocks_per_model": blocks_per_model,
        "steps_per_block": BLOCK,
    }
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
