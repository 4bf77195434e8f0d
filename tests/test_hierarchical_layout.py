"""Hierarchical kernels in both operand layouts and their Gram-based projections.

Products with an operand stored column by column (a transposed view such as
``G.mT``) are computed in that layout, and ``from_inner(X)`` / ``from_mat_inner(X)``
from the rows of ``X X^T`` that the projection reads (``from_inner`` for operands of at
least ``GRAM_ROUTE_MIN_ELEMENTS`` elements). Everything is compared with the dense
computation in float64, at every block-size boundary.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from structmat import Hierarchical, TransposedHierarchical
from structmat._hierarchical_kernels import GRAM_ROUTE_MIN_ELEMENTS, left_product, right_product
from structmat._hierarchical_layout import HierarchicalLayout
from structmat.testing import pattern_projection, random_member, random_tensor

SIZES = [(3, 2), (15, 15)]
FAMILIES = [Hierarchical, TransposedHierarchical]


def structures() -> list[type[HierarchicalLayout]]:
    return [family.with_sizes(k1, k2) for family in FAMILIES for k1, k2 in SIZES]


def boundary_dims(cls: type[HierarchicalLayout]) -> list[int]:
    """Dimensions where a block appears: only ``A``, ``A`` and ``E``, all three."""
    k1, k2 = cls.max_k1, cls.max_k2
    return sorted({1, k1, k1 + 1, k1 + k2, k1 + k2 + 1, k1 + k2 + 7})


cases = pytest.mark.parametrize(
    ("cls", "dim"), [(cls, dim) for cls in structures() for dim in boundary_dims(cls)]
)


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-10) -> None:
    scale = 1.0 + float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def by_columns(X: Tensor) -> Tensor:
    """The same matrix stored column by column (a transposed view)."""
    return X.mT.contiguous().mT


@cases
def test_products_in_both_layouts_match_dense(cls: type[HierarchicalLayout], dim: int) -> None:
    A = random_member(cls, dim, seed=dim)
    a = A.to_dense()
    for n in (1, 5, 40):
        X = random_tensor((dim, n), seed=n)
        for operand in (X, by_columns(X)):
            close(A @ operand, a @ X)
            close(A.rmatmat(operand), a.T @ X)
            close(operand.mT @ A, X.T @ a)


@pytest.mark.parametrize(("k1", "k2"), SIZES)
@pytest.mark.parametrize("transpose", [False, True])
def test_left_and_right_products_match_dense(k1: int, k2: int, transpose: bool) -> None:
    cls = Hierarchical.with_sizes(k1, k2)
    for dim in boundary_dims(cls):
        H = random_member(cls, dim, seed=dim)
        h = H.to_dense().T if transpose else H.to_dense()
        X = random_tensor((dim, 6), seed=1)
        close(left_product(X, H.parts(), transpose), h @ X)
        close(right_product(X.T, H.parts(), transpose), X.T @ h)


@cases
def test_transposed_operands_keep_their_layout(cls: type[HierarchicalLayout], dim: int) -> None:
    """A transposed view in gives a transposed view out (no copy into the other layout)."""
    A = random_member(cls, dim, seed=0)
    X = by_columns(random_tensor((dim, 9), seed=1))
    for product in (A @ X, A.rmatmat(X)):
        assert product.mT.is_contiguous()
    Y = random_tensor((dim, 9), seed=2)
    for product in (A @ Y, A.rmatmat(Y)):
        assert product.is_contiguous()


@cases
def test_gram_projections_match_dense(cls: type[HierarchicalLayout], dim: int) -> None:
    A = random_member(cls, dim, seed=dim + 1)
    a = A.to_dense()
    for n in (1, 4, 3 * dim, GRAM_ROUTE_MIN_ELEMENTS // dim + 1):
        X = random_tensor((dim, n), seed=n)
        Y = a.T @ X
        for operand in (X, by_columns(X)):
            inner = A.from_inner(operand)
            assert type(inner) is cls
            close(inner.to_dense(), pattern_projection(cls, Y @ Y.T))
            close(cls.from_mat_inner(operand).to_dense(), pattern_projection(cls, X @ X.T))


@pytest.mark.parametrize("cls", structures())
def test_gram_projections_in_float32(cls: type[HierarchicalLayout]) -> None:
    """Within a few unit roundoffs, relative to the result's norm, of float64."""
    eps = torch.finfo(torch.float32).eps
    dim = cls.max_k1 + cls.max_k2 + 20
    A = random_member(cls, dim, seed=3, dtype=torch.float32, invertible=True)
    X = random_tensor((dim, GRAM_ROUTE_MIN_ELEMENTS // dim + 1), seed=4, dtype=torch.float32)
    pairs = [
        (A.from_inner(X), A.to(torch.float64).from_inner(X.double())),
        (cls.from_mat_inner(X), cls.from_mat_inner(X.double())),
        (A.from_inner(by_columns(X)), A.to(torch.float64).from_inner(X.double())),
    ]
    for low, exact in pairs:
        low_dense, exact_dense = low.to_dense().double(), exact.to_dense()
        error = torch.linalg.norm(low_dense - exact_dense) / torch.linalg.norm(exact_dense)
        assert error <= 4 * eps, f"relative error {error:.2e}"


@pytest.mark.parametrize("cls", structures())
def test_gradients_through_both_layouts(cls: type[HierarchicalLayout]) -> None:
    dim = cls.max_k1 + cls.max_k2 + 2
    A = random_member(cls, dim, seed=5)
    keys = list(A.tensors())
    inputs = [t.clone().requires_grad_(True) for t in A.tensors().values()]
    X = by_columns(random_tensor((dim, 3), seed=6)).requires_grad_(True)

    def build(*tensors: Tensor) -> HierarchicalLayout:
        return cls(**dict(zip(keys, tensors, strict=True)))

    def products(*args: Tensor) -> tuple[Tensor, ...]:
        *tensors, X = args
        M = build(*tensors)
        return M @ X, M.rmatmat(X)

    def projections(*args: Tensor) -> tuple[Tensor, ...]:
        *tensors, X = args
        inner = build(*tensors).from_inner(X).tensors().values()
        return (*inner, *cls.from_mat_inner(X).tensors().values())

    assert torch.autograd.gradcheck(products, (*inputs, X), fast_mode=True)
    assert torch.autograd.gradcheck(projections, (*inputs, X), fast_mode=True)
    wide = random_tensor((dim, GRAM_ROUTE_MIN_ELEMENTS // dim + 1), seed=7)
    assert torch.autograd.gradcheck(
        projections, (*inputs, wide.requires_grad_(True)), fast_mode=True
    )
