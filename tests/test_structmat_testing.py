"""The shipped law suite and strategies themselves: broken structures fail the law they break."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import structmat
from structmat import (
    BlockDiagonal,
    Dense,
    Diagonal,
    SingularMatrixError,
    StructuredMatrix,
    TrilToeplitz,
)
from structmat._layout import stored_by_columns
from structmat.linear_structure import LinearStructure
from structmat.testing import (
    LargestAllocation,
    StructureLaws,
    interesting_dims,
    layouts,
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


# ------------------------------------ broken in the ways the newer laws are there for
class ChunkedDense(Dense):
    """Multiplies in chunks of 128 rows above d = 130 and forgets the last chunk."""

    name = None

    def _matmat(self, X: Tensor) -> Tensor:
        d = self.shape[0]
        if d <= 130:
            return self.matrix @ X
        out = torch.zeros_like(X, memory_format=torch.contiguous_format)
        for start in range(0, d - d % 128, 128):
            out[start : start + 128] = self.matrix[start : start + 128] @ X
        return out


class FirstColumnsDiagonal(Diagonal):
    """``from_inner(X)`` that reads only the first 64 columns of a batch-sized ``X``."""

    name = None

    def _from_inner(self, X: Tensor) -> Diagonal:
        X = X[:, :64]
        return type(self)((X * X).sum(1) * self.diagonal.square())


class TransposedViewDense(Dense):
    """A special path for transposed-view operands that multiplies by ``A^T`` instead."""

    name = None

    def _matmat(self, X: Tensor) -> Tensor:
        if stored_by_columns(X):
            return (X.mT @ self.matrix).mT  # (X^T A)^T = A^T X: wrong
        return self.matrix @ X


class CachedScaleDiagonal(Diagonal):
    """Caches its diagonal for products and never notices in-place updates."""

    name = None

    def _matmat(self, X: Tensor) -> Tensor:
        if "_cached" not in self.__dict__:
            self.__dict__["_cached"] = self.diagonal.clone()
        return self.__dict__["_cached"].unsqueeze(1) * X


class ViewingDense(Dense):
    """``from_dense`` that keeps a view of its input."""

    name = None

    @classmethod
    def from_dense(cls, sym_mat: Tensor) -> Dense:
        return cls(cls.check_square(sym_mat))


class Float32TransposeDiagonal(Diagonal):
    """A transpose computed in float32 (a bfloat16 member comes back as float32)."""

    name = None

    def _transpose(self) -> StructuredMatrix:
        return type(self)(self.diagonal.float())


class PromotingDiagonal(Diagonal):
    """Overrides ``@`` and promotes a tensor operand of another dtype."""

    name = None

    def __matmul__(self, other: object) -> object:
        aligned = isinstance(other, Tensor) and other.ndim == 2 and len(other) == self.shape[0]
        if aligned and other.dtype != self.dtype:
            return self.diagonal.to(other.dtype).unsqueeze(1) * other
        return super().__matmul__(other)


class ZeroCheckDiagonal(Diagonal):
    """An inverse that raises for the zero matrix only."""

    name = None

    def _inv(self) -> Diagonal:
        if not bool(self.diagonal.any()):
            raise SingularMatrixError("the zero matrix is singular")
        return type(self)(self.diagonal.reciprocal())


class Tridiagonal(LinearStructure):
    """Tridiagonal matrices (three diagonals), a complete structure with dense fallbacks."""

    name = None

    def __init__(self, lower: Tensor, main: Tensor, upper: Tensor) -> None:
        super().__init__(lower=lower, main=main, upper=upper)

    @classmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        return {"lower": (dim - 1,), "main": (dim,), "upper": (dim - 1,)}

    @classmethod
    def from_dense(cls, sym_mat: Tensor) -> Tridiagonal:
        S = cls.check_square(sym_mat)
        return cls(S.diagonal(-1).clone(), S.diagonal().clone(), S.diagonal(1).clone())

    def to_dense(self) -> Tensor:
        return torch.diag(self.main) + torch.diag(self.lower, -1) + torch.diag(self.upper, 1)


class InvertibleTridiagonal(Tridiagonal):
    """Declares a fact that does not hold: inverses of tridiagonal matrices are dense."""

    closed_under_inverse = True


class HalfLength(Diagonal):
    """Stores every other diagonal entry: the stored shapes do not determine ``d``."""

    name = None

    @classmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        return {"diagonal": ((dim + 1) // 2,)}

    @classmethod
    def dim_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> int:
        return 2 * shapes["diagonal"][0] - 1  # a 10 x 10 input reads as 9 x 9


class SquaringEigenDiagonal(Diagonal):
    """``compose`` that squares the new eigenvalues instead of using them."""

    name = None

    def _symmetric_eigen(self):  # type: ignore[no-untyped-def]
        dtype = self.dtype
        return self.diagonal, lambda values: type(self)(values.square().to(dtype))


class UndeclaredSpectralDense(Dense):
    """Decomposes although it does not declare ``closed_under_spectral_functions``."""

    name = None
    closed_under_spectral_functions = False

    def symmetric_eigen(self):  # type: ignore[no-untyped-def,override]
        return self._symmetric_eigen()


class RowScalingDiagonal(Diagonal):
    """``from_inner_diagonal`` with :math:`a_i v_i` instead of :math:`a_i^2 v_i`."""

    name = None

    def _from_inner_diagonal(self, values: Tensor) -> Diagonal:
        return type(self)(self.diagonal * values)


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
    (ChunkedDense, "test_large_members_and_batch_sized_operands"),
    (FirstColumnsDiagonal, "test_large_members_and_batch_sized_operands"),
    (TransposedViewDense, "test_products_with_tensors_match_dense"),
    (CachedScaleDiagonal, "test_products_after_in_place_updates"),
    (ViewingDense, "test_results_own_their_storage"),
    (Float32TransposeDiagonal, "test_every_operation_keeps_the_dtype"),
    (PromotingDiagonal, "test_mixed_dtype_operands_are_rejected"),
    (ZeroCheckDiagonal, "test_singular_inverse_raises"),
    (InvertibleTridiagonal, "test_inverse"),
    (SquaringEigenDiagonal, "test_spectral_functions"),
    (UndeclaredSpectralDense, "test_spectral_functions"),
    (RowScalingDiagonal, "test_projected_products_match_dense"),
]

# The broken structures of the newer laws pass the laws their bug does not reach: the
# laws at small sizes, with contiguous operands, without in-place updates, ...
PASSING = [
    (ChunkedDense, "test_products_with_tensors_match_dense"),
    (FirstColumnsDiagonal, "test_projected_products_match_dense"),
    (TransposedViewDense, "test_arithmetic_matches_dense"),
    (CachedScaleDiagonal, "test_in_place_operations_match_dense"),
    (ViewingDense, "test_from_dense_is_the_projection"),
    (ZeroCheckDiagonal, "test_inverse"),
    (Tridiagonal, "test_transpose_is_the_declared_structure"),
    (Tridiagonal, "test_inverse"),
    (SquaringEigenDiagonal, "test_arithmetic_matches_dense"),
    (RowScalingDiagonal, "test_spectral_functions"),
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


@pytest.mark.filterwarnings("ignore::structmat.DenseFallbackWarning")
@pytest.mark.parametrize(("structure", "law"), PASSING, ids=lambda x: getattr(x, "__name__", x))
def test_a_broken_structure_passes_the_laws_its_bug_does_not_reach(
    structure: type[StructuredMatrix], law: str
) -> None:
    report = laws_for(structure).check(max_examples=5, raise_on_failure=False, laws=[law])
    assert report.ok, str(report)


def test_large_law_reaches_large_sizes_and_batch_columns() -> None:
    seen: list[tuple[int, int]] = []

    class Recording(StructureLaws):
        structure = Diagonal

        def check_products(self, A: StructuredMatrix, X: Tensor) -> None:
            seen.append((A.shape[0], X.shape[1]))
            super().check_products(A, X)

    Recording().check(max_examples=12, laws=["test_large_members_and_batch_sized_operands"])
    assert len(seen) == Recording.large_examples
    assert all(131 <= d <= 300 and 64 <= n <= 256 for d, n in seen), seen


def test_layouts_are_equal_in_value_and_cover_transposed_and_strided_views() -> None:
    X = torch.randn(6, 4, dtype=torch.float64)
    found = layouts(X)
    assert all(torch.equal(Y, X) for Y in found.values())
    assert found["contiguous"].is_contiguous()
    assert found["transposed view"].mT.is_contiguous()
    assert found["column-strided"].stride() == (8, 2)
    assert not found["transposed strided view"].mT.is_contiguous()
    assert all(torch.equal(y, X[:, 0]) for y in layouts(X[:, 0]).values())


def test_shipped_settings_have_no_deadline() -> None:
    class Shipped(StructureLaws):
        structure = Diagonal

    law = Shipped.test_arithmetic_matches_dense
    assert law._hypothesis_internal_use_settings.deadline is None  # type: ignore[attr-defined]


def test_linear_structures_declare_no_facts() -> None:
    assert not Tridiagonal.closed_under_inverse
    assert not Tridiagonal.closed_under_transpose and Tridiagonal.transpose_name is None
    A = random_member(Tridiagonal, 4, seed=0)
    with pytest.raises(TypeError, match="not closed under inversion"):
        A.inv()
    with pytest.warns(structmat.DenseFallbackWarning):
        assert type(A.T) is Dense and type(A.T.T) is Dense


def test_registration_rejects_shapes_that_do_not_determine_the_dimension() -> None:
    registered = type("Registered", (HalfLength,), {"name": "halflength"})
    with pytest.raises(TypeError, match=r"do not determine the dimension.*1 x 1 and 2 x 2"):
        structmat.register(registered)
    assert "halflength" not in structmat.available_structures()


def test_the_declared_structure_law_checks_that_shapes_determine_the_dimension() -> None:
    report = laws_for(HalfLength).check(raise_on_failure=False, laws=["test_declared_structure"])
    assert "do not determine the dimension" in report.failed["test_declared_structure"]


def test_a_structure_defining_rmatmat_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"defines _rmatmat.*derive from _transpose"):
        type("OwnRmatmat", (Diagonal,), {"_rmatmat": lambda self, X: X})


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
