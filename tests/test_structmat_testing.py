"""The shipped law suite and strategies themselves: broken structures fail the law they break."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import structmat
from structmat import BlockDiagonal, Diagonal, StructuredMatrix, TrilToeplitz
from structmat.linear_structure import LinearStructure
from structmat.testing import (
    LargestAllocation,
    StructureLaws,
    interesting_dims,
    members,
    random_member,
)

Block3 = BlockDiagonal.with_block_size(3)


# ----------------------------------------------------- deliberately broken structures
class ForgetfulTranspose(Block3):
    """Transposes the block order but not the blocks."""

    name = None

    def _transpose(self) -> StructuredMatrix:
        return type(self)(blocks=self.blocks, last_block=self.last_block)


class StorageNormToeplitz(TrilToeplitz):
    """Frobenius norm of the storage, forgetting that coefficients repeat."""

    name = None

    def _frobenius_norm(self) -> Tensor:
        return LinearStructure._frobenius_norm(self)


class SquaringNorm(Diagonal):
    """Frobenius norm through the squares in the storage dtype (overflows in float16)."""

    name = None

    def _frobenius_norm(self) -> Tensor:
        return self.diagonal.square().sum().sqrt()


class UnsquaredSandwich(Diagonal):
    """``from_inner2`` with ``a_i M_ii`` instead of ``a_i^2 M_ii``."""

    name = None

    def _from_inner2(self, XXT: Tensor) -> Diagonal:
        return type(self)(self.diagonal * XXT.diagonal())


class DenseFromInner2(Diagonal):
    """``from_inner2`` through the generic dense fallback."""

    name = None
    _from_inner2 = StructuredMatrix._from_inner2


class DenseDiagonal(Diagonal):
    """Reads its diagonal off a dense ``d x d`` matrix."""

    name = None

    def _diag(self) -> Tensor:
        return self.to_dense().diagonal().clone()


class UncheckedStorage(Diagonal):
    """Stores its tensor without the shared constructor check."""

    name = None

    def __init__(self, diagonal: Tensor) -> None:
        StructuredMatrix.__init__(self)
        self.register_tensor("diagonal", diagonal)


class NoReciprocal(Diagonal):
    """An inverse that forgets to invert, and to check for singularity."""

    name = None

    def _inv(self) -> Diagonal:
        return type(self)(self.diagonal.clone())


class MisdeclaredTranspose(structmat.Tril):
    """Declares Tril as its transpose structure, which transposes to Triu, not back."""

    name = None
    transpose_name = "tril"


def laws_for(structure: type[StructuredMatrix]) -> StructureLaws:
    return type(f"{structure.__name__}Laws", (StructureLaws,), {"structure": structure})()


BROKEN = [
    (ForgetfulTranspose, "test_transpose_is_the_declared_structure"),
    (ForgetfulTranspose, "test_arithmetic_matches_dense"),
    (StorageNormToeplitz, "test_reductions_match_dense"),
    (SquaringNorm, "test_half_precision_reductions_do_not_overflow"),
    (UnsquaredSandwich, "test_projected_products_match_dense"),
    (DenseFromInner2, "test_every_operation_is_structured"),
    (DenseDiagonal, "test_every_operation_is_structured"),
    (UncheckedStorage, "test_bad_storage_is_rejected"),
    (NoReciprocal, "test_inverse"),
    (NoReciprocal, "test_singular_inverse_raises"),
]


@pytest.mark.filterwarnings("ignore::structmat.DenseFallbackWarning")
@pytest.mark.parametrize(("structure", "law"), BROKEN, ids=lambda x: getattr(x, "__name__", x))
def test_a_broken_structure_fails_the_law_it_breaks(
    structure: type[StructuredMatrix], law: str
) -> None:
    control = "test_bad_operands_are_rejected"  # holds for every structure here
    report = laws_for(structure).check(max_examples=5, raise_on_failure=False, laws=[law, control])
    assert law in report.failed, str(report)
    assert control in report.passed, str(report)
    assert "FAILED " + law in str(report)


def test_declared_transpose_structure_must_transpose_back() -> None:
    report = laws_for(MisdeclaredTranspose).check(
        raise_on_failure=False, laws=["test_declared_structure"]
    )
    assert "Triu, not MisdeclaredTranspose" in report.failed["test_declared_structure"]


def test_declaring_both_transpose_facts_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"closed_under_transpose.*transpose_name"):
        type("Both", (Diagonal,), {"closed_under_transpose": True, "transpose_name": "dense"})


def test_check_runs_every_law_of_a_correct_structure() -> None:
    report = laws_for(Diagonal).check(max_examples=3)
    assert report.ok and not report.failed
    assert report.passed == StructureLaws.law_names()
    assert str(report).startswith(f"Diagonal: {len(report.passed)} of {len(report.passed)}")


def test_check_raises_with_the_report_and_rejects_unknown_laws() -> None:
    laws = laws_for(ForgetfulTranspose)
    with pytest.raises(AssertionError, match="FAILED test_transpose_is_the_declared_structure"):
        laws.check(max_examples=3, laws=["test_transpose_is_the_declared_structure"])
    with pytest.raises(ValueError, match=r"unknown laws.*test_nothing"):
        laws.check(laws=["test_nothing"])


def test_a_law_set_to_none_is_switched_off() -> None:
    class WithoutGradients(StructureLaws):
        structure = Diagonal
        test_gradients = None

    assert "test_gradients" not in WithoutGradients.law_names()
    assert "test_gradients" in StructureLaws.law_names()


# ---------------------------------------------------------------------- strategies
def test_interesting_dims_are_the_storage_boundaries() -> None:
    block30 = interesting_dims(structmat.get_structure("block30diagonal"))
    assert {1, 2, 29, 30, 31, 59, 60, 61, 70} <= set(block30)
    hierarchical = interesting_dims(structmat.get_structure("hierarchical3_2"))
    assert {3, 4, 5, 6} <= set(hierarchical)  # E, then the diagonal block, appear
    assert max(interesting_dims(Diagonal, max_dim=20)) == 20


@given(data=st.data())
def test_members_follow_the_declared_storage(data: st.DataObject) -> None:
    structure = structmat.get_structure("hierarchical3_2")
    A = data.draw(members(structure, dtype=torch.float32))
    assert type(A) is structure and A.dtype == torch.float32
    d = A.shape[0]
    assert {k: tuple(t.shape) for k, t in A.named_tensors()} == structure.tensor_shapes(d)
    B = data.draw(members(structure, 7, invertible=True))
    assert B.shape == (7, 7)


@pytest.mark.parametrize("name", ["dense", "triltoeplitz", "trilbottomrightdiag"])
def test_invertible_members_are_well_conditioned(name: str) -> None:
    structure = structmat.get_structure(name)
    for dim in (1, 9, 40):
        A = random_member(structure, dim, seed=dim, invertible=True).to_dense()
        assert float(torch.linalg.matrix_norm(torch.linalg.inv(A), ord=float("inf"))) <= 2.0


def test_largest_allocation_counts_new_storage_only() -> None:
    big = torch.zeros(30, 30)
    with LargestAllocation() as record:
        big[:5].sum(0)  # a view (not counted), then a 30-element result
        big.mT.diagonal()
    assert record.largest == 30
    with LargestAllocation() as record:
        big + 1
    assert record.largest == 900 and "add" in record.op


def test_import_structmat_does_not_need_hypothesis() -> None:
    code = "import sys, structmat; sys.exit('hypothesis' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
