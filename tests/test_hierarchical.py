"""Hierarchical and transposed hierarchical structures: layout, examples, errors, parity."""

from __future__ import annotations

import pickle

import pytest
import torch

import structmat
from structmat import Hierarchical, SingularMatrixError, TransposedHierarchical
from tests.strategies import random_member, random_tensor

FAMILIES = [Hierarchical, TransposedHierarchical]


@pytest.mark.parametrize("root", FAMILIES)
def test_families_are_cached_and_registered(root: type) -> None:
    cls = root.with_sizes(15, 15)
    assert cls is root.with_sizes(15, 15)
    assert cls is structmat.get_structure(f"{root.family}15_15")
    assert issubclass(cls, root)
    assert (cls.max_k1, cls.max_k2) == (15, 15)
    assert cls.name == f"{root.family}15_15"
    assert root.with_sizes(3, 2) is not root.with_sizes(2, 3)
    assert f"{root.family}{{k1}}_{{k2}}" in structmat.available_structures()


def test_transpose_maps_each_family_to_the_other() -> None:
    H = random_member(Hierarchical.with_sizes(3, 2), 8, seed=0)
    M = H.T
    assert type(M) is TransposedHierarchical.with_sizes(3, 2)
    assert type(M.T) is Hierarchical.with_sizes(3, 2)
    # a relabelling of the same storage
    assert all(M.tensors()[key] is tensor for key, tensor in H.tensors().items())
    assert torch.equal(M.to_dense(), H.to_dense().T)


@pytest.mark.parametrize("root", FAMILIES)
@pytest.mark.parametrize(("k1", "k2"), [(0, 2), (3, 0), (-1, 1)])
def test_non_positive_sizes_are_rejected(root: type, k1: int, k2: int) -> None:
    with pytest.raises(ValueError, match="positive"):
        root.with_sizes(k1, k2)
    with pytest.raises(ValueError, match="valid names"):
        structmat.get_structure(f"{root.family}{k1}_{k2}")


@pytest.mark.parametrize("root", FAMILIES)
def test_bad_size_types_and_template_are_rejected(root: type) -> None:
    with pytest.raises(TypeError, match="k1"):
        root.with_sizes(2.0, 3)
    with pytest.raises(TypeError, match="k2"):
        root.with_sizes(2, True)
    with pytest.raises(TypeError, match="with_sizes"):
        root.tensor_shapes(4)


@pytest.mark.parametrize(
    ("dim", "sizes"),
    [
        (1, (1, 0, 0)),
        (3, (3, 0, 0)),
        (4, (3, 0, 1)),
        (5, (3, 0, 2)),
        (6, (3, 1, 2)),
        (9, (3, 4, 2)),
    ],
)
def test_block_sizes_follow_the_priority(dim: int, sizes: tuple[int, int, int]) -> None:
    for root in FAMILIES:
        cls = root.with_sizes(3, 2)
        assert cls.block_sizes(dim) == sizes
        k1, dc, k2 = sizes
        assert cls.tensor_shapes(dim) == {
            "A": (k1, k1),
            "B": (k1, dim - k1),
            "C": (dc,),
            "D": (k2, dc),
            "E": (k2, k2),
        }
        assert cls.zeros(dim).sizes == sizes


def explicit_member() -> Hierarchical:
    """``d = 7`` with ``(K1, dc, K2) = (2, 3, 2)`` and distinct, non-symmetric entries."""
    cls = Hierarchical.with_sizes(2, 2)
    return cls(
        A=torch.tensor([[1.0, 2.0], [3.0, 4.0]]),
        B=torch.arange(10.0, 20.0).reshape(2, 5),
        C=torch.tensor([5.0, 6.0, 7.0]),
        D=torch.arange(20.0, 26.0).reshape(2, 3),
        E=torch.tensor([[8.0, 9.0], [-1.0, -2.0]]),
    )


EXPLICIT = torch.tensor(
    [
        [1.0, 2.0, 10.0, 11.0, 12.0, 13.0, 14.0],
        [3.0, 4.0, 15.0, 16.0, 17.0, 18.0, 19.0],
        [0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 6.0, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0, 7.0, 0.0, 0.0],
        [0.0, 0.0, 20.0, 21.0, 22.0, 8.0, 9.0],
        [0.0, 0.0, 23.0, 24.0, 25.0, -1.0, -2.0],
    ]
)


def test_explicit_example() -> None:
    H = explicit_member()
    assert torch.equal(H.to_dense(), EXPLICIT)
    assert torch.equal(H.T.to_dense(), EXPLICIT.T)
    assert torch.equal(H.diag(), torch.tensor([1.0, 4.0, 5.0, 6.0, 7.0, 8.0, -2.0]))
    X = torch.arange(14.0).reshape(7, 2)
    assert torch.equal(H @ X, EXPLICIT @ X)
    assert torch.equal(H.rmatmat(X), EXPLICIT.T @ X)
    assert torch.equal(H.T @ X, EXPLICIT.T @ X)
    assert torch.equal(H.T.rmatmat(X), EXPLICIT @ X)


def test_from_dense_folds_the_one_sided_blocks() -> None:
    S = torch.arange(49.0).reshape(7, 7)
    H = Hierarchical.with_sizes(2, 2).from_dense(S)
    assert torch.equal(H.A, S[:2, :2])
    assert torch.equal(H.B, S[:2, 2:] + S[2:, :2].T)
    assert torch.equal(H.C, S.diagonal()[2:5])
    assert torch.equal(H.D, S[5:, 2:5] + S[2:5, 5:].T)
    assert torch.equal(H.E, S[5:, 5:])
    M = TransposedHierarchical.with_sizes(2, 2).from_dense(S)
    dense = M.to_dense()
    assert torch.equal(dense[:2, :2], S[:2, :2])
    assert torch.equal(dense[5:, 5:], S[5:, 5:])
    assert torch.equal(dense[2:, :2], S[2:, :2] + S[:2, 2:].T)
    assert torch.equal(dense[2:5, 5:], S[2:5, 5:] + S[5:, 2:5].T)
    assert torch.equal(dense.diagonal(), S.diagonal())
    # the transposed projection is the transpose of the projection of S^T
    assert torch.equal(dense, Hierarchical.with_sizes(2, 2).from_dense(S.T).to_dense().T)


def test_from_dense_copies_its_input() -> None:
    for root in FAMILIES:
        S = torch.randn(9, 9)
        root.with_sizes(3, 2).from_dense(S).mul_(0.0)
        assert S.abs().sum() > 0


@pytest.mark.parametrize("root", FAMILIES)
@pytest.mark.parametrize("part", ["A", "C", "E"])
def test_singular_parts_raise(root: type, part: str) -> None:
    cls = root.with_sizes(3, 2)
    A = cls.eye(9, dtype=torch.float64)
    tensor = getattr(A, part)
    if part == "C":
        tensor[1] = 0.0
    else:
        tensor[0] = tensor[1]
    with pytest.raises(SingularMatrixError, match="singular"):
        A.inv()


@pytest.mark.parametrize("root", FAMILIES)
@pytest.mark.parametrize("dim", [1, 3, 4, 5, 6, 12])
def test_inverse_is_exact_on_small_members(root: type, dim: int) -> None:
    A = random_member(root.with_sizes(3, 2), dim, seed=dim, invertible=True)
    A_inv = A.inv()
    eye = torch.eye(dim, dtype=torch.float64)
    torch.testing.assert_close((A @ A_inv).to_dense(), eye)
    torch.testing.assert_close(A_inv.to_dense(), torch.linalg.inv(A.to_dense()))


@pytest.mark.parametrize("root", FAMILIES)
def test_bad_tensors_are_rejected(root: type) -> None:
    cls = root.with_sizes(3, 2)
    good = {key: torch.zeros(shape) for key, shape in cls.tensor_shapes(9).items()}
    cls(**good)
    with pytest.raises(ValueError, match=r"B must have shape \(3, 6\)"):
        cls(**{**good, "B": torch.zeros(3, 5)})
    with pytest.raises(ValueError, match=r"A must have shape \(3, 3\)"):
        cls(**{**good, "A": torch.zeros(4, 4), "B": torch.zeros(4, 6)})
    with pytest.raises(ValueError, match="C must be a 1-d tensor"):
        cls(**{**good, "C": torch.zeros(4, 1)})
    with pytest.raises(ValueError, match="dtype"):
        cls(**{**good, "E": torch.zeros(2, 2, dtype=torch.float64)})
    with pytest.raises(TypeError, match=r"D must be a torch\.Tensor"):
        cls(**{**good, "D": [[0.0] * 4] * 2})
    empty = {key: torch.zeros([0] * tensor.ndim) for key, tensor in good.items()}
    with pytest.raises(ValueError, match="d >= 1"):
        cls(**empty)


@pytest.mark.parametrize("root", FAMILIES)
def test_pickle_round_trip(root: type) -> None:
    A = random_member(root.with_sizes(3, 2), 8, seed=0)
    B = pickle.loads(pickle.dumps(A))
    assert type(B) is type(A)
    assert torch.equal(B.to_dense(), A.to_dense())


# ------------------------------------------------------------ reference parity
@pytest.mark.reference
@pytest.mark.parametrize(("k1", "k2"), [(15, 15), (3, 2)])
@pytest.mark.parametrize("dim", [1, 2, 3, 4, 5, 6, 15, 16, 30, 31, 32, 45])
def test_matches_reference_on_symmetric_input(k1: int, k2: int, dim: int) -> None:
    hierarchical = pytest.importorskip("singd.structures.hierarchical")
    reference_cls = {
        (15, 15): hierarchical.Hierarchical15_15Matrix,
        (3, 2): hierarchical.Hierarchical3_2Matrix,
    }[(k1, k2)]
    cls = Hierarchical.with_sizes(k1, k2)
    S = random_tensor((dim, dim), seed=dim)
    sym = S + S.T
    ours, theirs = cls.from_dense(sym), reference_cls.from_dense(sym)
    for key in ("A", "B", "C", "D", "E"):
        torch.testing.assert_close(getattr(ours, key), getattr(theirs, key))
    torch.testing.assert_close(ours.to_dense(), theirs.to_dense())
    # for symmetric S the transposed projection is the transpose of the projection
    transposed = TransposedHierarchical.with_sizes(k1, k2).from_dense(sym)
    torch.testing.assert_close(transposed.to_dense(), theirs.to_dense().T)
    # kernels on general members agree with the reference (which computes in float32)
    A = random_member(cls, dim, seed=dim + 1, dtype=torch.float32)
    ref = reference_cls(*A.tensors().values())
    X = random_tensor((dim, 4), seed=dim + 2, dtype=torch.float32)
    torch.testing.assert_close(A @ X, ref @ X)
    torch.testing.assert_close(A.rmatmat(X), ref.rmatmat(X))
    torch.testing.assert_close((A @ A).to_dense(), (ref @ ref).to_dense())
    # from_inner(X) sums in another order (from the rows of X X^T): equal up to a few
    # float32 unit roundoffs relative to the result's magnitude
    inner, ref_inner = A.from_inner(X).to_dense(), ref.from_inner(X).to_dense()
    scale = 4 * torch.finfo(torch.float32).eps * (1.0 + float(ref_inner.abs().max()))
    torch.testing.assert_close(inner, ref_inner, rtol=0, atol=scale)
    torch.testing.assert_close(A.from_inner().to_dense(), ref.from_inner().to_dense())
