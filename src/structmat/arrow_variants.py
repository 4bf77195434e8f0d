r"""The four registered triangular arrow structures (see :mod:`structmat.arrow`).

========================  =======================  =======================
name                      matrix                   transpose
========================  =======================  =======================
``triltopleftdiag``       ``[[D, 0], [b^T, c]]``   ``triutopleftdiag``
``trilbottomrightdiag``   ``[[c, 0], [b, D]]``     ``triubottomrightdiag``
``triutopleftdiag``       ``[[D, b], [0, c]]``     ``triltopleftdiag``
``triubottomrightdiag``   ``[[c, b^T], [0, D]]``   ``trilbottomrightdiag``
========================  =======================  =======================

Here ``D`` is the diagonal block (``diagonal``), ``b`` the arrow and ``c`` the corner.
The name tells where the diagonal block sits; the scalar corner :math:`c` is the opposite
corner. For ``d = 1`` every variant is the corner alone.
"""

from __future__ import annotations

from structmat.arrow import ArrowMatrix
from structmat.registry import register


@register
class TrilTopLeftDiag(ArrowMatrix):
    r"""Lower triangular: diagonal plus a dense last row, :math:`[[D, 0], [b^\top, c]]`."""

    name = "triltopleftdiag"
    upper = False
    corner_first = False
    transpose_name = "triutopleftdiag"


@register
class TrilBottomRightDiag(ArrowMatrix):
    r"""Lower triangular: diagonal plus a dense first column, :math:`[[c, 0], [b, D]]`."""

    name = "trilbottomrightdiag"
    upper = False
    corner_first = True
    transpose_name = "triubottomrightdiag"


@register
class TriuTopLeftDiag(ArrowMatrix):
    r"""Upper triangular: diagonal plus a dense last column, :math:`[[D, b], [0, c]]`."""

    name = "triutopleftdiag"
    upper = True
    corner_first = False
    transpose_name = "triltopleftdiag"


@register
class TriuBottomRightDiag(ArrowMatrix):
    r"""Upper triangular: diagonal plus a dense first row, :math:`[[c, b^\top], [0, D]]`."""

    name = "triubottomrightdiag"
    upper = True
    corner_first = True
    transpose_name = "trilbottomrightdiag"
