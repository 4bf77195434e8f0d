"""Structured kernels against the dense computation of the same thing.

For every structure and dimension ``d`` this measures the median time of

- ``A @ X`` and ``A.T @ X`` with ``X`` of shape ``(d, 512)``,
- ``A @ A`` (same structure),
- ``A.from_inner(X)`` and ``from_mat_inner(X)`` with ``X`` of shape ``(d, 256)``,
- ``A.inv()``,

and of the dense computation of each (``a @ X``, ``a.T @ X``, ``a @ a``,
``from_dense((a^T X)(a^T X)^T)``, ``from_dense(X X^T)``, ``torch.linalg.inv(a)``),
all in one process with ``torch.set_num_threads(1)``. It prints a table of times
and ratios (structured / dense; below 1 is faster) and writes JSON.

Usage::

    python benchmarks/structmat_kernels.py               # d in 512, 2048, 4096
    python benchmarks/structmat_kernels.py --dims 512 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import structmat

STRUCTURES = [
    "diagonal",
    "block30diagonal",
    "hierarchical15_15",
    "transposedhierarchical15_15",
    "triltoeplitz",
    "triutoeplitz",
    "triltopleftdiag",
    "trilbottomrightdiag",
    "triutopleftdiag",
    "triubottomrightdiag",
    "tril",
    "triu",
]
OPS = ["A@X", "A.T@X", "A@A", "from_inner", "from_mat_inner", "inv"]


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def well_conditioned(name: str, dim: int, generator: torch.Generator) -> structmat.StructuredMatrix:
    """``I + N`` with stored entries of ``N`` in ``[-1/(2d), 1/(2d)]`` (invertible)."""
    cls = structmat.get_structure(name)
    tensors = {
        key: (torch.rand(shape, generator=generator) - 0.5) / dim
        for key, shape in cls.tensor_shapes(dim).items()
    }
    return cls(**tensors).diag_add_(1.0)


def dense_times(dim: int, repeats: int, generator: torch.Generator) -> dict[str, object]:
    """Time the dense operations once per dimension (shared by every structure)."""
    a = well_conditioned("dense", dim, generator).to_dense()
    X = torch.randn(dim, 512, generator=generator)
    Xi = torch.randn(dim, 256, generator=generator)
    return {
        "a": a,
        "Xi": Xi,
        "X": X,
        "A@X": median_time(lambda: a @ X, repeats),
        "A.T@X": median_time(lambda: a.T @ X, repeats),
        "A@A": median_time(lambda: a @ a, repeats),
        "inv": median_time(lambda: torch.linalg.inv(a), repeats),
        "inner_products": median_time(lambda: (a.T @ Xi) @ (a.T @ Xi).T, repeats),
        "mat_inner_product": median_time(lambda: Xi @ Xi.T, repeats),
    }


def structure_times(
    name: str, dim: int, repeats: int, dense: dict[str, object], generator: torch.Generator
) -> dict[str, dict[str, float]]:
    """Time every op of ``name`` and complete the dense formulas with its projection."""
    cls = structmat.get_structure(name)
    A = well_conditioned(name, dim, generator)
    X, Xi, a = dense["X"], dense["Xi"], dense["a"]
    gram = a @ a.T  # any dense d x d input; the projection cost does not depend on values
    projection = median_time(lambda: cls.from_dense(gram), repeats)
    structured = {
        "A@X": median_time(lambda: A @ X, repeats),
        "A.T@X": median_time(lambda: A.rmatmat(X), repeats),
        "A@A": median_time(lambda: A @ A, repeats),
        "from_inner": median_time(lambda: A.from_inner(Xi), repeats),
        "from_mat_inner": median_time(lambda: cls.from_mat_inner(Xi), repeats),
        "inv": median_time(lambda: A.inv(), repeats),
    }
    reference = {
        "A@X": dense["A@X"],
        "A.T@X": dense["A.T@X"],
        "A@A": dense["A@A"],
        "from_inner": dense["inner_products"] + projection,
        "from_mat_inner": dense["mat_inner_product"] + projection,
        "inv": dense["inv"],
    }
    return {
        op: {
            "structured": structured[op],
            "dense": reference[op],
            "ratio": structured[op] / reference[op],
        }
        for op in OPS
    }


def check_targets(
    results: dict[str, dict[str, dict[str, dict[str, float]]]], dim: int
) -> list[str]:
    """Return the missed targets at dimension ``dim`` (empty when all hold)."""
    missed = []
    key = str(dim)
    for name, by_dim in results.items():
        if key not in by_dim:
            continue
        for op, entry in by_dim[key].items():
            if entry["ratio"] >= 1.0:
                missed.append(f"{name} {op}: {entry['ratio']:.2f}x dense (target < 1)")
        if "toeplitz" in name and by_dim[key]["A@X"]["ratio"] > 1 / 3:
            missed.append(
                f"{name} A@X: {1 / by_dim[key]['A@X']['ratio']:.1f}x faster (target >= 3x)"
            )
        if by_dim[key]["from_inner"]["ratio"] > 1 / 10:
            speedup = 1 / by_dim[key]["from_inner"]["ratio"]
            missed.append(f"{name} from_inner: {speedup:.1f}x faster (target >= 10x)")
    return missed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048, 4096])
    parser.add_argument("--structures", nargs="+", default=STRUCTURES)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per op (median)")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "structmat_kernels.json"
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, dict[str, dict[str, float]]]] = {
        name: {} for name in args.structures
    }
    header = f"{'structure':<28}{'d':>6}" + "".join(f"{op:>16}" for op in OPS)
    print("time structured / time dense (below 1 is faster); torch.set_num_threads(1)")
    print(header)
    for dim in args.dims:
        dense = dense_times(dim, args.repeats, generator)
        dense_row = "".join(f"{dense[op] * 1e3:>14.2f}ms" for op in ("A@X", "A.T@X", "A@A"))
        print(f"{'dense (absolute)':<28}{dim:>6}{dense_row}")
        for name in args.structures:
            entry = structure_times(name, dim, args.repeats, dense, generator)
            results[name][str(dim)] = entry
            print(f"{name:<28}{dim:>6}" + "".join(f"{entry[op]['ratio']:>16.3f}" for op in OPS))

    target_dim = 2048 if 2048 in args.dims else args.dims[-1]
    missed = check_targets(results, target_dim)
    print(
        f"\ntargets at d = {target_dim}: " + ("all met" if not missed else f"{len(missed)} missed")
    )
    for line in missed:
        print("  missed:", line)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": 1,
        "repeats": args.repeats,
    }
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
