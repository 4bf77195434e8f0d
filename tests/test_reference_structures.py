"""Numerical parity of ``from_inner2`` and half-precision norms with the reference ``singd``.

The reference projects symmetric matrices; each structure is compared on members
projected from a symmetric matrix, with ``XXT = X X^T``.
"""

from __future__ import annotations

import pytest
import torch

import structmat
from tests.strategies import random_tensor

pytestmark = [
    pytest.mark.reference,
    pytest.mark.filterwarnings("ignore:Calling naive implementation"),
]

REFERENCE = {
    "dense": ("dense", "DenseMatrix"),
    "diagonal": ("diagonal", "DiagonalMatrix"),
    "block3diagonal": ("blockdiagonal", "Block3DiagonalMatrix"),
    "block30diagonal": ("blockdiagonal", "Block30DiagonalMatrix"),
    "hierarchical3_2": ("hierarchical", "Hierarchical3_2Matrix"),
    "hierarchical15_15": ("hierarchical", "Hierarchical15_15Matrix"),
    "triltoeplitz": ("triltoeplitz", "TrilToeplitzMatrix"),
    "triutoeplitz": ("triutoeplitz", "TriuToeplitzMatrix"),
    "triltopleftdiag": ("triltopleftdiag", "TrilTopLeftDiagonalMatrix"),
    "trilbottomrightdiag": ("trilbottomrightdiag", "TrilBottomRightDiagonalMatrix"),
    "triutopleftdiag": ("triutopleftdiag", "TriuTopLeftDiagonalMatrix"),
    "triubottomrightdiag": ("triubottomrightdiag", "TriuBottomRightDiagonalMatrix"),
}


def reference_class(name: str) -> type:
    module, cls = REFERENCE[name]
    return getattr(pytest.importorskip(f"singd.structures.{module}"), cls)


@pytest.mark.parametrize("name", sorted(REFERENCE))
@pytest.mark.parametrize("dim", [1, 2, 5, 17, 40])
def test_from_inner2_matches_the_reference(name: str, dim: int) -> None:
    ours_cls, theirs_cls = structmat.get_structure(name), reference_class(name)
    S = random_tensor((dim, dim), seed=dim)
    sym = S + S.T
    X = random_tensor((dim, 2 * dim), seed=dim + 1)
    XXT = X @ X.T
    ours = ours_cls.from_dense(sym).from_inner2(XXT).to_dense()
    theirs = theirs_cls.from_dense(sym).from_inner2(XXT).to_dense()
    scale = 1.0 + float(theirs.abs().max())
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10 * scale)


@pytest.mark.parametrize("name", ["dense", "diagonal", "block3diagonal", "hierarchical3_2"])
def test_half_precision_frobenius_norm_does_not_overflow(name: str) -> None:
    # 300 diagonal entries 16.0: the norm 277.1 fits float16, its squares' sum does not
    dim = 300
    A = structmat.get_structure(name).from_dense(16.0 * torch.eye(dim)).to(torch.float16)
    expected = reference_class(name).from_dense(16.0 * torch.eye(dim, dtype=torch.float16))
    assert float(A.frobenius_norm()) == float(expected.frobenius_norm()) == 277.25
    assert float(A.trace()) == 4800.0 and float(A.average_trace()) == 16.0
