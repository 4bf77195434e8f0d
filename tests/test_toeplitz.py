"""Triangular Toeplitz structures: layout, projection convention, kernels and errors."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import structmat
from structmat import SingularMatrixError, TrilToeplitz, TriuToeplitz
from structmat import _toeplitz_kernels as kernels
from structmat.testing import LargestAllocation
from structmat.toeplitz import TriangularToeplitz
from tests.strategies import random_member, random_tensor

CLASSES = [TrilToeplitz, TriuToeplitz]
classes = pytest.mark.parametrize("cls", CLASSES)


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-10) -> None:
    scale = 1.0 + float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def toeplitz(coefficients: Tensor, upper: bool) -> Tensor:
    """Dense triangular Toeplitz matrix, built entry by entry."""
    d = coefficients.shape[0]
    out = torch.zeros(d, d, dtype=coefficients.dtype)
    for i in range(d):
        for j in range(d):
            lag = j - i if upper else i - j
            if lag >= 0:
                out[i, j] = coefficients[lag]
    return out


def projection(mat: Tensor) -> Tensor:
    """Reference coefficients: (k-th lower + k-th upper diagonal sum) / (d - k), trace / d."""
    d = mat.shape[0]
    coefficients = [mat.diagonal().sum() / d]
    for k in range(1, d):
        coefficients.append((mat.diagonal(k).sum() + mat.diagonal(-k).sum()) / (d - k))
    return torch.stack(coefficients)


# ---------------------------------------------------------------- layout
def test_names_storage_and_registry() -> None:
    assert structmat.get_structure("triltoeplitz") is TrilToeplitz
    assert structmat.get_structure("triutoeplitz") is TriuToeplitz
    assert {"triltoeplitz", "triutoeplitz"} <= set(structmat.available_structures())
    assert TrilToeplitz.tensor_shapes(7) == {"column": (7,)}
    assert TriuToeplitz.tensor_shapes(7) == {"row": (7,)}
    assert issubclass(TrilToeplitz, TriangularToeplitz)
    assert issubclass(TriuToeplitz, TriangularToeplitz)
    assert TrilToeplitz.closed_under_inverse and TriuToeplitz.closed_under_inverse


def test_small_explicit_matrices() -> None:
    c = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    lower = torch.tensor([[1.0, 0, 0], [2, 1, 0], [3, 2, 1]], dtype=torch.float64)
    assert torch.equal(TrilToeplitz(column=c).to_dense(), lower)
    assert torch.equal(TriuToeplitz(row=c).to_dense(), lower.T)
    assert TrilToeplitz(c).shape == torch.Size([3, 3])
    # A @ x = causal convolution; A^T A diagonal sums = sum_p (d - k - p) c_p c_{p+k}
    x = torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64)
    assert torch.equal(TrilToeplitz(c) @ x, torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64))
    gram = lower.T @ lower
    expected = torch.tensor(
        [gram.trace() / 3, 2 * (2 * 1 * 2 + 1 * 2 * 3) / 2, 2 * (1 * 1 * 3) / 1],
        dtype=torch.float64,
    )
    close(TrilToeplitz(c).from_inner().column, expected)
    close(TriuToeplitz(c).from_inner().row, expected)


@classes
@pytest.mark.parametrize("dim", [1, 2, 5, 33])
def test_to_dense_matches_entrywise_definition(cls: type[TriangularToeplitz], dim: int) -> None:
    c = random_tensor((dim,), seed=dim)
    assert torch.equal(cls(c).to_dense(), toeplitz(c, cls.upper))


@classes
def test_transpose_shares_the_coefficients(cls: type[TriangularToeplitz]) -> None:
    A = random_member(cls, 9, seed=0)
    other = TriuToeplitz if cls is TrilToeplitz else TrilToeplitz
    assert type(A.T) is other
    assert A.T.coefficients is A.coefficients
    assert torch.equal(A.T.to_dense(), A.to_dense().T)


# ------------------------------------------------------------ projection
@classes
@pytest.mark.parametrize("dim", [1, 2, 3, 4, 40, 64, 65, 66, 130, 200])
def test_from_dense_averages_mirrored_diagonals(cls: type[TriangularToeplitz], dim: int) -> None:
    S = random_tensor((dim, dim), seed=dim)
    for mat in (S, S + S.T, S.T, 1e3 * torch.triu(S)):
        close(cls.from_dense(mat).coefficients, projection(mat))


@classes
def test_from_dense_is_the_identity_on_both_triangular_toeplitz_structures(
    cls: type[TriangularToeplitz],
) -> None:
    for dim in (1, 6, 70):
        c = random_tensor((dim,), seed=dim)
        for source in CLASSES:
            close(cls.from_dense(source(c).to_dense()).coefficients, c)


def test_from_dense_reads_views_and_half_types() -> None:
    big = random_tensor((60, 60), seed=3)
    for view in (big[5:45, 10:50], big.reshape(-1)[7 : 7 + 900].view(30, 30), big.T):
        close(TrilToeplitz.from_dense(view).column, projection(view))
    half = big.to(torch.bfloat16)
    result = TriuToeplitz.from_dense(half)
    assert result.row.dtype == torch.bfloat16
    close(result.row.double(), projection(half.double()), rtol=1e-2)


@pytest.mark.parametrize("block_rows", [1, 2, 3, 7])
def test_diagonal_sums_for_any_block_size(block_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "DIAGONAL_BLOCK_ROWS", block_rows)
    for dim in (1, 2, 3, 8, 9, 23):
        S = random_tensor((dim, dim), seed=dim)
        upper, lower = kernels.diagonal_sums(S, S.dtype)
        close(upper, torch.stack([S.diagonal(k).sum() for k in range(dim)]))
        close(lower, torch.stack([S.diagonal(-k).sum() for k in range(dim)]))


@pytest.mark.reference
@pytest.mark.filterwarnings("ignore:Calling naive implementation")
@classes
@pytest.mark.parametrize("dim", [1, 2, 7, 64, 129])
def test_from_dense_matches_the_reference_on_symmetric_input(
    cls: type[TriangularToeplitz], dim: int
) -> None:
    lower = pytest.importorskip("singd.structures.triltoeplitz")
    upper = pytest.importorskip("singd.structures.triutoeplitz")
    reference = upper.TriuToeplitzMatrix if cls.upper else lower.TrilToeplitzMatrix
    S = random_tensor((dim, dim), seed=dim)
    sym = S + S.T
    close(cls.from_dense(sym).to_dense(), reference.from_dense(sym).to_dense())
    # The products agree with the reference too (it computes them in float32).
    X = random_tensor((dim, 3), seed=1, dtype=torch.float32)
    ours, theirs = cls.from_dense(sym.float()), reference.from_dense(sym.float())
    close(ours @ X, theirs @ X, rtol=1e-5)
    close(ours.from_inner(X).to_dense(), theirs.from_inner(X).to_dense(), rtol=1e-5)


# --------------------------------------------------------------- kernels
@pytest.mark.parametrize("minimum", [1, 2, 3, 7, 17, 100, 4095, 4097, 10_000])
def test_fast_length_is_the_smallest_even_5_smooth_length(minimum: int) -> None:
    def smooth(n: int) -> bool:
        for p in (2, 3, 5):
            while n % p == 0:
                n //= p
        return n == 1

    length = kernels.fast_length(minimum)
    assert length >= max(minimum, 2) and length % 2 == 0 and smooth(length)
    assert not any(smooth(n) for n in range(max(minimum, 2), length) if n % 2 == 0)


@classes
@pytest.mark.parametrize(
    ("dim", "n"),
    [(1, 1), (1, 3), (2, 1), (5, 4), (128, 1), (129, 1), (128, 2), (300, 1), (300, 5)],
)
def test_products_on_both_kernel_paths(cls: type[TriangularToeplitz], dim: int, n: int) -> None:
    """Direct convolution (one short signal) and FFT agree with dense products."""
    A, B = (random_member(cls, dim, seed) for seed in (0, 1))
    a, b = A.to_dense(), B.to_dense()
    X = random_tensor((dim, n), seed=2)
    close(A @ X, a @ X)
    close(A.rmatmat(X), a.T @ X)
    close(X.T @ A, X.T @ a)
    close((A @ B).to_dense(), a @ b)
    close(cls.from_mat_inner(X).coefficients, projection(X @ X.T))
    close(A.from_inner(X).coefficients, projection((a.T @ X) @ (a.T @ X).T))
    close(A.from_inner().coefficients, projection(a.T @ a))


@pytest.mark.parametrize("dim", [2, 3, 127, 128, 129, 130, 200])
def test_lag_sums_with_and_without_exact_tail(dim: int) -> None:
    for rows in (1, 3):
        first, second = random_tensor((rows, dim), seed=dim), random_tensor((rows, dim), seed=1)
        expected = torch.stack([(first[:, : dim - k] * second[:, k:]).sum() for k in range(dim)])
        close(kernels.lag_sums(first, second), expected)
        auto = torch.stack([(first[:, : dim - k] * first[:, k:]).sum() for k in range(dim)])
        close(kernels.lag_sums(first), auto)


def test_exact_tail_improves_float32_lag_sums() -> None:
    """The last lags, divided by d - k in the projection, keep their relative accuracy."""
    X = random_tensor((3, 2048), seed=0)
    exact = kernels.lag_sums(X)
    low = kernels.lag_sums(X.float()).double()
    tail = slice(2048 - kernels.EXACT_TAIL_LAGS, 2048)
    assert float((low[tail] - exact[tail]).abs().max()) <= 1e-5 * float(exact[tail].abs().max())


@pytest.mark.parametrize("dim", [1, 2, 3, 17, 128, 129, 300])
def test_inverse_series_matches_dense_inverse(dim: int) -> None:
    A = random_member(TrilToeplitz, dim, seed=dim, invertible=True)
    close(kernels.inverse_series(A.column), torch.linalg.inv(A.to_dense())[:, 0])


# -------------------------------------------------------------- reductions and in place
@classes
def test_diag_trace_and_frobenius_norm(cls: type[TriangularToeplitz]) -> None:
    A = random_member(cls, 11, seed=4)
    c = A.coefficients
    diagonal = A.diag()
    assert torch.equal(diagonal, c[0].expand(11))
    diagonal.add_(1.0)  # a copy: the matrix is unchanged
    assert torch.equal(A.diag(), c[0].expand(11))
    close(A.trace(), 11 * c[0])
    weights = torch.arange(11, 0, -1, dtype=c.dtype)
    close(A.frobenius_norm(), (weights * c.square()).sum().sqrt())


@classes
@pytest.mark.parametrize(
    "value", [2.5, 3, torch.tensor(2.5), torch.tensor([2.5]), torch.tensor([[2.5]])]
)
def test_diag_add_changes_only_the_leading_coefficient(
    cls: type[TriangularToeplitz], value: object
) -> None:
    A = random_member(cls, 6, seed=5)
    before = A.coefficients.clone()
    assert A.diag_add_(value) is A
    expected = before.clone()
    expected[0] += float(value)  # type: ignore[arg-type]
    close(A.coefficients, expected)


# ------------------------------------------------------------------ errors
@classes
def test_constructor_rejects_bad_coefficients(cls: type[TriangularToeplitz]) -> None:
    key = cls.coefficients_name
    with pytest.raises(TypeError, match=key):
        cls([1.0, 2.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=f"{key}.*floating"):
        cls(torch.arange(3))
    for bad in (torch.zeros(()), torch.zeros(2, 2)):
        with pytest.raises(ValueError, match=f"{key} must be a 1-d tensor"):
            cls(bad)
    with pytest.raises(ValueError, match=f"{key}.*d >= 1"):
        cls(torch.zeros(0))
    with pytest.raises(TypeError, match="floating"):
        cls.from_dense(torch.ones(3, 3, dtype=torch.int64))


@classes
def test_singular_and_overflowing_inverses_raise(cls: type[TriangularToeplitz]) -> None:
    A = random_member(cls, 20, seed=6)
    A.coefficients[0] = 0.0
    before = A.coefficients.clone()
    with pytest.raises(SingularMatrixError, match="singular"):
        A.inv()
    assert torch.equal(A.coefficients, before)
    # (1 + 10 z)^-1 has coefficients (-10)^k: beyond float16 range from k = 5 on.
    growing = cls(torch.tensor([1.0, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float16))
    with pytest.raises(SingularMatrixError, match="singular"):
        growing.inv()


# ------------------------------------------------------- dtypes and shapes
@classes
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_op_keeps_the_dtype(cls: type[TriangularToeplitz], dtype: torch.dtype) -> None:
    A = random_member(cls, 150, seed=7, dtype=dtype, invertible=True)
    X = random_tensor((150, 3), seed=8, dtype=dtype)
    for result in (A @ X, A.rmatmat(X), A @ X[:, 0], A.frobenius_norm(), A.diag()):
        assert result.dtype == dtype
    for matrix in (A @ A, A.inv(), A.from_inner(X), A.from_inner(), cls.from_mat_inner(X)):
        assert type(matrix) is cls and matrix.dtype == dtype


@classes
def test_mixed_dtypes_raise_and_empty_operands_work(cls: type[TriangularToeplitz]) -> None:
    A = random_member(cls, 9, seed=9, dtype=torch.float32)
    X = random_tensor((9, 2), seed=1)
    for product in (lambda: A @ X, lambda: A.rmatmat(X), lambda: A.from_inner(X)):
        with pytest.raises(TypeError, match=r"float64 but the matrix torch\.float32"):
            product()
    close(A @ X.float(), A.to_dense() @ X.float(), rtol=1e-6)
    empty = torch.zeros(9, 0)
    assert (A @ empty).shape == (9, 0)
    assert torch.equal(cls.from_mat_inner(empty).coefficients, torch.zeros(9))
    assert torch.equal(A.from_inner(empty).coefficients, torch.zeros(9))


# --------------------------------------------------------------- autograd
@classes
@pytest.mark.parametrize("fft_only", [False, True])
def test_gradients_through_both_kernel_paths(
    cls: type[TriangularToeplitz], fft_only: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if fft_only:  # route single signals through the FFT path as well
        monkeypatch.setattr(kernels, "DIRECT_MAX_LENGTH", 0)
        monkeypatch.setattr(kernels, "DIAGONAL_BLOCK_ROWS", 2)
    dim = 7
    A = random_member(cls, dim, seed=dim, invertible=True)
    c = A.coefficients.clone().requires_grad_(True)
    X = random_tensor((dim, 3), seed=1).requires_grad_(True)
    x = random_tensor((dim, 1), seed=3).requires_grad_(True)
    S = random_tensor((dim, dim), seed=2).requires_grad_(True)
    checks = [
        (lambda c, X: cls(c) @ X, (c, X)),
        (lambda c, x: cls(c) @ x, (c, x)),
        (lambda c, X: cls(c).rmatmat(X), (c, X)),
        (lambda c, X: cls(c).from_inner(X).coefficients, (c, X)),
        (lambda c, x: cls(c).from_inner(x).coefficients, (c, x)),
        (lambda X: cls.from_mat_inner(X).coefficients, (X,)),
        (lambda c: cls(c).from_inner().coefficients, (c,)),
        (lambda c: cls(c).inv().coefficients, (c,)),
        (lambda c: (cls(c) @ cls(c.flip(0))).coefficients, (c,)),
        (lambda S: cls.from_dense(S).coefficients, (S,)),
    ]
    for fn, inputs in checks:
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)


# ----------------------------------------------------- no dense intermediate
@classes
def test_no_op_allocates_a_dense_matrix_on_the_fft_paths(cls: type[TriangularToeplitz]) -> None:
    dim = 300
    A = random_member(cls, dim, seed=0, invertible=True)
    X = random_tensor((dim, 3), seed=1)
    M = random_tensor((dim, dim), seed=2)
    operations = [
        lambda: A @ X,
        lambda: A @ X[:, 0],
        lambda: A.rmatmat(X),
        lambda: A @ A,
        lambda: A.inv(),
        lambda: A.from_inner(X),
        lambda: A.from_inner(),
        lambda: cls.from_mat_inner(X),
        lambda: A.frobenius_norm(),
        lambda: A.from_inner2(M),
    ]
    for run in operations:
        with LargestAllocation() as record:
            run()
        assert record.largest < dim * dim, record.op


@classes
@pytest.mark.parametrize(("dim", "n"), [(1, 3), (33, 5), (65, 100), (200, 7)])
def test_stacks_match_members_on_every_product_path(
    cls: type[TriangularToeplitz], dim: int, n: int
) -> None:
    """A stack of three members equals each member, on every path of the stack kernels.

    Products with operands over one or several row blocks of the blocked GEMMs, products
    of members, ``from_inner()`` and in-place updates.
    """
    generator = torch.Generator().manual_seed(dim)
    firsts = [cls(torch.randn(dim, generator=generator, dtype=torch.float64)) for _ in range(3)]
    seconds = [cls(torch.randn(dim, generator=generator, dtype=torch.float64)) for _ in range(3)]
    A, B = cls.stack(firsts), cls.stack(seconds)
    X = torch.randn(3, dim, n, generator=generator, dtype=torch.float64)
    factors = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    products, transposed = A @ X, A.rmatmat(X)
    matrices = {
        "A @ B": (A @ B).unbind(),
        "from_inner()": A.from_inner().unbind(),
        "in place": A.clone().diag_add_(factors).add_(B, alpha=factors).unbind(),
    }
    for i, (first, second) in enumerate(zip(firsts, seconds, strict=True)):
        c = float(factors[i])
        close(products[i], first @ X[i])
        close(transposed[i], first.rmatmat(X[i]))
        close(A.average_trace()[i], first.average_trace())
        expected = {
            "A @ B": first @ second,
            "from_inner()": first.from_inner(),
            "in place": first.clone().diag_add_(c).add_(second, alpha=c),
        }
        for name, member in expected.items():
            got = matrices[name][i]
            assert type(got) is cls, name
            close(got.coefficients, member.coefficients)
