"""Every built-in structure through the shipped law suite, :class:`structmat.testing.StructureLaws`.

One small subclass per structure; pytest runs every law of the suite on each. The
parametric families are tested at a small member (boundaries close together) and at
the member SINGD uses by default.
"""

from __future__ import annotations

import re

import pytest
from torch import Tensor

import structmat
from structmat.testing import StructureLaws
from tests.strategies import toeplitz_projection


class TestDense(StructureLaws):
    structure = structmat.Dense


class TestDiagonal(StructureLaws):
    structure = structmat.Diagonal


class TestBlock1Diagonal(StructureLaws):
    structure = structmat.get_structure("block1diagonal")


class TestBlock3Diagonal(StructureLaws):
    structure = structmat.get_structure("block3diagonal")


class TestBlock30Diagonal(StructureLaws):
    structure = structmat.get_structure("block30diagonal")


class TestHierarchical3By2(StructureLaws):
    structure = structmat.get_structure("hierarchical3_2")


class TestHierarchical15By15(StructureLaws):
    structure = structmat.get_structure("hierarchical15_15")


class TestTransposedHierarchical3By2(StructureLaws):
    structure = structmat.get_structure("transposedhierarchical3_2")


class TestTransposedHierarchical15By15(StructureLaws):
    structure = structmat.get_structure("transposedhierarchical15_15")


class TestTrilToeplitz(StructureLaws):
    structure = structmat.TrilToeplitz

    def project(self, mat: Tensor) -> Tensor:
        return toeplitz_projection(mat, upper=False)


class TestTriuToeplitz(StructureLaws):
    structure = structmat.TriuToeplitz

    def project(self, mat: Tensor) -> Tensor:
        return toeplitz_projection(mat, upper=True)


class TestTrilTopLeftDiag(StructureLaws):
    structure = structmat.TrilTopLeftDiag


class TestTrilBottomRightDiag(StructureLaws):
    structure = structmat.TrilBottomRightDiag


class TestTriuTopLeftDiag(StructureLaws):
    structure = structmat.TriuTopLeftDiag


class TestTriuBottomRightDiag(StructureLaws):
    structure = structmat.TriuBottomRightDiag


class TestTril(StructureLaws):
    structure = structmat.Tril


class TestTriu(StructureLaws):
    structure = structmat.Triu


def test_every_registered_structure_is_tested() -> None:
    tested = {cls.structure for cls in StructureLaws.__subclasses__() if cls.__module__ == __name__}
    for name in structmat.available_structures():
        pattern = re.sub(r"\{\w+\}", r"\\d+", name)  # a family: block{b}diagonal
        assert any(re.fullmatch(pattern, cls.name or "") for cls in tested), name


@pytest.mark.parametrize(
    "bad", ["", "blockdiagonal", "block0diagonal", "hierarchical0_3", "toeplitz", 3]
)
def test_unknown_structure_names_list_the_valid_ones(bad: object) -> None:
    with pytest.raises(ValueError, match=r"valid names are: .*dense.*triltoeplitz"):
        structmat.get_structure(bad)  # type: ignore[arg-type]
