r"""Lower-triangular Toeplitz matrices, stored as their first column."""

from __future__ import annotations

from torch import Tensor

from structmat.registry import register
from structmat.toeplitz import TriangularToeplitz


@register
class TrilToeplitz(TriangularToeplitz):
    r"""A lower-triangular Toeplitz matrix, :math:`A_{ij} = c_{i-j}` for :math:`i \ge j`.

    Storage:
        ``column``, shape ``(d,)``: the first column :math:`c`, :math:`c_0` on the
        diagonal and :math:`c_k` on the ``k``-th subdiagonal.

    The transpose is a :class:`~structmat.TriuToeplitz` with ``row = column``. Every
    kernel and its cost is described in :class:`~structmat.toeplitz.TriangularToeplitz`.
    """

    name = "triltoeplitz"
    upper = False
    coefficients_name = "column"
    transpose_name = "triutoeplitz"

    def __init__(self, column: Tensor) -> None:
        super().__init__(column)
