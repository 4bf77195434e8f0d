"""structmat: structured square matrices with structure-exploiting kernels.

Every structure is closed under ``+``, scalar ``*``, ``@`` and (for invertible
members) :meth:`~structmat.StructuredMatrix.inv`. Look structures up by name with
:func:`get_structure`.
"""

from structmat.arrow import ArrowMatrix
from structmat.arrow_variants import (
    TrilBottomRightDiag,
    TrilTopLeftDiag,
    TriuBottomRightDiag,
    TriuTopLeftDiag,
)
from structmat.base import StructuredMatrix
from structmat.dense import Dense
from structmat.diagonal import Diagonal
from structmat.exceptions import DenseFallbackWarning, SingularMatrixError
from structmat.linear_structure import LinearStructure
from structmat.registry import available_structures, get_structure, register, register_family
from structmat.triangular import TriangularMatrix, Tril, Triu

__all__ = [
    "ArrowMatrix",
    "Dense",
    "DenseFallbackWarning",
    "Diagonal",
    "LinearStructure",
    "SingularMatrixError",
    "StructuredMatrix",
    "TriangularMatrix",
    "Tril",
    "TrilBottomRightDiag",
    "TrilTopLeftDiag",
    "Triu",
    "TriuBottomRightDiag",
    "TriuTopLeftDiag",
    "available_structures",
    "get_structure",
    "register",
    "register_family",
]
