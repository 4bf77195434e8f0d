"""Data-parallel SINGD: time and bytes per step, ``distribute="replicate"`` vs ``"split"``.

Runs 1, 2 and 4 gloo processes on the CPU (one intra-op thread each) on a model whose
preconditioner work dominates: an MLP with four square 1024-wide layers (equal work
each, so that two processes can share it evenly) and a head, with dense (or
hierarchical) factors, a global batch of 64 split evenly. For each process count and
mode it times update steps (``T = 2``: every other step updates ``K, C``) and the other
steps separately (median over the repetitions, the slowest process of each step), and
reads the optimizer's own count of the payload bytes it communicated per step.

The results go to ``benchmarks/results/distributed.json``::

    python3 benchmarks/distributed.py               # full run
    python3 benchmarks/distributed.py --quick       # a smoke run with small sizes

Process counts larger than the number of cores share cores, so their times measure
contention as much as the split; the ratios that matter are those with at most one
process per core.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional

from singd_opt import SINGD

RESULTS = Path(__file__).parent / "results" / "distributed.json"


def make_model(width: int, depth: int) -> nn.Module:
    """``depth`` square layers of ``width`` (equal preconditioner work each), then a head."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers.append(nn.Linear(width, 10))
    return nn.Sequential(*layers)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(rank: int, world: int, config: dict[str, Any]) -> dict[str, Any]:
    """Train in this process; return per-step times and bytes (a task for :func:`run`)."""
    model = make_model(config["width"], config["depth"])
    optimizer = SINGD(
        model,
        lr=1e-3,
        lr_cov=1e-2,
        damping=1e-1,
        T=2,
        structures=config["structures"],
        distribute=config["mode"],
    )
    generator = torch.Generator().manual_seed(1)
    batch = config["batch"]
    local = batch // world
    times: dict[str, list[float]] = {"update": [], "other": []}
    bytes_: dict[str, list[int]] = {"update": [], "other": []}
    for step in range(config["warmup"] + 2 * config["repeats"]):
        x = torch.randn(batch, config["width"], generator=generator)
        x = x[rank * local : (rank + 1) * local]
        y = torch.randint(0, 10, (batch,), generator=generator)[rank * local : (rank + 1) * local]
        stats = optimizer.communication
        before = stats.total_bytes if stats else 0
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        optimizer.zero_grad()
        functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        elapsed = time.perf_counter() - start
        if step < config["warmup"]:
            continue
        kind = "update" if step % 2 == 0 else "other"
        times[kind].append(elapsed)
        bytes_[kind].append((stats.total_bytes if stats else 0) - before)
    return {"times": times, "bytes": bytes_}


def _worker(rank: int, world: int, port: int, config: dict[str, Any], out: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group("gloo", rank=rank, world_size=world)
    result = measure(rank, world, config)
    torch.save(result, Path(out) / f"{rank}.pt")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


def run(world: int, config: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`measure` in ``world`` processes; combine their timings."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_worker, args=(world, _free_port(), config, out), nprocs=world, join=True)
        results = [torch.load(Path(out) / f"{r}.pt") for r in range(world)]
    summary: dict[str, Any] = {}
    for kind in ("update", "other"):
        slowest = [max(r["times"][kind][i] for r in results) for i in range(config["repeats"])]
        summary[f"{kind}_ms"] = 1e3 * statistics.median(slowest)
        summary[f"{kind}_bytes"] = int(statistics.median(results[0]["bytes"][kind]))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--structures", nargs="+", default=["dense", "hierarchical15_15"])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    base = {"width": args.width, "depth": 4, "batch": 64, "warmup": 2, "repeats": 5}
    if args.quick:
        base = {"width": 48, "depth": 2, "batch": 8, "warmup": 1, "repeats": 2}
    rows = []
    for structure in args.structures:
        for world in args.processes:
            for mode in ("replicate", "split") if world > 1 else ("replicate",):
                config = {**base, "structures": (structure, structure), "mode": mode}
                summary = run(world, config)
                rows.append({"structure": structure, "processes": world, "mode": mode, **summary})
                print(
                    f"{structure:>18} {world} {mode:>9}: update {summary['update_ms']:8.1f} ms "
                    f"({summary['update_bytes'] / 1e6:6.2f} MB), other {summary['other_ms']:8.1f} "
                    f"ms ({summary['other_bytes'] / 1e6:6.2f} MB)",
                    flush=True,
                )
    meta = {
        "model": f"MLP {base['width']}x{base['depth']}-10, batch {base['batch']}, T=2",
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "quick": args.quick,
    }
    if not args.quick:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
