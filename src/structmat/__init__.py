"""structmat: structured square matrices with structure-exploiting kernels.

Every structure is closed under ``+``, scalar ``*`` and ``@``; each declares whether it
is closed under inversion and transposition (:attr:`~StructuredMatrix.closed_under_inverse`,
:meth:`~StructuredMatrix.transpose_structure`) and its storage layout
(:meth:`~StructuredMatrix.tensor_shapes`). Look structures up by name with
:func:`get_structure`; add your own with :func:`register` and verify it with the law
suite in :mod:`structmat.testing`.
"""

from structmat.arrow import ArrowMatrix
from structmat.arrow_variants import (
    TrilBottomRightDiag,
    TrilTopLeftDiag,
    TriuBottomRightDiag,
    TriuTopLeftDiag,
)
from structmat.base import STACK_OPERATIONS, StructuredMatrix
from structmat.block_diagonal import BlockDiagonal
from structmat.dense import Dense
from structmat.diagonal import Diagonal
from structmat.exceptions import DenseFallbackWarning, SingularMatrixError
from structmat.hierarchical import Hierarchical
from structmat.linear_structure import LinearStructure
from structmat.numerics import stable_norm, stable_sum
from structmat.registry import (
    available_structures,
    family_member,
    get_structure,
    register,
    register_family,
)
from structmat.toeplitz import TriangularToeplitz
from structmat.transposed_hierarchical import TransposedHierarchical
from structmat.triangular import TriangularMatrix, Tril, Triu
from structmat.tril_toeplitz import TrilToeplitz
from structmat.triu_toeplitz import TriuToeplitz

__all__ = [
    "STACK_OPERATIONS",
    "ArrowMatrix",
    "BlockDiagonal",
    "Dense",
    "DenseFallbackWarning",
    "Diagonal",
    "Hierarchical",
    "LinearStructure",
    "SingularMatrixError",
    "StructuredMatrix",
    "TransposedHierarchical",
    "TriangularMatrix",
    "TriangularToeplitz",
    "Tril",
    "TrilBottomRightDiag",
    "TrilToeplitz",
    "TrilTopLeftDiag",
    "Triu",
    "TriuBottomRightDiag",
    "TriuToeplitz",
    "TriuTopLeftDiag",
    "available_structures",
    "family_member",
    "get_structure",
    "register",
    "register_family",
    "stable_norm",
    "stable_sum",
]
