"""Direct (blocked GEMM) triangular Toeplitz kernels and the routes that use them.

Every kernel is compared with a dense float64 computation; in float32 every entry of
a direct product must meet the rounding-error bound of a plain sum of products, which
the FFT route misses on small entries. The direct routes' scratch memory is bounded
by the size of the operand.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor

from structmat import TrilToeplitz, TriuToeplitz
from structmat import _toeplitz_direct as direct
from structmat._toeplitz_kernels import anticausal_correlation, causal_convolution
from structmat.testing import LargestAllocation, random_tensor
from structmat.toeplitz import TriangularToeplitz

CLASSES = [TrilToeplitz, TriuToeplitz]
classes = pytest.mark.parametrize("cls", CLASSES)
N = direct.BLOCK_ROWS  # the fewest columns the direct routes take


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-10) -> None:
    scale = 1.0 + float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def lower_dense(c: Tensor) -> Tensor:
    """Dense lower-triangular Toeplitz matrix with first column ``c``, entry by entry."""
    d = c.shape[0]
    out = torch.zeros(d, d, dtype=c.dtype)
    for i in range(d):
        out[i, : i + 1] = c[: i + 1].flip(0)
    return out


def upper_lag_sums(mat: Tensor) -> Tensor:
    """``u_t = sum_i mat[i, i + t]`` for ``t < mat.shape[1]``, diagonal by diagonal."""
    return torch.stack([mat.diagonal(t).sum() for t in range(mat.shape[1])])


def projection(mat: Tensor) -> Tensor:
    """Toeplitz coefficients: (k-th lower + k-th upper diagonal sum) / (d - k)."""
    d = mat.shape[0]
    pairs = [2 * mat.diagonal().sum() / (2 * d)]
    pairs += [(mat.diagonal(k).sum() + mat.diagonal(-k).sum()) / (d - k) for k in range(1, d)]
    return torch.stack(pairs)


def direct_columns(dim: int) -> int:
    """The fewest columns for which a ``dim``-row operand in any layout is multiplied directly."""
    return max(N, -(-dim // direct.DIRECT_PRODUCT_MAX_ROWS_PER_COLUMN))


def layout(X: Tensor, transposed: bool) -> Tensor:
    """``X`` stored row by row, or column by column (a transposed view)."""
    return X.mT.contiguous().mT if transposed else X.contiguous()


# ------------------------------------------------------------ the kernels
@pytest.mark.parametrize("dim", [1, 2, 63, 64, 65, 130, 200])
@pytest.mark.parametrize("transposed", [False, True])
def test_lower_product_matches_dense(dim: int, transposed: bool) -> None:
    c = random_tensor((dim,), seed=dim)
    L = lower_dense(c)
    for n in (1, 5, N):
        X = layout(random_tensor((dim, n), seed=n), transposed)
        close(direct.lower_product(c, X, transpose=False), L @ X)
        close(direct.lower_product(c, X, transpose=True), L.T @ X)


@pytest.mark.parametrize("dim", [1, 3, 64, 100])
def test_blocks_of_the_lower_matrix(dim: int) -> None:
    c = random_tensor((dim,), seed=1)
    L = lower_dense(c)
    for size in sorted({1, min(3, dim), dim}):
        assert torch.equal(direct.lower_rows(c, size), L[dim - size :])
        assert torch.equal(direct.lower_columns(c, size), L[:, :size])


@pytest.mark.parametrize("dim", [1, 5, 64, 130])
def test_row_blocks_cover_the_range_short_block_first(dim: int) -> None:
    for block in (1, 7, 64, 200):
        blocks = direct.row_blocks(dim, min(block, dim))
        assert blocks[0][0] == 0 and blocks[-1][1] == dim
        assert all(e == s2 for (_, e), (s2, _) in itertools.pairwise(blocks))
        sizes = [e - s for s, e in blocks]
        assert all(size == min(block, dim) for size in sizes[1:]) and sizes[0] > 0


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (7, 3), (5, 5), (64, 200)])
def test_upper_diagonal_sums(shape: tuple[int, int]) -> None:
    M = random_tensor(shape, seed=sum(shape))
    close(direct.upper_diagonal_sums(M), upper_lag_sums(M))
    close(direct.upper_diagonal_sums(M.mT.contiguous().mT), upper_lag_sums(M))


@pytest.mark.parametrize("dim", [1, 2, 64, 65, 150])
@pytest.mark.parametrize("transposed", [False, True])
def test_gram_lag_sums_match_dense(dim: int, transposed: bool) -> None:
    for n in (1, 4, N):
        X = layout(random_tensor((dim, n), seed=dim + n), transposed)
        close(direct.gram_lag_sums(X), upper_lag_sums(X @ X.T))


def test_kernel_gradients() -> None:
    c = random_tensor((9,), seed=0).requires_grad_(True)
    X = random_tensor((9, 4), seed=1).requires_grad_(True)
    for transpose in (False, True):
        assert torch.autograd.gradcheck(
            lambda c, X, t=transpose: direct.lower_product(c, X, transpose=t), (c, X)
        )
    assert torch.autograd.gradcheck(direct.gram_lag_sums, (X,))


# ------------------------------------------------- the structures' routes
@classes
@pytest.mark.parametrize("transposed", [False, True])
def test_direct_products_match_dense(cls: type[TriangularToeplitz], transposed: bool) -> None:
    limit = direct.DIRECT_PRODUCT_MAX_DIM_COLUMNS if transposed else direct.DIRECT_PRODUCT_MAX_DIM
    for dim in (1, 37, limit):
        A = cls(random_tensor((dim,), seed=dim))
        a = A.to_dense()
        X = layout(random_tensor((dim, direct_columns(dim)), seed=2), transposed)
        assert direct.use_direct_product(X)
        close(A @ X, a @ X)
        close(A.rmatmat(X), a.T @ X)
        close(X.T @ A, X.T @ a)


@classes
def test_products_past_the_crossover_match_dense(cls: type[TriangularToeplitz]) -> None:
    dim = direct.DIRECT_PRODUCT_MAX_DIM_COLUMNS + 1
    A = cls(random_tensor((dim,), seed=3))
    a = A.to_dense()
    X = layout(random_tensor((dim, N), seed=4), transposed=True)
    assert not direct.use_direct_product(X)
    close(A @ X, a @ X)
    close(A.rmatmat(X), a.T @ X)


@classes
@pytest.mark.parametrize(
    ("dim", "n", "route"),
    [
        (1, N, "gram"),
        (20, 8 * 20, "gram"),
        (40, N, "lags"),
        (96, N, "lags"),
        (97, N, "fft"),
        (direct.DIRECT_LAGS_MAX_DIM, 256, "lags"),
        (direct.DIRECT_LAGS_MAX_DIM + 1, 256, "fft"),
        (30, 7, "fft"),
    ],
)
def test_from_inner_routes_match_dense(
    cls: type[TriangularToeplitz], dim: int, n: int, route: str
) -> None:
    gram_first = direct.use_gram_first(dim, n)
    lags = not gram_first and direct.use_direct_lags(dim, n)
    assert route == ("gram" if gram_first else "lags" if lags else "fft")
    A = cls(random_tensor((dim,), seed=dim))
    a = A.to_dense()
    for transposed in (False, True):
        X = layout(random_tensor((dim, n), seed=n), transposed)
        Y = a.T @ X
        close(A.from_inner(X).coefficients, projection(Y @ Y.T))
        close(cls.from_mat_inner(X).coefficients, projection(X @ X.T))


@classes
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_direct_routes_in_low_precision(cls: type[TriangularToeplitz], dtype: torch.dtype) -> None:
    """Within a few unit roundoffs (relative to the norm) of float64 on the same inputs."""
    eps = torch.finfo(dtype).eps
    for dim, n in ((40, N), (16, 8 * 16)):
        A = cls((torch.eye(1, dim)[0] + random_tensor((dim,), seed=dim) / dim).to(dtype))
        X = random_tensor((dim, n), seed=n).to(dtype)
        A64, X64 = A.to(torch.float64), X.double()
        pairs = {
            "matmat": (A @ X, A64 @ X64),
            "rmatmat": (A.rmatmat(X), A64.rmatmat(X64)),
            "from_inner": (A.from_inner(X).coefficients, A64.from_inner(X64).coefficients),
            "from_mat_inner": (
                cls.from_mat_inner(X).coefficients,
                cls.from_mat_inner(X64).coefficients,
            ),
        }
        for op, (low, exact) in pairs.items():
            assert low.dtype == dtype, f"{op} returned {low.dtype}"
            error = torch.linalg.norm(low.double() - exact) / (1.0 + torch.linalg.norm(exact))
            assert error <= 4 * eps, f"{op} in {dtype} at d={dim}: relative error {error:.2e}"


@classes
def test_direct_routes_are_differentiable(cls: type[TriangularToeplitz]) -> None:
    """Gradients through each direct route (fast mode: random projections, n >= 64)."""

    def check(fn, *inputs: Tensor) -> None:
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)

    dim = 6
    c = random_tensor((dim,), seed=5).requires_grad_(True)
    X = random_tensor((dim, N), seed=6).requires_grad_(True)
    assert direct.use_direct_product(X) and direct.use_gram_first(dim, N)
    check(lambda c, X: cls(c) @ X, c, X)
    check(lambda c, X: cls(c).rmatmat(X), c, X)
    check(lambda c, X: cls(c).from_inner(X).coefficients, c, X)
    Xl = random_tensor((3 * dim, N), seed=7).requires_grad_(True)
    cl = random_tensor((3 * dim,), seed=8).requires_grad_(True)
    assert direct.use_direct_lags(3 * dim, N) and not direct.use_gram_first(3 * dim, N)
    check(lambda c, X: cls(c).from_inner(X).coefficients, cl, Xl)
    check(lambda X: cls.from_mat_inner(X).coefficients, Xl)


# ---------------------------------------------------- entrywise accuracy
def graded_operand(dim: int, n: int, small: float = 1e-5, small_first: bool = True) -> Tensor:
    r"""Half of the rows of magnitude ``small`` (the first or the last half), half of 1.

    Entries of :math:`L X` (small rows first) or :math:`L^\top X` (small rows last) in
    that half are sums of small terms only.
    """
    X = random_tensor((dim, n), seed=dim)
    if small_first:
        X[: dim // 2] *= small
    else:
        X[dim // 2 :] *= small
    return X


@pytest.mark.parametrize("dim", [64, 200, direct.DIRECT_PRODUCT_MAX_DIM_COLUMNS])
def test_float32_products_are_accurate_entry_by_entry(dim: int) -> None:
    r"""Every entry within :math:`\gamma_d (|L| |X|)_{ij} + u |y_{ij}|` of the exact value.

    That is the rounding-error bound of a plain sum of ``d`` products, relative to the
    entry itself rather than to the norm of the result. The FFT route, whose error is
    of the order of :math:`u \|c\| \|X\|` in every entry, misses it by orders of
    magnitude on the small entries (checked too, so the bound can fail).
    """
    u = torch.finfo(torch.float32).eps / 2
    gamma = dim * u / (1 - dim * u)
    c32 = (torch.eye(1, dim)[0] + random_tensor((dim,), seed=1) / 4).float()
    L = lower_dense(c32.double())
    for transpose, fft in ((False, causal_convolution), (True, anticausal_correlation)):
        X32 = graded_operand(dim, N, small_first=not transpose).float()
        X = X32.double()
        M = L.T if transpose else L
        exact = M @ X
        bound = gamma * (M.abs() @ X.abs()) + u * exact.abs()
        direct_error = (direct.lower_product(c32, X32, transpose).double() - exact).abs()
        assert bool((direct_error <= bound).all()), float((direct_error / bound).max())
        fft_error = (fft(c32, X32.mT).mT.double() - exact).abs()
        assert float((fft_error / bound).max()) > 10.0
    X32 = graded_operand(dim, direct_columns(dim)).float()
    X = X32.double()
    for cls in CLASSES:
        assert direct.use_direct_product(X32)
        A = cls(c32)
        M = A.to_dense().double()
        exact = M @ X
        bound = gamma * (M.abs() @ X.abs()) + u * exact.abs()
        assert bool(((A @ X32).double() - exact).abs().le(bound).all())
        exact = M.T @ X
        bound = gamma * (M.abs().T @ X.abs()) + u * exact.abs()
        assert bool((A.rmatmat(X32).double() - exact).abs().le(bound).all())


def test_float32_lag_sums_are_accurate_entry_by_entry() -> None:
    r"""Each lag sum within :math:`\gamma_{n+d} \sum_{ij} |X_{i,j}| |X_{i+k,j}| + u |r_k|`."""
    dim = 100
    u = torch.finfo(torch.float32).eps / 2
    gamma = (N + dim) * u / (1 - (N + dim) * u)
    X32 = graded_operand(dim, N, small=1e-3).float()
    X = X32.double()
    A = X.abs()
    exact = upper_lag_sums(X @ X.T)
    bound = gamma * upper_lag_sums(A @ A.T) + u * exact.abs()
    error = (direct.gram_lag_sums(X32).double() - exact).abs()
    assert bool((error <= bound).all()), float((error / bound).max())


# --------------------------------------------------------------- memory
@classes
@pytest.mark.parametrize(("dim", "n"), [(90, N), (300, 256), (24, 8 * 24), (64, 8 * 64)])
def test_direct_routes_allocate_at_most_the_operand(
    cls: type[TriangularToeplitz], dim: int, n: int
) -> None:
    """Scratch memory of the direct routes is bounded by the size of ``X``.

    Their ``b x d`` blocks of the Toeplitz matrix hold fewer elements than ``X``
    (``b <= n``), and ``from_inner(X)`` forms the ``d x d`` matrix ``X X^T`` only for
    ``n >= 8 d``, where it is at most an eighth of ``X``: the one exception to the
    law that no operation allocates ``d x d`` elements.
    """
    A = cls(random_tensor((dim,), seed=0))
    assert direct.use_direct_lags(dim, n) or direct.use_gram_first(dim, n)
    for transposed in (False, True):
        X = layout(random_tensor((dim, n), seed=1), transposed)
        assert direct.use_direct_product(X)
        for op in (A.__matmul__, A.rmatmat, A.from_inner, cls.from_mat_inner):
            with LargestAllocation() as recorder:
                op(X)
            assert recorder.largest <= X.numel(), op
        if direct.use_gram_first(dim, n):
            assert dim * dim <= X.numel() // 8


@classes
@pytest.mark.parametrize(("dim", "n"), [(10, 20), (40, 40), (64, 64)])
def test_small_products_are_accurate_entry_by_entry(
    cls: type[TriangularToeplitz], dim: int, n: int
) -> None:
    r"""Below ``BLOCK_ROWS`` columns, small operands go direct, accurate entry by entry.

    Every entry of ``A^T X`` is within :math:`\gamma_d |A^\top| |X|` of the exact one
    (an FFT's error is relative to a whole column's norm and misses this on the small
    entries of the first rows).
    """
    A = cls(random_tensor((dim,), seed=dim, dtype=torch.float32).abs())
    X = random_tensor((dim, n), seed=n, dtype=torch.float32).abs()
    assert direct.use_direct_product(X)
    a, x = A.to_dense().double(), X.double()
    u = torch.finfo(torch.float32).eps / 2
    bound = dim * u / (1 - dim * u) * (a.abs().T @ x.abs()) + u * (a.T @ x).abs()
    assert bool(((A.rmatmat(X).double() - a.T @ x).abs() <= bound).all())
    bound = dim * u / (1 - dim * u) * (a.abs() @ x.abs()) + u * (a @ x).abs()
    assert bool(((A @ X).double() - a @ x).abs().le(bound).all())
