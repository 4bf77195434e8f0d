"""Every built-in structure against dense computation and the algebraic laws.

Each test is parametrised over :data:`strategies.STRUCTURE_NAMES`; hypothesis
draws the dimension (boundaries included) and the random seed. Everything runs
in float64 with tolerances a few orders above its unit roundoff.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import structmat
from structmat import SingularMatrixError, StructuredMatrix
from tests.strategies import (
    DENSE_STORAGE,
    STRUCTURE_NAMES,
    TRANSPOSE_NAME,
    dims,
    interesting_dims,
    project,
    random_member,
    random_tensor,
    seeds,
)

names = pytest.mark.parametrize("name", STRUCTURE_NAMES)


def close(actual: Tensor, expected: Tensor, rtol: float = 1e-10) -> None:
    """Assert entrywise closeness relative to the magnitude of ``expected``."""
    scale = 1.0 + float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale)


def same_matrix(A: StructuredMatrix, expected: Tensor) -> None:
    close(A.to_dense(), expected)


@st.composite
def members(draw: st.DrawFn, name: str, count: int = 1, invertible: bool = False):
    cls = structmat.get_structure(name)
    dim = draw(dims(cls))
    return dim, [random_member(cls, dim, draw(seeds), invertible=invertible) for _ in range(count)]


# ----------------------------------------------------------------- agreement
@names
@given(data=st.data())
def test_arithmetic_matches_dense(name: str, data: st.DataObject) -> None:
    _, (A, B) = data.draw(members(name, 2))
    a, b = A.to_dense(), B.to_dense()
    c = data.draw(st.floats(-3, 3, allow_nan=False))
    same_matrix(A + B, a + b)
    same_matrix(A - B, a - b)
    same_matrix(c * A, c * a)
    same_matrix(A * c, c * a)
    same_matrix(-A, -a)
    same_matrix(A / 2.0, a / 2)
    same_matrix(A * torch.tensor(c, dtype=torch.float64), c * a)
    same_matrix(A @ B, a @ b)
    same_matrix(A.T, a.T)
    same_matrix(A.transpose(), a.T)


@names
@given(data=st.data())
def test_products_with_tensors_match_dense(name: str, data: st.DataObject) -> None:
    dim, (A,) = data.draw(members(name))
    n = data.draw(st.integers(1, 5))
    X = random_tensor((dim, n), data.draw(seeds))
    a = A.to_dense()
    close(A @ X, a @ X)
    close(X.T @ A, X.T @ a)
    close(A.rmatmat(X), a.T @ X)
    close(A @ X[:, 0], a @ X[:, 0])
    close(X[:, 0] @ A, X[:, 0] @ a)
    close(A.rmatmat(X[:, 0]), a.T @ X[:, 0])


@names
@given(data=st.data())
def test_reductions_match_dense(name: str, data: st.DataObject) -> None:
    _, (A,) = data.draw(members(name))
    a = A.to_dense()
    close(A.diag(), a.diagonal())
    close(A.trace(), a.trace())
    close(A.average_trace(), a.diagonal().mean())
    close(A.frobenius_norm(), torch.linalg.matrix_norm(a))
    close(A.infinity_vector_norm(), a.abs().max())


@names
@given(data=st.data())
def test_in_place_ops_match_dense_and_return_self(name: str, data: st.DataObject) -> None:
    _, (A, B) = data.draw(members(name, 2))
    a, b = A.to_dense().clone(), B.to_dense()
    alpha = data.draw(st.floats(-2, 2, allow_nan=False))
    assert A.add_(B, alpha=alpha) is A
    same_matrix(A, a + alpha * b)
    assert A.mul_(0.5) is A
    same_matrix(A, 0.5 * (a + alpha * b))
    assert A.diag_add_(alpha) is A
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    same_matrix(A, 0.5 * (a + alpha * b) + alpha * eye)


@names
@given(data=st.data())
def test_inverse_matches_dense(name: str, data: st.DataObject) -> None:
    _, (A,) = data.draw(members(name, invertible=True))
    A_inv = A.inv()
    assert type(A_inv) is type(A)
    same_matrix(A_inv, torch.linalg.inv(A.to_dense()))
    eye = torch.eye(A.shape[0], dtype=A.dtype)
    same_matrix(A @ A_inv, eye)
    same_matrix(A_inv @ A, eye)


# --------------------------------------------------------------- projections
@names
@given(data=st.data())
def test_from_dense_is_the_documented_projection(name: str, data: st.DataObject) -> None:
    cls = structmat.get_structure(name)
    dim = data.draw(dims(cls))
    S = random_tensor((dim, dim), data.draw(seeds))
    sym = S + S.T
    for mat in (sym, S):
        P = cls.from_dense(mat)
        assert type(P) is cls
        same_matrix(P, project(name, mat))
        # idempotent: a projection maps its image to itself
        same_matrix(cls.from_dense(P.to_dense()), P.to_dense())


@names
@given(data=st.data())
def test_from_dense_round_trips_members_and_is_linear(name: str, data: st.DataObject) -> None:
    cls = structmat.get_structure(name)
    dim, (A,) = data.draw(members(name))
    recovered = cls.from_dense(A.to_dense())
    for key, tensor in A.named_tensors():
        close(getattr(recovered, key), tensor)
    S, R = (random_tensor((dim, dim), data.draw(seeds)) for _ in range(2))
    same_matrix(
        cls.from_dense(2.0 * S - 3.0 * R),
        (2.0 * cls.from_dense(S) - 3.0 * cls.from_dense(R)).to_dense(),
    )


@names
@given(data=st.data())
def test_from_inner_matches_dense_formula(name: str, data: st.DataObject) -> None:
    dim, (A,) = data.draw(members(name))
    n = data.draw(st.integers(1, 6))
    X = random_tensor((dim, n), data.draw(seeds))
    a = A.to_dense()
    cls = type(A)
    S = a.T @ X
    inner = A.from_inner(X)
    assert type(inner) is cls
    same_matrix(inner, project(name, S @ S.T))
    same_matrix(A.from_inner(), project(name, a.T @ a))
    same_matrix(cls.from_mat_inner(X), project(name, X @ X.T))


# ------------------------------------------------------------ closure & laws
@names
@given(data=st.data())
def test_closure_and_transpose_class(name: str, data: st.DataObject) -> None:
    _, (A, B) = data.draw(members(name, 2))
    cls = structmat.get_structure(name)
    for result in (A + B, A - B, 2.0 * A, A @ B, A.from_inner(), cls.zeros(A.shape[0])):
        assert type(result) is cls
    transposed = A.T
    assert type(transposed) is structmat.get_structure(TRANSPOSE_NAME[name])
    assert type(transposed.T) is cls
    same_matrix(transposed.T, A.to_dense())


@names
@given(data=st.data())
def test_algebraic_laws(name: str, data: st.DataObject) -> None:
    _, (A, B, C) = data.draw(members(name, 3))
    same_matrix((A @ B).T, (B.T @ A.T).to_dense())
    same_matrix((A + B).T, (A.T + B.T).to_dense())
    same_matrix((A @ B) @ C, (A @ (B @ C)).to_dense())
    same_matrix(A @ (B + C), (A @ B + A @ C).to_dense())
    same_matrix((A + B) @ C, (A @ C + B @ C).to_dense())
    eye = type(A).eye(A.shape[0], dtype=A.dtype)
    same_matrix(A @ eye, A.to_dense())
    same_matrix(eye @ A, A.to_dense())
    close((2.0 * A - B).trace(), 2.0 * A.trace() - B.trace())
    close(A.T.trace(), A.trace())
    close((A @ B).trace(), (B @ A).trace())


@names
def test_zeros_eye_and_metadata(name: str) -> None:
    cls = structmat.get_structure(name)
    for dim in interesting_dims(cls):
        zero = cls.zeros(dim, dtype=torch.float32)
        assert zero.shape == torch.Size([dim, dim])
        assert zero.dtype == torch.float32
        assert zero.device == torch.device("cpu")
        same_matrix(zero.to(torch.float64), torch.zeros(dim, dim, dtype=torch.float64))
        same_matrix(cls.eye(dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64))


@names
@given(data=st.data())
def test_tensors_round_trip_clone_and_to(name: str, data: st.DataObject) -> None:
    _, (A,) = data.draw(members(name))
    rebuilt = type(A)(**A.tensors())
    assert torch.equal(rebuilt.to_dense(), A.to_dense())
    assert set(A.tensors()) == set(type(A).tensor_shapes(A.shape[0]))
    copy = A.clone()
    copy.mul_(2.0)
    assert torch.equal(rebuilt.to_dense(), A.to_dense()), "clone must not share storage"
    single = A.to(torch.float32)
    assert single.dtype == torch.float32
    close(single.to_dense().double(), A.to_dense(), rtol=1e-6)


# ------------------------------------------------------------------ autograd
@names
def test_gradcheck_matmul_from_inner_inv(name: str) -> None:
    cls = structmat.get_structure(name)
    small = [d for d in interesting_dims(cls) if d <= 18]
    for dim in (small[0], small[-1]):
        check_gradients(cls, dim)


def check_gradients(cls: type[StructuredMatrix], dim: int) -> None:
    A = random_member(cls, dim, seed=dim, invertible=True)
    keys = list(A.tensors())
    inputs = [t.clone().requires_grad_(True) for t in A.tensors().values()]
    X = random_tensor((dim, 2), seed=1).requires_grad_(True)

    def build(*tensors: Tensor) -> StructuredMatrix:
        return cls(**dict(zip(keys, tensors, strict=True)))

    def matmul(*args: Tensor) -> Tensor:
        *tensors, X = args
        return build(*tensors) @ X

    def from_inner(*args: Tensor) -> tuple[Tensor, ...]:
        *tensors, X = args
        return tuple(build(*tensors).from_inner(X).tensors().values())

    def inverse(*tensors: Tensor) -> tuple[Tensor, ...]:
        return tuple(build(*tensors).inv().tensors().values())

    assert torch.autograd.gradcheck(matmul, (*inputs, X))
    assert torch.autograd.gradcheck(from_inner, (*inputs, X))
    assert torch.autograd.gradcheck(inverse, tuple(inputs))


# ------------------------------------------------------ structure, not dense
class LargestTensor(TorchDispatchMode):
    """Records the largest storage (in elements) produced by any torch op."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.op = ""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, Tensor):
                size = tensor.untyped_storage().nbytes() // max(tensor.element_size(), 1)
                if size > self.largest:
                    self.largest, self.op = size, str(func)
        return out


@pytest.mark.parametrize("name", [n for n in STRUCTURE_NAMES if n not in DENSE_STORAGE])
@pytest.mark.parametrize("dim", [45, 64])
def test_no_op_allocates_a_dense_matrix(name: str, dim: int) -> None:
    """No op allocates ``d x d`` elements, for an operand ``X`` with few columns.

    By design, the triangular Toeplitz ``from_inner(X)`` forms ``X X^T`` when ``X``
    has ``n >= 8 d`` columns (at most an eighth of ``X``); for such operands
    ``tests/test_toeplitz_direct.py`` bounds every allocation by the size of ``X``.
    """
    cls = structmat.get_structure(name)
    A, B = (random_member(cls, dim, seed, invertible=True) for seed in (0, 1))
    X = random_tensor((dim, 3), seed=2)
    operations = {
        "add": lambda: A + B,
        "sub": lambda: A - B,
        "scale": lambda: 3.0 * A,
        "add_": lambda: A.clone().add_(B, alpha=0.5),
        "mul_": lambda: A.clone().mul_(2.0),
        "diag_add_": lambda: A.clone().diag_add_(2.0),
        "matmul": lambda: A @ B,
        "matmat": lambda: A @ X,
        "rmatmat": lambda: A.rmatmat(X),
        "left": lambda: X.T @ A,
        "transpose": lambda: A.T,
        "diag": lambda: A.diag(),
        "trace": lambda: A.trace(),
        "frobenius": lambda: A.frobenius_norm(),
        "infinity": lambda: A.infinity_vector_norm(),
        "inv": lambda: A.inv(),
        "from_inner": lambda: A.from_inner(X),
        "from_inner_identity": lambda: A.from_inner(),
        "from_mat_inner": lambda: cls.from_mat_inner(X),
        "zeros": lambda: cls.zeros(dim),
        "eye": lambda: cls.eye(dim),
    }
    for op, run in operations.items():
        with LargestTensor() as mode:
            run()
        assert mode.largest < dim * dim, (
            f"{name}.{op} allocated {mode.largest} elements in {mode.op}"
        )


# --------------------------------------------------------------- precisions
@names
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_matches_float64_then_rounding(name: str, dtype: torch.dtype) -> None:
    """Every op in ``dtype`` is within a few unit roundoffs of the exact result.

    Inputs are rounded to ``dtype`` first and the exact result is computed in
    float64 from those rounded inputs, so the only error left is the rounding of
    intermediates and the result: bounded by a small multiple of ``eps`` relative
    to the norm (the invertible members have condition number at most 3).
    """
    cls = structmat.get_structure(name)
    eps = torch.finfo(dtype).eps
    for dim in (1, 17, 40):
        A, B = (random_member(cls, dim, seed, dtype=dtype, invertible=True) for seed in (3, 4))
        X = random_tensor((dim, 4), seed=5, dtype=dtype)
        A64, B64, X64 = A.to(torch.float64), B.to(torch.float64), X.double()
        pairs = {
            "matmat": (A @ X, A64 @ X64),
            "rmatmat": (A.rmatmat(X), A64.rmatmat(X64)),
            "matmul": ((A @ B).to_dense(), (A64 @ B64).to_dense()),
            "inv": (A.inv().to_dense(), A64.inv().to_dense()),
            "from_inner": (A.from_inner(X).to_dense(), A64.from_inner(X64).to_dense()),
            "from_inner_identity": (A.from_inner().to_dense(), A64.from_inner().to_dense()),
            "from_mat_inner": (
                cls.from_mat_inner(X).to_dense(),
                cls.from_mat_inner(X64).to_dense(),
            ),
            "add": ((A + B).to_dense(), (A64 + B64).to_dense()),
        }
        for op, (low, exact) in pairs.items():
            assert low.dtype == dtype, f"{name}.{op} returned {low.dtype}"
            error = torch.linalg.norm(low.double() - exact) / (1.0 + torch.linalg.norm(exact))
            assert error <= 4 * eps, (
                f"{name}.{op} in {dtype} at d={dim}: relative error {error:.2e}"
            )


# -------------------------------------------------------------- bad input
@names
def test_mixing_structures_and_shapes_is_rejected(name: str) -> None:
    cls = structmat.get_structure(name)
    other_cls = structmat.Dense if cls is not structmat.Dense else structmat.Diagonal
    A = random_member(cls, 5, seed=0)
    before = A.to_dense().clone()
    other = random_member(other_cls, 5, seed=1)
    for op in (lambda: A + other, lambda: A - other, lambda: A @ other, lambda: A.add_(other)):
        with pytest.raises(TypeError, match=f"{cls.__name__}.*{other_cls.__name__}"):
            op()
    bigger = random_member(cls, 6, seed=2)
    for op in (lambda: A + bigger, lambda: A @ bigger, lambda: A.add_(bigger)):
        with pytest.raises(ValueError, match=r"\(5, 5\).*\(6, 6\)"):
            op()
    with pytest.raises(ValueError, match=r"\(5, 5\).*\(6, 2\)"):
        A @ torch.zeros(6, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="scalar"):
        A.mul_("2")
    assert torch.equal(A.to_dense(), before)


@names
def test_from_dense_rejects_non_square_input(name: str) -> None:
    cls = structmat.get_structure(name)
    for bad in (torch.zeros(3, 4), torch.zeros(3), torch.zeros(2, 2, 2), torch.zeros(0, 0)):
        with pytest.raises(ValueError, match="square"):
            cls.from_dense(bad)
    with pytest.raises(ValueError, match="dim"):
        cls.zeros(0)


@names
def test_inverse_of_singular_matrix_raises(name: str) -> None:
    cls = structmat.get_structure(name)
    for dim in (1, 4, 33):
        singular = cls.zeros(dim, dtype=torch.float64)
        with pytest.raises(SingularMatrixError, match="singular"):
            singular.inv()


@pytest.mark.parametrize(
    "bad", ["", "blockdiagonal", "block0diagonal", "hierarchical0_3", "toeplitz", 3]
)
def test_unknown_structure_names_list_the_valid_ones(bad: object) -> None:
    with pytest.raises(ValueError, match=r"valid names are: .*dense.*triltoeplitz"):
        structmat.get_structure(bad)  # type: ignore[arg-type]
