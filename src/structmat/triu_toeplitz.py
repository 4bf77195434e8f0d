r"""Upper-triangular Toeplitz matrices, stored as their first row."""

from __future__ import annotations

from torch import Tensor

from structmat.registry import register
from structmat.toeplitz import TriangularToeplitz


@register
class TriuToeplitz(TriangularToeplitz):
    r"""An upper-triangular Toeplitz matrix, :math:`A_{ij} = c_{j-i}` for :math:`j \ge i`.

    Storage:
        ``row``, shape ``(d,)``: the first row :math:`c`, :math:`c_0` on the diagonal
        and :math:`c_k` on the ``k``-th superdiagonal.

    The transpose is a :class:`~structmat.TrilToeplitz` with ``column = row``. Every
    kernel and its cost is described in :class:`~structmat.toeplitz.TriangularToeplitz`.
    """

    name = "triutoeplitz"
    upper = True
    coefficients_name = "row"
    transpose_name = "triltoeplitz"

    def __init__(self, row: Tensor) -> None:
        super().__init__(row)
