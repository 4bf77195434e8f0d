"""A structure that only defines ``from_dense``/``to_dense`` works through warned fallbacks."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor

from structmat import Dense, DenseFallbackWarning, StructuredMatrix


class UpperBidiagonal(StructuredMatrix):
    """Diagonal plus first superdiagonal: the minimum a new structure implements.

    Storage layout, constructor, ``from_dense`` and ``to_dense``.
    """

    closed_under_inverse = False

    def __init__(self, diagonal: Tensor, upper: Tensor) -> None:
        super().__init__(diagonal=diagonal, upper=upper)

    @classmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        return {"diagonal": (dim,), "upper": (dim - 1,)}

    @classmethod
    def from_dense(cls, sym_mat: Tensor) -> UpperBidiagonal:
        return cls(sym_mat.diagonal().clone(), sym_mat.diagonal(1) + sym_mat.diagonal(-1))

    def to_dense(self) -> Tensor:
        return torch.diag(self.diagonal) + torch.diag(self.upper, 1)


def make(seed: int) -> UpperBidiagonal:
    generator = torch.Generator().manual_seed(seed)
    return UpperBidiagonal(torch.randn(5, generator=generator), torch.randn(4, generator=generator))


def test_every_fallback_is_correct_and_warns() -> None:
    A, B = make(0), make(1)
    a, b = A.to_dense(), B.to_dense()
    X = torch.randn(5, 2)
    checks = [
        (lambda: (A + B).to_dense(), a + b),
        (lambda: (A - B).to_dense(), a - b),
        (lambda: (2.0 * A).to_dense(), 2 * a),
        (lambda: A @ X, a @ X),
        (lambda: A.rmatmat(X), a.T @ X),
        (lambda: X.T @ A, X.T @ a),
        (lambda: A.diag(), a.diagonal()),
        (lambda: A.frobenius_norm(), torch.linalg.matrix_norm(a)),
        (lambda: A.T.to_dense(), a.T),
        (
            lambda: A.from_inner(X).to_dense(),
            UpperBidiagonal.from_dense(a.T @ X @ X.T @ a).to_dense(),
        ),
        (lambda: A.from_inner().to_dense(), UpperBidiagonal.from_dense(a.T @ a).to_dense()),
        (
            lambda: UpperBidiagonal.from_mat_inner(X).to_dense(),
            UpperBidiagonal.from_dense(X @ X.T).to_dense(),
        ),
        (lambda: A.clone().diag_add_(1.5).to_dense(), a + 1.5 * torch.eye(5)),
        (lambda: A.clone().add_(B, alpha=2.0).to_dense(), a + 2 * b),
        (lambda: A.clone().mul_(3.0).to_dense(), 3 * a),
        (lambda: UpperBidiagonal.zeros(4).to_dense(), torch.zeros(4, 4)),
    ]
    for run, expected in checks:
        with pytest.warns(DenseFallbackWarning, match="UpperBidiagonal"):
            result = run()
        torch.testing.assert_close(result, expected)


def test_fallback_transpose_is_dense_and_inverse_needs_a_group() -> None:
    A = make(2)
    with pytest.warns(DenseFallbackWarning):
        assert isinstance(A.T, Dense)
    with pytest.raises(TypeError, match="not closed under inversion"):
        A.inv()


def test_built_in_structures_emit_no_fallback_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DenseFallbackWarning)
        A = Dense.eye(3)
        (A @ A).inv().from_inner(torch.ones(3, 2))
