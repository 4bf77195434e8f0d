"""Direct (blocked GEMM) against FFT kernels of the triangular Toeplitz structures.

For ``d`` from 32 to 2048 and a few column counts ``n`` this times, interleaved
(direct, FFT, direct, ...) in one process with ``torch.set_num_threads(1)``:

- ``product``: ``L @ X`` and ``L.T @ X`` (mean of both), ``X`` of shape ``(d, n)``;
- ``lags``: the lag sums of ``X`` (``from_mat_inner``);
- ``inner``: the lag sums of ``L.T @ X`` (``from_inner`` when ``n < 2 d``);
- ``gram``: ``from_inner`` through ``X X^T`` against FFTs, for ``n = 8 d`` and
  ``n = 64 d``;

for ``X`` contiguous (``C``) and for ``X`` a transposed view (``T``, the layout of
``grad.mT`` and of most operands in an optimizer step), and prints the ratio
direct / FFT (below 1: direct is faster) with the crossover: the smallest ``d``
from which the direct kernel is slower at every larger ``d``. The constants in
``structmat._toeplitz_direct`` come from these figures. Rows of earlier runs in the
JSON file are kept unless measured again.

Usage::

    python benchmarks/toeplitz_crossover.py                       # float32, n in 64 512
    python benchmarks/toeplitz_crossover.py --dtype float64 --columns 128
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

from structmat._gram import gram
from structmat._toeplitz_direct import gram_lag_sums, lower_product, upper_diagonal_sums
from structmat._toeplitz_kernels import (
    anticausal_correlation,
    causal_convolution,
    filtered_lag_sums,
    lag_sums,
)

DIMS = [32, 64, 128, 256, 384, 512, 640, 768, 1024, 1536, 2048]
#: Largest operand (elements) timed: the ``gram`` rows skip larger ``d n``.
MAX_ELEMENTS = 2**25


def paired_medians(
    first: Callable[[], object], second: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median times of two functions run alternately (after one warm-up run each)."""
    first(), second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def fft_product(c: torch.Tensor, X: torch.Tensor, transpose: bool) -> torch.Tensor:
    """The FFT route of the structures' products, compact copy included."""
    kernel = anticausal_correlation if transpose else causal_convolution
    return kernel(c, X.mT).contiguous().mT


def operand(d: int, n: int, layout: str, dtype: torch.dtype, gen: torch.Generator):
    """Coefficients and ``X`` of shape ``(d, n)``, contiguous (``C``) or transposed (``T``)."""
    c = torch.randn(d, generator=gen, dtype=dtype) / d
    X = torch.randn(d, n, generator=gen, dtype=dtype)
    if layout == "T":
        X = X.mT.contiguous().mT
    return c, X


def ratios(kind: str, d: int, n: int, layout: str, dtype: torch.dtype, repeats: int) -> float:
    """Direct time / FFT time of one kernel at one shape."""
    gen = torch.Generator().manual_seed(d * 7919 + n)
    if kind == "gram":  # n is the number of columns per row
        n *= d
    c, X = operand(d, n, layout, dtype, gen)
    if kind == "product":
        pairs = [
            (
                lambda t=t: lower_product(c, X, transpose=t),
                lambda t=t: fft_product(c, X, transpose=t),
            )
            for t in (False, True)
        ]
    elif kind == "lags":
        pairs = [(lambda: gram_lag_sums(X), lambda: lag_sums(X.mT))]
    elif kind == "inner":
        pairs = [
            (
                lambda: gram_lag_sums(lower_product(c, X, transpose=True)),
                lambda: filtered_lag_sums(c, X.mT, causal=False),
            )
        ]
    else:  # gram

        def through_gram() -> object:
            # small products of S go by FFT in the structures; equal in cost here
            inner = lower_product(c, lower_product(c, gram(X), True).mT, True)
            return upper_diagonal_sums(inner) + upper_diagonal_sums(inner.mT)

        pairs = [(through_gram, lambda: filtered_lag_sums(c, X.mT, causal=False))]
    total_direct = total_fft = 0.0
    for direct, fft in pairs:
        t_direct, t_fft = paired_medians(direct, fft, repeats)
        total_direct, total_fft = total_direct + t_direct, total_fft + t_fft
    return total_direct / total_fft


def crossover(row: dict[int, float]) -> int | None:
    """The smallest ``d`` from which the direct kernel is slower at every larger ``d``."""
    slower_from = None
    for d in sorted(row):
        slower = row[d] >= 1.0
        slower_from = (slower_from or d) if slower else None
    return slower_from


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--columns", type=int, nargs="+", default=[64, 128, 512])
    parser.add_argument(
        "--gram-ratios", type=int, nargs="+", default=[8, 64], help="n / d for the gram rows"
    )
    parser.add_argument("--dims", type=int, nargs="+", default=DIMS)
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["product", "lags", "inner", "gram"],
        choices=["product", "lags", "inner", "gram"],
    )
    parser.add_argument("--layouts", nargs="+", default=["C", "T"], choices=["C", "T"])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per kernel (median)")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).parent / "results" / "toeplitz_crossover.json",
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    print(f"time direct / time FFT (below 1: direct is faster); {args.dtype}, 1 thread")
    print(f"{'kernel':<9}{'X':>3}{'n':>6}" + "".join(f"{d:>7}" for d in args.dims) + "  crossover")
    results: dict[str, dict[str, float]] = {}
    for kind in args.kinds:
        for layout in args.layouts:
            for n in args.gram_ratios if kind == "gram" else args.columns:
                dims = [d for d in args.dims if kind != "gram" or n * d * d <= MAX_ELEMENTS]
                row = {d: ratios(kind, d, n, layout, dtype, args.repeats) for d in dims}
                label = f"{n}d" if kind == "gram" else str(n)
                results[f"{kind}/{layout}/{label}"] = {str(d): r for d, r in row.items()}
                cross = crossover(row)
                print(
                    f"{kind:<9}{layout:>3}{label:>6}"
                    + "".join(f"{row[d]:>7.2f}" if d in row else f"{'-':>7}" for d in args.dims)
                    + f"  {cross if cross is not None else '-':>9}",
                    flush=True,
                )
    meta = {
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": 1,
        "repeats": args.repeats,
        "dtype": args.dtype,
    }
    if args.out.exists():  # keep the rows of earlier runs (other kinds, layouts or n)
        results = {**json.loads(args.out.read_text())["ratios"], **results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "ratios": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
