"""Structure-specific tests of the triangular arrow structures.

Agreement with dense computation, closure, inverses, precision and bad operands are
checked for every variant by the law suite (``test_structure_laws.py``).
"""

from __future__ import annotations

import pickle

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import structmat
from structmat import (
    ArrowMatrix,
    SingularMatrixError,
    TrilBottomRightDiag,
    TrilTopLeftDiag,
    TriuBottomRightDiag,
    TriuTopLeftDiag,
)

CLASSES = [TrilTopLeftDiag, TrilBottomRightDiag, TriuTopLeftDiag, TriuBottomRightDiag]
TRANSPOSES = {
    TrilTopLeftDiag: TriuTopLeftDiag,
    TriuTopLeftDiag: TrilTopLeftDiag,
    TrilBottomRightDiag: TriuBottomRightDiag,
    TriuBottomRightDiag: TrilBottomRightDiag,
}
SIZES = [1, 2, 3, 8, 41]


def random_member(cls: type[ArrowMatrix], d: int, dtype=torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return cls(
        **{
            name: torch.randn(shape, generator=gen, dtype=dtype)
            for name, shape in cls.tensor_shapes(d).items()
        }
    )


def invertible_member(cls: type[ArrowMatrix], d: int, dtype=torch.float64, seed: int = 0):
    return random_member(cls, d, dtype, seed).mul_(1 / (2 * d)).diag_add_(1.0)


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-10) -> None:
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


def test_registered_names() -> None:
    for cls in CLASSES:
        assert structmat.get_structure(cls.name) is cls
    assert {cls.name for cls in CLASSES} == {
        "triltopleftdiag",
        "trilbottomrightdiag",
        "triutopleftdiag",
        "triubottomrightdiag",
    }


def test_explicit_layouts() -> None:
    D, b, c = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0]), torch.tensor([7.0])
    expected = {
        TrilTopLeftDiag: [[1, 0, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0], [4, 5, 6, 7]],
        TrilBottomRightDiag: [[7, 0, 0, 0], [4, 1, 0, 0], [5, 0, 2, 0], [6, 0, 0, 3]],
        TriuTopLeftDiag: [[1, 0, 0, 4], [0, 2, 0, 5], [0, 0, 3, 6], [0, 0, 0, 7]],
        TriuBottomRightDiag: [[7, 4, 5, 6], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 3]],
    }
    for cls, dense in expected.items():
        A = cls(diagonal=D, arrow=b, corner=c)
        assert A.shape == (4, 4)
        close(A.to_dense(), torch.tensor(dense, dtype=torch.float32))
        close(A.diag(), torch.tensor(dense, dtype=torch.float32).diagonal())


def test_tensor_shapes_and_rebuild() -> None:
    for cls in CLASSES:
        assert cls.tensor_shapes(5) == {"diagonal": (4,), "arrow": (4,), "corner": (1,)}
        A = random_member(cls, 5)
        B = type(A)(**A.tensors())
        close(B.to_dense(), A.to_dense(), 0)


@pytest.mark.parametrize("cls", CLASSES)
def test_dimension_one_is_the_corner(cls: type[ArrowMatrix]) -> None:
    A = cls.from_dense(torch.tensor([[3.0]]))
    assert A.diagonal.shape == (0,) and A.arrow.shape == (0,)
    close(A.corner, torch.tensor([3.0]))
    close(A.to_dense(), torch.tensor([[3.0]]))
    close(A.inv().to_dense(), torch.tensor([[1 / 3]]))
    close((A @ A).to_dense(), torch.tensor([[9.0]]))
    close(A @ torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0, 6.0]]))
    close(cls.from_mat_inner(torch.tensor([[1.0, 2.0]])).to_dense(), torch.tensor([[5.0]]))
    close(A.from_inner().to_dense(), torch.tensor([[9.0]]))


@pytest.mark.parametrize("cls", CLASSES)
def test_from_dense_folds_mirrored_entries(cls: type[ArrowMatrix]) -> None:
    S = torch.arange(16.0).reshape(4, 4)
    A = cls.from_dense(S)
    k = 0 if cls.corner_first else 3
    others = [i for i in range(4) if i != k]
    close(A.diagonal, S.diagonal()[others])
    close(A.corner, S[k, k : k + 1])
    close(A.arrow, S[k, others] + S[others, k])


@pytest.mark.reference
@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("d", [1, 2, 3, 7, 40])
def test_from_dense_matches_reference(cls: type[ArrowMatrix], d: int) -> None:
    pytest.importorskip("singd")
    from singd.structures.trilbottomrightdiag import TrilBottomRightDiagonalMatrix
    from singd.structures.triltopleftdiag import TrilTopLeftDiagonalMatrix
    from singd.structures.triubottomrightdiag import TriuBottomRightDiagonalMatrix
    from singd.structures.triutopleftdiag import TriuTopLeftDiagonalMatrix

    reference = {
        TrilTopLeftDiag: TrilTopLeftDiagonalMatrix,
        TrilBottomRightDiag: TrilBottomRightDiagonalMatrix,
        TriuTopLeftDiag: TriuTopLeftDiagonalMatrix,
        TriuBottomRightDiag: TriuBottomRightDiagonalMatrix,
    }[cls]
    S = torch.randn(d, d, dtype=torch.float64, generator=torch.Generator().manual_seed(d))
    S = S + S.T
    close(cls.from_dense(S).to_dense(), reference.from_dense(S).to_dense(), 0)


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("d", SIZES)
def test_transpose_is_the_paired_class(cls: type[ArrowMatrix], d: int) -> None:
    A = random_member(cls, d)
    At = A.T
    assert type(At) is TRANSPOSES[cls]
    close(At.to_dense(), A.to_dense().T, 0)
    assert type(At.T) is cls
    assert cls.upper != TRANSPOSES[cls].upper
    assert cls.corner_first == TRANSPOSES[cls].corner_first


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("where", ["diagonal", "corner"])
def test_inverse_of_singular_raises(cls: type[ArrowMatrix], where: str) -> None:
    A = invertible_member(cls, 5)
    getattr(A, where)[0] = 0.0
    with pytest.raises(SingularMatrixError):
        A.inv()


@pytest.mark.parametrize("cls", CLASSES)
def test_constructor_errors(cls: type[ArrowMatrix]) -> None:
    ok = {"diagonal": torch.zeros(3), "arrow": torch.zeros(3), "corner": torch.zeros(1)}
    with pytest.raises(TypeError, match="arrow"):
        cls(**{**ok, "arrow": [0.0, 0.0, 0.0]})
    with pytest.raises(ValueError, match="diagonal"):
        cls(**{**ok, "diagonal": torch.zeros(3, 1)})
    with pytest.raises(ValueError, match="arrow"):
        cls(**{**ok, "arrow": torch.zeros(4)})
    with pytest.raises(ValueError, match="corner"):
        cls(**{**ok, "corner": torch.zeros(())})
    with pytest.raises(ValueError, match="corner"):
        cls(**{**ok, "corner": torch.zeros(2)})
    with pytest.raises(ValueError, match="dtype"):
        cls(**{**ok, "corner": torch.zeros(1, dtype=torch.float64)})
    with pytest.raises(ValueError):
        cls.from_dense(torch.zeros(3, 4))


@pytest.mark.parametrize("cls", CLASSES)
def test_gradients(cls: type[ArrowMatrix]) -> None:
    d = 4
    tensors = invertible_member(cls, d).tensors()
    X = torch.randn(d, 2, dtype=torch.float64, requires_grad=True)
    names = list(tensors)

    def f(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        A = cls(**dict(zip(names, args[:-1], strict=True)))
        x = args[-1]
        return (
            (A @ A).to_dense(),
            A @ x,
            A.rmatmat(x),
            A.inv().to_dense(),
            A.from_inner().to_dense(),
            A.from_inner(x).to_dense(),
            A.frobenius_norm(),
        )

    inputs = [t.clone().requires_grad_(True) for t in tensors.values()] + [X]
    assert torch.autograd.gradcheck(f, inputs)


class _LargestIntermediate(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("cls", CLASSES)
def test_no_quadratic_intermediates(cls: type[ArrowMatrix]) -> None:
    d, n = 64, 8
    A, B = invertible_member(cls, d, seed=1), invertible_member(cls, d, seed=2)
    X = torch.randn(d, n, dtype=torch.float64)
    with _LargestIntermediate() as mode:
        A @ B, A @ X, A.rmatmat(X), X.T @ A, A.T, A.inv(), A.diag(), A.frobenius_norm()
        A.from_inner(), A.from_inner(X), cls.from_mat_inner(X), A + B, 2.0 * A
        A.clone().diag_add_(1.0).add_(B).mul_(2.0)
    assert mode.largest <= d * n


def test_template_is_not_a_structure() -> None:
    with pytest.raises(TypeError, match="template"):
        ArrowMatrix(diagonal=torch.zeros(1), arrow=torch.zeros(1), corner=torch.zeros(1))
    with pytest.raises(TypeError, match="template"):
        ArrowMatrix.from_dense(torch.eye(2))


def test_pickle_round_trip() -> None:
    for cls in CLASSES:
        A = random_member(cls, 6, seed=3)
        B = pickle.loads(pickle.dumps(A))
        assert type(B) is cls and B.shape == A.shape
        assert torch.equal(B.to_dense(), A.to_dense())
