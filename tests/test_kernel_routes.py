"""Kernels that choose their evaluation order by the operand's shape or layout.

Dense and block-diagonal ``from_inner(X)`` go through ``X X^T`` for many columns,
the arrow structures and the diagonal project ``(A^T X)(A^T X)^T`` without forming
``A^T X``, block-diagonal products write into the result without autograd, and row
norms of long contiguous rows take a single pass. Every route is compared with the
dense computation in float64, in both layouts of the operand.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import structmat
from structmat import StructuredMatrix
from structmat._gram import HALF_GRAM_MIN_SIZE, gram
from structmat._layout import LONG_ROWS, row_sums_of_squares, stored_by_columns
from structmat.block_diagonal import SUPER_BLOCK_MIN_COLUMNS, block_grams
from structmat.testing import pattern_projection, random_member, random_tensor

ARROWS = ["triltopleftdiag", "trilbottomrightdiag", "triutopleftdiag", "triubottomrightdiag"]


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-10) -> None:
    scale = 1.0 + float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def by_columns(X: Tensor) -> Tensor:
    """The same matrix stored column by column (a transposed view)."""
    return X.mT.contiguous().mT


def check_inner_and_products(A: StructuredMatrix, X: Tensor) -> None:
    """``from_inner``, ``from_mat_inner`` and both products against dense, both layouts."""
    a = A.to_dense()
    cls = type(A)
    Y = a.T @ X
    for operand in (X, by_columns(X)):
        inner = A.from_inner(operand)
        assert type(inner) is type(A)
        close(inner.to_dense(), pattern_projection(cls, Y @ Y.T))
        close(type(A).from_mat_inner(operand).to_dense(), pattern_projection(cls, X @ X.T))
        close(A @ operand, a @ X)
        close(A.rmatmat(operand), a.T @ X)


# ---------------------------------------------------------------- layout
def test_stored_by_columns() -> None:
    X = random_tensor((4, 3), seed=0)
    assert not stored_by_columns(X)
    assert stored_by_columns(X.mT.contiguous().mT)
    assert not stored_by_columns(X[:, :2])
    assert not stored_by_columns(random_tensor((4, 1), seed=0))  # both layouts at once


@pytest.mark.parametrize("n", [1, 7, LONG_ROWS, LONG_ROWS + 3])
def test_row_sums_of_squares(n: int) -> None:
    X = random_tensor((5, n), seed=n)
    for operand in (X, by_columns(X), X[:, ::2]):
        close(row_sums_of_squares(operand), (operand * operand).sum(1))


def test_row_sums_of_squares_in_float32() -> None:
    r"""Within :math:`\gamma_n + 3u` of the exact sums, the bound for any summation order."""
    n = 4 * LONG_ROWS
    u = torch.finfo(torch.float32).eps / 2
    X = random_tensor((6, n), seed=1, dtype=torch.float32)
    exact = X.double().square().sum(1)
    error = (row_sums_of_squares(X).double() - exact).abs() / exact
    assert bool((error <= n * u / (1 - n * u) + 3 * u).all())


def test_row_sums_of_squares_gradient() -> None:
    X = random_tensor((3, LONG_ROWS), seed=2).requires_grad_(True)
    assert torch.autograd.gradcheck(row_sums_of_squares, (X,), fast_mode=True)


# ----------------------------------------------------------------- gram
@pytest.mark.parametrize(
    ("dim", "m"),
    [(1, 3), (HALF_GRAM_MIN_SIZE - 1, 300), (HALF_GRAM_MIN_SIZE, HALF_GRAM_MIN_SIZE), (300, 513)],
)
def test_gram_matches_dense_and_is_symmetric(dim: int, m: int) -> None:
    Z = random_tensor((dim, m), seed=dim)
    for operand in (Z, by_columns(Z)):
        G = gram(operand)
        close(G, Z @ Z.T)
        assert torch.equal(G, G.T)  # mirrored: symmetric to the last bit on every BLAS


def test_gram_in_float32_and_with_autograd() -> None:
    eps = torch.finfo(torch.float32).eps
    Z = random_tensor((300, 400), seed=1, dtype=torch.float32)
    exact = Z.double() @ Z.double().T
    error = torch.linalg.norm(gram(Z).double() - exact) / torch.linalg.norm(exact)
    assert error <= 4 * eps
    W = random_tensor((HALF_GRAM_MIN_SIZE, HALF_GRAM_MIN_SIZE), seed=2).requires_grad_(True)
    G = gram(W)
    close(G.detach(), W.detach() @ W.detach().T)
    assert torch.equal(G, G.T)
    assert torch.autograd.gradcheck(gram, (W,), fast_mode=True)


# ------------------------------------------------------------ structures
@pytest.mark.parametrize("dim", [1, 5, 40, HALF_GRAM_MIN_SIZE + 3])
def test_dense_from_inner_routes(dim: int) -> None:
    A = random_member(structmat.Dense, dim, seed=dim)
    for n in (1, 2 * dim - 1, 2 * dim, 5 * dim):  # Y Y^T, then M^T (X X^T) M
        check_inner_and_products(A, random_tensor((dim, n), seed=n))
    close(A.from_inner().to_dense(), A.to_dense().T @ A.to_dense())


@pytest.mark.parametrize("dim", [1, 7, 40])
def test_diagonal_long_rows(dim: int) -> None:
    A = random_member(structmat.Diagonal, dim, seed=dim)
    check_inner_and_products(A, random_tensor((dim, LONG_ROWS + 1), seed=1))


@pytest.mark.parametrize("block", [1, 3, 30])
@pytest.mark.parametrize("dim", [1, 2, 29, 30, 31, 65])
def test_block_diagonal_routes(block: int, dim: int) -> None:
    cls = structmat.BlockDiagonal.with_block_size(block)
    A = random_member(cls, dim, seed=dim)
    for n in (1, 2 * block - 1, 2 * block, 3 * block + 2):
        check_inner_and_products(A, random_tensor((dim, n), seed=n))


@pytest.mark.parametrize(("block", "dim"), [(2, 16), (4, 145), (8, 65), (8, 64), (8, 36), (2, 11)])
def test_block_diagonal_super_block_grams(block: int, dim: int) -> None:
    """Small blocks' Gram matrices through 16-row super-blocks (many columns), or not."""
    cls = structmat.BlockDiagonal.with_block_size(block)
    A = random_member(cls, dim, seed=dim)
    check_inner_and_products(A, random_tensor((dim, SUPER_BLOCK_MIN_COLUMNS + 3), seed=block))
    X_blocks = random_tensor((dim // block, block, SUPER_BLOCK_MIN_COLUMNS), seed=1)
    close(block_grams(X_blocks), X_blocks @ X_blocks.mT)


@pytest.mark.parametrize("dim", [2, 31, 65])
def test_block_diagonal_products_with_autograd(dim: int) -> None:
    """With autograd the products are joined by a copy; the values are the same."""
    cls = structmat.BlockDiagonal.with_block_size(30)
    A = random_member(cls, dim, seed=dim)
    a = A.to_dense()
    keys = list(A.tensors())
    inputs = [t.clone().requires_grad_(True) for t in A.tensors().values()]
    X = by_columns(random_tensor((dim, 4), seed=3)).requires_grad_(True)

    def products(*args: Tensor) -> tuple[Tensor, Tensor]:
        *tensors, X = args
        B = cls(**dict(zip(keys, tensors, strict=True)))
        return B @ X, B.rmatmat(X)

    product, transposed = products(*inputs, X)
    close(product.detach(), a @ X.detach())
    close(transposed.detach(), a.T @ X.detach())
    assert torch.autograd.gradcheck(products, (*inputs, X), fast_mode=True)


@pytest.mark.parametrize("name", ARROWS)
@pytest.mark.parametrize("dim", [1, 2, 9, 40])
def test_arrow_routes(name: str, dim: int) -> None:
    A = random_member(structmat.get_structure(name), dim, seed=dim)
    for n in (1, 6, LONG_ROWS + 1):
        check_inner_and_products(A, random_tensor((dim, n), seed=n))


@pytest.mark.parametrize("name", ARROWS)
def test_arrow_from_inner_gradient(name: str) -> None:
    cls = structmat.get_structure(name)
    A = random_member(cls, 6, seed=4)
    keys = list(A.tensors())
    inputs = [t.clone().requires_grad_(True) for t in A.tensors().values()]
    X = by_columns(random_tensor((6, 5), seed=5)).requires_grad_(True)

    def inner(*args: Tensor) -> tuple[Tensor, ...]:
        *tensors, X = args
        return tuple(cls(**dict(zip(keys, tensors, strict=True))).from_inner(X).tensors().values())

    assert torch.autograd.gradcheck(inner, (*inputs, X))


@pytest.mark.parametrize("name", ["dense", "block30diagonal", *ARROWS])
def test_gram_routes_in_float32(name: str) -> None:
    """Within a few unit roundoffs, relative to the result's norm, of float64."""
    eps = torch.finfo(torch.float32).eps
    cls = structmat.get_structure(name)
    dim = 45
    A = random_member(cls, dim, seed=6, dtype=torch.float32, invertible=True)
    for n in (10, 3 * dim, LONG_ROWS + 1):
        X = random_tensor((dim, n), seed=n, dtype=torch.float32)
        low = A.from_inner(X).to_dense().double()
        exact = A.to(torch.float64).from_inner(X.double()).to_dense()
        error = torch.linalg.norm(low - exact) / torch.linalg.norm(exact)
        assert error <= 4 * eps, f"n={n}: relative error {error:.2e}"
