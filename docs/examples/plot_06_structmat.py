"""
Structured matrices on their own
================================

``structmat`` works without the optimizer: it is a small library of square matrix
structures, each closed under ``+``, scalar ``*``, ``@`` and inversion, with kernels
that never build the ``d x d`` matrix. This example builds a few structures, checks
the closure properties against dense arithmetic and times a triangular Toeplitz
product against the dense one.
"""

# %%
# Building structures
# -------------------
#
# Look a structure up by name. Parametric families (``block{b}diagonal``,
# ``hierarchical{k1}_{k2}``, ...) are listed as templates; any concrete size works.

import time
from collections.abc import Callable

import matplotlib.pyplot as plt
import torch

import structmat

torch.manual_seed(0)
print(structmat.available_structures())

Toeplitz = structmat.get_structure("triltoeplitz")
Blocks = structmat.get_structure("block4diagonal")

# %%
# There are three ways to get a member of a structure: project a dense matrix with
# ``from_dense``, pass the stored tensors to the constructor, or start from ``zeros``
# / ``eye``. ``tensor_shapes`` tells what a ``d x d`` member stores.

d = 6
A = Toeplitz.from_dense(torch.randn(d, d))
print(Toeplitz.tensor_shapes(d))
print(A.to_dense())

B = Blocks(
    **{name: torch.randn(shape) for name, shape in Blocks.tensor_shapes(d).items()}
)
print(B.to_dense())
print(Blocks.eye(d).to_dense().equal(torch.eye(d)))

# %%
# Closure under ``+``, ``*`` and ``@``
# ------------------------------------
#
# Sums, scalar multiples and products of two members are members again, computed
# from the stored tensors. The results agree with dense arithmetic.

A2 = Toeplitz.from_dense(torch.randn(d, d))
for label, result, expected in [
    ("A + A2", A + A2, A.to_dense() + A2.to_dense()),
    ("3 * A", 3.0 * A, 3.0 * A.to_dense()),
    ("A @ A2", A @ A2, A.to_dense() @ A2.to_dense()),
]:
    matches = torch.allclose(result.to_dense(), expected, atol=1e-5)
    kind = type(result).__name__
    print(f"{label:>7}: {kind}, equal to the dense result: {matches}")

# %%
# A product with a plain tensor returns a tensor: ``A @ X`` and ``X @ A``; ``A.rmatmat(X)``
# computes :math:`A^\top X` without transposing anything.

X = torch.randn(d, 3)
print(torch.allclose(A @ X, A.to_dense() @ X, atol=1e-5))
print(torch.allclose(A.rmatmat(X), A.to_dense().T @ X, atol=1e-5))

# %%
# Transpose pairs
# ---------------
#
# The transpose of a lower triangular structure is upper triangular, so ``A.T``
# belongs to the *paired* structure, with the same stored numbers. Structures that
# contain the transposes of their members (dense, diagonal, block diagonal) are their
# own pair. Each structure declares this: ``closed_under_transpose`` and
# ``transpose_structure()`` answer without building a matrix.

for name in [
    "triltoeplitz",
    "tril",
    "hierarchical15_15",
    "triltopleftdiag",
    "block30diagonal",
]:
    cls = structmat.get_structure(name)
    M = cls.from_dense(torch.randn(40, 40))
    same = torch.equal(M.T.to_dense(), M.to_dense().T)
    assert type(M.T) is cls.transpose_structure()
    print(
        f"{name:>18} -> {cls.transpose_structure().name:<28} "
        f"closed: {cls.closed_under_transpose!s:<5}  transpose matches: {same}"
    )

# %%
# Inverses
# --------
#
# Every built-in structure is closed under inversion: the inverse of an invertible
# member is a member of the same structure, computed from the stored tensors
# (Newton's iteration on the coefficient series for triangular Toeplitz, block by
# block for block diagonal).

I_plus = Toeplitz.eye(d) + 0.3 * A
inverse = I_plus.inv()
print(type(inverse).__name__)
print(torch.allclose((I_plus @ inverse).to_dense(), torch.eye(d), atol=1e-5))

# %%
# A singular matrix raises :class:`structmat.SingularMatrixError`, which is also a
# :class:`ValueError`:

try:
    Toeplitz.zeros(d).inv()
except structmat.SingularMatrixError as error:
    print("SingularMatrixError:", error)

# %%
# Kernel time against the dense computation
# -----------------------------------------
#
# A lower triangular Toeplitz matrix is a convolution with its first column, so
# ``A @ X`` runs through FFTs in :math:`O(n\, d \log d)` instead of the :math:`O(n\,d^2)`
# of a dense product. Here are both, on one thread, for a block of 32 vectors. The
# dense curve grows with slope 2 on the log-log scale, the Toeplitz one with slope 1
# (the absolute numbers depend on the machine this page was built on).


def best_time(fn: Callable[[], object], repeats: int = 7) -> float:
    """Time ``repeats`` runs of ``fn()`` after a warm-up; return the fastest (s)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


threads = torch.get_num_threads()
torch.set_num_threads(1)
dims = [2**k for k in range(6, 13)]  # 64 ... 4096
toeplitz_times, dense_times = [], []
for dim in dims:
    T = Toeplitz.from_dense(torch.randn(dim, dim))
    dense_T = T.to_dense()
    X = torch.randn(dim, 32)
    toeplitz_times.append(best_time(lambda T=T, X=X: T @ X))
    dense_times.append(best_time(lambda a=dense_T, X=X: a @ X))
torch.set_num_threads(threads)

fig, ax = plt.subplots(figsize=(6, 4))
ax.loglog(dims, [t * 1e3 for t in dense_times], "o-", label="dense a @ X")
ax.loglog(
    dims, [t * 1e3 for t in toeplitz_times], "s-", label="triltoeplitz A @ X (FFT)"
)
ax.set_xscale("log", base=2)
ax.set(
    xlabel="dimension d",
    ylabel="time [ms]",
    title="Product with a d x 32 matrix, 1 thread",
)
ax.grid(True, which="both", alpha=0.3)
ax.legend()
fig.tight_layout()

for dim, t_s, t_d in zip(dims, toeplitz_times, dense_times, strict=True):
    print(f"d = {dim:>5}: Toeplitz {t_s * 1e3:7.3f} ms, dense {t_d * 1e3:7.3f} ms")

# %%
# For small ``d`` the dense product wins (an FFT has a fixed overhead); the crossover
# and the gain at large ``d`` are what ``benchmarks/structmat_kernels.py`` measures
# for every structure and every operation.
