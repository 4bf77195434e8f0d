"""Block-diagonal structures: layout, explicit examples, errors and reference parity."""

from __future__ import annotations

import pickle

import pytest
import torch

import structmat
from structmat import BlockDiagonal, SingularMatrixError
from tests.strategies import random_member, random_tensor


def test_family_is_cached_and_registered() -> None:
    cls = BlockDiagonal.with_block_size(30)
    assert cls is BlockDiagonal.with_block_size(30)
    assert cls is structmat.get_structure("block30diagonal")
    assert issubclass(cls, BlockDiagonal)
    assert cls.block_size == 30
    assert cls.name == "block30diagonal"
    assert cls.__name__ == "BlockDiagonal30"
    assert structmat.get_structure("block1diagonal").block_size == 1
    assert "block{b}diagonal" in structmat.available_structures()


@pytest.mark.parametrize("bad", [0, -1, -30])
def test_non_positive_block_size_is_rejected(bad: int) -> None:
    with pytest.raises(ValueError, match="block_size"):
        BlockDiagonal.with_block_size(bad)
    with pytest.raises(ValueError, match="block0diagonal"):
        structmat.get_structure("block0diagonal")


@pytest.mark.parametrize("bad", [2.0, "3", True, None])
def test_non_integer_block_size_is_rejected(bad: object) -> None:
    with pytest.raises(TypeError, match="block_size"):
        BlockDiagonal.with_block_size(bad)  # type: ignore[arg-type]


def test_template_cannot_be_instantiated() -> None:
    with pytest.raises(TypeError, match="with_block_size"):
        BlockDiagonal(blocks=torch.zeros(1, 2, 2), last_block=torch.zeros(0, 0))
    with pytest.raises(TypeError, match="with_block_size"):
        BlockDiagonal.tensor_shapes(4)


@pytest.mark.parametrize(
    ("b", "dim", "count", "rest"),
    [(3, 7, 2, 1), (3, 6, 2, 0), (3, 2, 0, 2), (1, 5, 5, 0), (30, 64, 2, 4), (30, 29, 0, 29)],
)
def test_tensor_shapes_and_boundaries(b: int, dim: int, count: int, rest: int) -> None:
    cls = BlockDiagonal.with_block_size(b)
    assert cls.tensor_shapes(dim) == {"blocks": (count, b, b), "last_block": (rest, rest)}
    zero = cls.zeros(dim, dtype=torch.float64)
    assert zero.shape == torch.Size([dim, dim])
    assert torch.equal(cls.eye(dim, dtype=torch.float64).to_dense(), torch.eye(dim).double())


def test_explicit_example() -> None:
    cls = BlockDiagonal.with_block_size(2)
    blocks = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]])
    A = cls(blocks=blocks, last_block=torch.tensor([[9.0]]))
    expected = torch.tensor(
        [
            [1.0, 2.0, 0.0, 0.0, 0.0],
            [3.0, 4.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 5.0, 6.0, 0.0],
            [0.0, 0.0, 7.0, 8.0, 0.0],
            [0.0, 0.0, 0.0, 0.0, 9.0],
        ]
    )
    assert torch.equal(A.to_dense(), expected)
    assert torch.equal(A.T.to_dense(), expected.T)
    assert torch.equal(A.diag(), torch.tensor([1.0, 4.0, 5.0, 8.0, 9.0]))
    X = torch.arange(10.0).reshape(5, 2)
    assert torch.equal(A @ X, expected @ X)
    assert torch.equal(A.rmatmat(X), expected.T @ X)
    # the transpose transposes every (non-symmetric) block
    assert torch.equal(A.T.blocks, blocks.mT)
    projected = cls.from_dense(torch.arange(25.0).reshape(5, 5))
    assert torch.equal(projected.blocks, torch.tensor([[[0.0, 1], [5, 6]], [[12, 13], [17, 18]]]))
    assert torch.equal(projected.last_block, torch.tensor([[24.0]]))


@pytest.mark.parametrize("dim", [1, 5, 6, 7, 12])
def test_from_inner_uses_the_transposed_blocks(dim: int) -> None:
    cls = BlockDiagonal.with_block_size(3)
    A = random_member(cls, dim, seed=dim)
    X = random_tensor((dim, 4), seed=dim + 1)
    a = A.to_dense()
    S = a.T @ X
    expected = cls.from_dense(S @ S.T).to_dense()
    torch.testing.assert_close(A.from_inner(X).to_dense(), expected)
    torch.testing.assert_close(A.from_inner().to_dense(), cls.from_dense(a.T @ a).to_dense())


def test_from_dense_copies_its_input() -> None:
    cls = BlockDiagonal.with_block_size(2)
    S = torch.randn(5, 5)
    A = cls.from_dense(S)
    A.mul_(0.0)
    assert S.abs().sum() > 0


def test_singular_blocks_raise() -> None:
    cls = BlockDiagonal.with_block_size(2)
    blocks = torch.eye(2).repeat(2, 1, 1)
    blocks[1] = torch.tensor([[1.0, 2.0], [2.0, 4.0]])
    with pytest.raises(SingularMatrixError, match="singular"):
        cls(blocks=blocks, last_block=torch.eye(1)).inv()
    with pytest.raises(SingularMatrixError, match="singular"):
        cls(blocks=torch.eye(2).repeat(2, 1, 1), last_block=torch.zeros(1, 1)).inv()
    inverse = cls(blocks=2 * torch.eye(2).repeat(2, 1, 1), last_block=torch.eye(1)).inv()
    assert torch.equal(inverse.diag(), torch.tensor([0.5, 0.5, 0.5, 0.5, 1.0]))


@pytest.mark.parametrize(
    ("blocks", "last_block", "match"),
    [
        (torch.zeros(2, 3, 3), torch.zeros(0, 0), r"blocks must have shape \(2, 2, 2\)"),
        (torch.zeros(2, 2), torch.zeros(0, 0), "blocks must be a 3-d tensor"),
        (torch.zeros(1, 2, 2), torch.zeros(2, 2), r"last_block must have shape \(0, 0\)"),
        (torch.zeros(1, 2, 2), torch.zeros(1, 2), r"last_block must have shape \(1, 1\)"),
        (torch.zeros(0, 2, 2), torch.zeros(0, 0), "d >= 1"),
        (torch.zeros(1, 2, 2), torch.zeros(1, 1, dtype=torch.float64), "dtype"),
    ],
)
def test_bad_tensors_are_rejected(blocks: object, last_block: object, match: str) -> None:
    cls = BlockDiagonal.with_block_size(2)
    with pytest.raises(ValueError, match=match):
        cls(blocks=blocks, last_block=last_block)


def test_non_tensor_is_rejected() -> None:
    cls = BlockDiagonal.with_block_size(2)
    with pytest.raises(TypeError, match="blocks"):
        cls(blocks=[[[1.0]]], last_block=torch.zeros(0, 0))  # type: ignore[arg-type]


def test_pickle_round_trip() -> None:
    A = random_member(BlockDiagonal.with_block_size(3), 7, seed=0)
    B = pickle.loads(pickle.dumps(A))
    assert type(B) is type(A)
    assert torch.equal(B.to_dense(), A.to_dense())


# ------------------------------------------------------------ reference parity
@pytest.mark.reference
@pytest.mark.parametrize("b", [3, 30])
@pytest.mark.parametrize("dim", [1, 2, 3, 4, 29, 30, 31, 60, 67])
def test_matches_reference_on_symmetric_input(b: int, dim: int) -> None:
    blockdiagonal = pytest.importorskip("singd.structures.blockdiagonal")
    reference_cls = {
        3: blockdiagonal.Block3DiagonalMatrix,
        30: blockdiagonal.Block30DiagonalMatrix,
    }[b]
    cls = BlockDiagonal.with_block_size(b)
    S = random_tensor((dim, dim), seed=dim)
    sym = S + S.T
    ours, theirs = cls.from_dense(sym), reference_cls.from_dense(sym)
    torch.testing.assert_close(ours.blocks, theirs._blocks)
    torch.testing.assert_close(ours.last_block, theirs._last)
    torch.testing.assert_close(ours.to_dense(), theirs.to_dense())
    # symmetric members: every kernel agrees with the reference (which computes in float32)
    ours, theirs = ours.to(torch.float32), reference_cls.from_dense(sym.float())
    X = random_tensor((dim, 5), seed=dim + 1, dtype=torch.float32)
    pairs = [
        (cls.from_mat_inner(X), reference_cls.from_mat_inner(X)),
        (ours.from_inner(X), theirs.from_inner(X)),
        (ours.from_inner(), theirs.from_inner()),
        (ours @ ours, theirs @ theirs),
    ]
    for mine, reference in pairs:
        torch.testing.assert_close(mine.to_dense(), reference.to_dense())
    torch.testing.assert_close(ours @ X, theirs @ X)
