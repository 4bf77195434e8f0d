"""Structured kernels of this checkout against those of an earlier git revision.

Loads ``src/structmat`` of the revision ``--before`` (``git archive``) as a second,
separate copy of the package and times every kernel that an optimizer step uses,
before and after, alternately in one process with ``torch.set_num_threads(1)`` (median
of repeats), at the shapes of ``benchmarks/optimizer_step.py``:

- MLP 784-512-512-512-10, batch 128: ``from_inner(X)`` with ``X`` of shape
  ``(d, 128)`` (a transposed view), the natural-gradient products ``A @ X`` and
  ``A.T @ X`` with ``X`` of shape ``(d_K, d_C)`` or ``(d_C, d_K)`` in both layouts,
  and the update's ``A.from_inner()`` and ``A @ B``;
- CNN on 32x32 inputs, batch 64: ``from_inner(X)`` of the convolutions' patches
  (``(d, batch x positions)``, contiguous) and of the linear layers.

Prints, per structure, the times and the ratio after / before (below 1 is faster),
and writes JSON (keeping the structures of an earlier run against the same revision).
On a shared machine single runs can take several times as long when the process is
preempted (a time slice of a few milliseconds); the ratio of the fastest runs is
printed as well, and more repeats keep the median stable.

Usage::

    python benchmarks/kernel_changes.py --before 8c7b158
    python benchmarks/kernel_changes.py --before main --structures triltoeplitz
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

import structmat

STRUCTURES = [
    "dense",
    "diagonal",
    "block30diagonal",
    "hierarchical15_15",
    "transposedhierarchical15_15",
    "triltoeplitz",
    "triutoeplitz",
    "triltopleftdiag",
    "trilbottomrightdiag",
]
#: (label, d, n, layout): ``C`` a contiguous ``X``, ``T`` a transposed view.
INNER_SHAPES = [
    ("mlp", 785, 128, "T"),
    ("mlp", 513, 128, "T"),
    ("mlp", 512, 128, "T"),
    ("cnn", 28, 65536, "C"),
    ("cnn", 289, 16384, "C"),
    ("cnn", 32, 65536, "C"),
    ("cnn", 64, 16384, "C"),
    ("cnn", 4097, 64, "T"),
    ("cnn", 129, 64, "T"),
]
PRODUCT_SHAPES = [
    ("mlp", 785, 512, "T"),
    ("mlp", 785, 512, "C"),
    ("mlp", 513, 512, "T"),
    ("mlp", 513, 512, "C"),
    ("mlp", 512, 785, "T"),
    ("mlp", 512, 785, "C"),
    ("cnn", 289, 64, "T"),
    ("cnn", 4097, 128, "T"),
    ("cnn", 128, 4097, "C"),
]
UPDATE_DIMS = [("mlp", 785), ("mlp", 513), ("cnn", 289), ("cnn", 4097)]
#: Dense kernels other than ``from_inner(X)`` did not change; their d^3 update is skipped.
DENSE_OPS = {"from_inner(X)"}


def load_revision(revision: str) -> ModuleType:
    """Import ``src/structmat`` of a git revision as a package separate from ``structmat``."""
    root = Path(__file__).resolve().parent.parent
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "src/structmat"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="structmat_before_"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    current = {k: v for k, v in sys.modules.items() if k.split(".")[0] == "structmat"}
    for key in current:
        del sys.modules[key]
    sys.path.insert(0, str(folder / "src"))
    try:
        before = importlib.import_module("structmat")
    finally:
        sys.path.pop(0)
        for key in [k for k in sys.modules if k.split(".")[0] == "structmat"]:
            del sys.modules[key]
        sys.modules.update(current)
    return before


def paired_times(
    first: Callable[[], object], second: Callable[[], object], repeats: int
) -> tuple[list[float], list[float]]:
    """Times of two functions run alternately (after one warm-up run each)."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return times


def member_tensors(name: str, dim: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Stored tensors of ``I + N``, stored entries of ``N`` in ``[-1/(2d), 1/(2d)]``, float32."""
    cls = structmat.get_structure(name)
    tensors = {
        key: (torch.rand(shape, generator=generator) - 0.5) / dim
        for key, shape in cls.tensor_shapes(dim).items()
    }
    return cls(**tensors).diag_add_(1.0).tensors()


def operand(d: int, n: int, layout: str, generator: torch.Generator) -> torch.Tensor:
    X = torch.randn(d, n, generator=generator)
    return X.mT.contiguous().mT if layout == "T" else X


def cases(name: str) -> list[tuple[str, str, int, int, str]]:
    """``(model, op, d, n, layout)`` for one structure."""
    out = [(label, "from_inner(X)", d, n, lay) for label, d, n, lay in INNER_SHAPES]
    for label, d, n, lay in PRODUCT_SHAPES:
        out += [(label, "A@X", d, n, lay), (label, "A.T@X", d, n, lay)]
    for label, d in UPDATE_DIMS:
        out += [(label, "from_inner()", d, 0, ""), (label, "A@B", d, 0, "")]
    if name == "dense":
        out = [case for case in out if case[1] in DENSE_OPS]
    return out


def run_case(
    name: str, op: str, d: int, n: int, layout: str, before: ModuleType, repeats: int
) -> tuple[list[float], list[float]]:
    generator = torch.Generator().manual_seed(d + n)
    tensors = member_tensors(name, d, generator)
    new = structmat.get_structure(name)(**tensors)
    old = before.get_structure(name)(**{key: t.clone() for key, t in tensors.items()})
    X = operand(d, n, layout, generator) if n else None
    calls: dict[str, Callable[[Any], Callable[[], object]]] = {
        "from_inner(X)": lambda A: lambda: A.from_inner(X),
        "A@X": lambda A: lambda: A @ X,
        "A.T@X": lambda A: lambda: A.rmatmat(X),
        "from_inner()": lambda A: lambda: A.from_inner(),
        "A@B": lambda A: lambda: A @ A,
    }
    return paired_times(calls[op](old), calls[op](new), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="git revision to compare with")
    parser.add_argument("--structures", nargs="+", default=STRUCTURES)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per kernel (median)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / "kernel_changes.json",
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    before = load_revision(args.before)
    results: dict[str, list[dict[str, Any]]] = {}
    print(
        f"after / before ({args.before}): median and fastest of {args.repeats}; 1 thread; float32"
    )
    print(
        f"{'structure':<29}{'model':<6}{'op':<15}{'d':>6}{'n':>7}{'X':>3}"
        f"{'before ms':>11}{'after ms':>10}{'ratio':>8}{'fastest':>9}"
    )
    for name in args.structures:
        rows = results[name] = []
        for model, op, d, n, layout in cases(name):
            before_times, after_times = run_case(name, op, d, n, layout, before, args.repeats)
            t_before, t_after = statistics.median(before_times), statistics.median(after_times)
            fastest = min(after_times) / min(before_times)
            rows.append(
                {
                    "model": model,
                    "op": op,
                    "d": d,
                    "n": n,
                    "layout": layout,
                    "repeats": args.repeats,
                    "before": t_before,
                    "after": t_after,
                    "ratio": t_after / t_before,
                    "before_min": min(before_times),
                    "after_min": min(after_times),
                    "ratio_min": fastest,
                }
            )
            print(
                f"{name:<29}{model:<6}{op:<15}{d:>6}{n or '':>7}{layout:>3}"
                f"{t_before * 1e3:>11.3f}{t_after * 1e3:>10.3f}{t_after / t_before:>8.2f}"
                f"{fastest:>9.2f}",
                flush=True,
            )
    meta = {
        "before": args.before,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": 1,
        "dtype": "float32",
    }
    if args.out.exists():  # keep the structures of earlier runs unless measured again
        stored = json.loads(args.out.read_text())
        if stored["meta"]["before"] == args.before:
            results = {**stored["results"], **results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
