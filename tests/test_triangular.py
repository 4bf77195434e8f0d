"""Structure-specific tests of the dense triangular structures Tril and Triu.

The law suite (``test_structure_laws.py``) checks both against dense computation up to
``d = 70``; here the blocked kernel paths above the panel height are checked.
"""

from __future__ import annotations

import pytest
import torch

import structmat
from structmat import SingularMatrixError, TriangularMatrix, Tril, Triu
from structmat import _triangular_kernels as kernels

CLASSES = [Tril, Triu]
# Sizes at and above the panel height, so that the blocked paths of the kernels run; the
# law suite (test_structure_laws.py) covers the dense leaves (d <= 70) for both classes.
SIZES = [kernels.LEAF, kernels.LEAF + 1, 2 * kernels.LEAF + 45]


def triangle(cls: type[TriangularMatrix], mat: torch.Tensor, diagonal: int = 0) -> torch.Tensor:
    return torch.triu(mat, diagonal) if cls.upper else torch.tril(mat, -diagonal)


def random_member(cls: type[TriangularMatrix], d: int, dtype=torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return cls(matrix=torch.randn(d, d, generator=gen, dtype=dtype))


def invertible_member(cls: type[TriangularMatrix], d: int, dtype=torch.float64, seed: int = 0):
    return random_member(cls, d, dtype, seed).mul_(1 / (2 * d)).diag_add_(1.0)


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


def assert_triangular(cls: type[TriangularMatrix], mat: torch.Tensor) -> None:
    assert bool((triangle(cls, mat.mT, 1) == 0).all()), "other triangle must be exactly zero"


def test_registered_names() -> None:
    assert structmat.get_structure("tril") is Tril
    assert structmat.get_structure("triu") is Triu
    assert Tril.tensor_shapes(3) == Triu.tensor_shapes(3) == {"matrix": (3, 3)}


@pytest.mark.parametrize("cls", CLASSES)
def test_constructor_masks_the_other_triangle(cls: type[TriangularMatrix]) -> None:
    full = torch.arange(1.0, 10.0).reshape(3, 3)
    A = cls(matrix=full)
    expected = [[1, 2, 3], [0, 5, 6], [0, 0, 9]] if cls.upper else [[1, 0, 0], [4, 5, 0], [7, 8, 9]]
    close(A.to_dense(), torch.tensor(expected, dtype=torch.float32), 0)
    close(type(A)(**A.tensors()).to_dense(), A.to_dense(), 0)


@pytest.mark.parametrize("cls", CLASSES)
def test_from_dense_folds_the_mirror(cls: type[TriangularMatrix]) -> None:
    S = torch.arange(1.0, 10.0).reshape(3, 3)
    expected = (
        [[1, 2 + 4, 3 + 7], [0, 5, 6 + 8], [0, 0, 9]]
        if cls.upper
        else [[1, 0, 0], [4 + 2, 5, 0], [7 + 3, 8 + 6, 9]]
    )
    close(cls.from_dense(S).to_dense(), torch.tensor(expected, dtype=torch.float32), 0)
    sym = S + S.T
    close(
        cls.from_dense(sym).to_dense(),
        torch.diag(sym.diagonal()) + 2 * triangle(cls, sym, 1),
        0,
    )


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("d", SIZES)
def test_from_dense_is_identity_on_members(cls: type[TriangularMatrix], d: int) -> None:
    A = random_member(cls, d)
    close(cls.from_dense(A.to_dense()).to_dense(), A.to_dense(), 0)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("d", SIZES)
def test_kernels_match_dense(cls: type[TriangularMatrix], d: int) -> None:
    A, B = random_member(cls, d, seed=1), random_member(cls, d, seed=2)
    Ad, Bd = A.to_dense(), B.to_dense()
    X = torch.randn(d, 7, dtype=torch.float64)

    product = A @ B
    assert type(product) is cls
    assert_triangular(cls, product.to_dense())
    close(product.to_dense(), Ad @ Bd)
    close((A - 2.0 * B).to_dense(), Ad - 2 * Bd)
    close(A @ X, Ad @ X)
    close(A @ X[:, 0], Ad @ X[:, 0])
    close(A.rmatmat(X), Ad.T @ X)
    close(X.T @ A, X.T @ Ad)
    close(A.diag(), Ad.diagonal())
    close(A.frobenius_norm(), torch.linalg.matrix_norm(Ad))

    M = torch.randn(d, d, dtype=torch.float64)
    for result, expected in [
        (A.from_inner(), cls.from_dense(Ad.T @ Ad)),
        (A.from_inner(X), cls.from_dense((Ad.T @ X) @ (Ad.T @ X).T)),
        (cls.from_mat_inner(X), cls.from_dense(X @ X.T)),
        (A.from_inner2(M), cls.from_dense(Ad.T @ M @ Ad)),
    ]:
        assert type(result) is cls
        assert_triangular(cls, result.to_dense())
        close(result.to_dense(), expected.to_dense())

    C = A.clone().diag_add_(0.5).add_(B, alpha=-1.5).mul_(3.0)
    close(C.to_dense(), 3 * (Ad + 0.5 * torch.eye(d, dtype=torch.float64) - 1.5 * Bd))


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("d", SIZES)
def test_stacks_match_members_on_the_blocked_paths(cls: type[TriangularMatrix], d: int) -> None:
    """A stack of three members above the panel height: every stack operation per member."""
    firsts = [random_member(cls, d, seed=s) for s in range(3)]
    seconds = [random_member(cls, d, seed=10 + s) for s in range(3)]
    A, B = cls.stack(firsts), cls.stack(seconds)
    X = torch.randn(3, d, 5, dtype=torch.float64)
    factors = torch.tensor([0.5, -2.0, 3.0], dtype=torch.float64)
    results = {
        "A @ B": (A @ B).unbind(),
        "A.add(B, alpha)": A.add(B, alpha=factors).unbind(),
        "c * A": (A * factors).unbind(),
        "from_inner()": A.from_inner().unbind(),
        "in place": A.clone().diag_add_(factors).add_(B, alpha=factors).mul_(factors).unbind(),
    }
    for i, (first, second) in enumerate(zip(firsts, seconds, strict=True)):
        c = float(factors[i])
        expected = {
            "A @ B": first @ second,
            "A.add(B, alpha)": first.add(second, alpha=c),
            "c * A": first * c,
            "from_inner()": first.from_inner(),
            "in place": first.clone().diag_add_(c).add_(second, alpha=c).mul_(c),
        }
        for name, member in expected.items():
            got = results[name][i]
            assert type(got) is cls, name
            assert_triangular(cls, got.to_dense())
            close(got.to_dense(), member.to_dense())
        close((A @ X)[i], first @ X[i])
        close(A.rmatmat(X)[i], first.rmatmat(X[i]))
        close(A.average_trace()[i], first.average_trace())
        close(A.infinity_vector_norm()[i], first.infinity_vector_norm())


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("d", SIZES)
def test_transpose_and_inverse(cls: type[TriangularMatrix], d: int) -> None:
    A = invertible_member(cls, d)
    At = A.T
    assert type(At) is (Triu if cls is Tril else Tril)
    close(At.to_dense(), A.to_dense().T, 0)
    inverse = A.inv()
    assert type(inverse) is cls
    assert_triangular(cls, inverse.to_dense())
    close((A @ inverse).to_dense(), torch.eye(d, dtype=torch.float64))


@pytest.mark.parametrize("cls", CLASSES)
def test_inverse_of_singular_raises(cls: type[TriangularMatrix]) -> None:
    A = invertible_member(cls, 6)
    A.matrix[3, 3] = 0.0
    with pytest.raises(SingularMatrixError):
        A.inv()


@pytest.mark.parametrize("cls", CLASSES)
def test_constructor_errors(cls: type[TriangularMatrix]) -> None:
    with pytest.raises(TypeError, match="matrix"):
        cls(matrix=[[1.0]])
    with pytest.raises(ValueError, match="matrix"):
        cls(matrix=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="matrix"):
        cls(matrix=torch.zeros(0, 0))
    A = random_member(cls, 3)
    before = A.clone()
    with pytest.raises(TypeError):
        A.add_(random_member(Triu if cls is Tril else Tril, 3))
    close(A.to_dense(), before.to_dense(), 0)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision(cls: type[TriangularMatrix], dtype: torch.dtype) -> None:
    d = kernels.LEAF + 3
    A64 = invertible_member(cls, d)
    A = A64.to(dtype)
    X = torch.randn(d, 3, dtype=torch.float64)
    tol = 1e-4 if dtype == torch.float32 else 6e-2
    results = {
        "matmul": ((A @ A).to_dense(), (A64 @ A64).to_dense()),
        "matmat": (A @ X.to(dtype), A64 @ X),
        "inv": (A.inv().to_dense(), A64.inv().to_dense()),
        "from_inner": (A.from_inner().to_dense(), A64.from_inner().to_dense()),
        "from_mat_inner": (
            cls.from_mat_inner(X.to(dtype)).to_dense(),
            cls.from_mat_inner(X).to_dense(),
        ),
    }
    for name, (low, high) in results.items():
        assert low.dtype == dtype, name
        torch.testing.assert_close(low.double(), high, atol=tol, rtol=tol, msg=name)


@pytest.mark.parametrize("cls", CLASSES)
def test_gradients_through_blocked_kernels(
    cls: type[TriangularMatrix], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernels, "LEAF", 2)
    d = 5
    M = invertible_member(cls, d).matrix.clone().requires_grad_(True)
    X = torch.randn(d, 2, dtype=torch.float64, requires_grad=True)

    def f(mat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        A = cls(matrix=mat)
        return (
            (A @ A).to_dense(),
            A @ x,
            A.rmatmat(x),
            A.inv().to_dense(),
            A.from_inner().to_dense(),
            A.from_inner(x).to_dense(),
            cls.from_mat_inner(x).to_dense(),
        )

    assert torch.autograd.gradcheck(f, (M, X), fast_mode=True)


@pytest.mark.parametrize("upper", [False, True])
@pytest.mark.parametrize("leaf", [1, 2, 3])
def test_kernels_with_tiny_panels(upper: bool, leaf: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "LEAF", leaf)
    tri = torch.triu if upper else torch.tril
    gen = torch.Generator().manual_seed(leaf)
    for d in [1, 2, 3, 4, 9, 16]:
        T1 = tri(torch.randn(d, d, generator=gen, dtype=torch.float64)) + 3 * torch.eye(d)
        T2 = tri(torch.randn(d, d, generator=gen, dtype=torch.float64))
        X = torch.randn(d, 3, generator=gen, dtype=torch.float64)
        S = X @ X.T
        G = T1 @ T1.T
        close(kernels.tri_matmat(T1, X, upper), T1 @ X)
        close(kernels.tri_matmul(T1, T2, upper), T1 @ T2)
        close(kernels.gram_folded(X), torch.tril(S) + torch.tril(S, -1))
        close(kernels.tri_gram_folded(T1, upper), torch.tril(G) + torch.tril(G, -1))
        close(kernels.tri_inverse(T1, upper), torch.linalg.inv(T1))


def test_template_is_not_a_structure() -> None:
    with pytest.raises(TypeError, match="template"):
        TriangularMatrix(matrix=torch.eye(2))
    with pytest.raises(TypeError, match="template"):
        TriangularMatrix.from_dense(torch.eye(2))
