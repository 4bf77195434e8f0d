r"""Diagonal sums of :math:`T^\top M T` for a triangular Toeplitz :math:`T` and a dense ``M``.

The triangular Toeplitz projection of a matrix :math:`Z` needs only the pair sums
:math:`q_k = \sum_i Z_{i+k,i} + \sum_i Z_{i,i+k}` of its mirrored diagonals. For
:math:`Z = T^\top M T` they follow from the diagonal sums of :math:`W = N T` with
:math:`N = M + M^\top`, without forming :math:`Z`:

- lower :math:`T` (first column :math:`c`): :math:`T^\top` is upper triangular, so the
  ``k``-th lower diagonal of :math:`T^\top W` collects whole diagonals of :math:`W`:
  :math:`\sum_i (T^\top W)_{i+k,i} = \sum_{j \ge k} c_{j-k} w_j` with
  :math:`w_j = \sum_p W_{p, p-j}`. Since the upper diagonals of :math:`T^\top M T` are
  the lower ones of :math:`T^\top M^\top T`, the pair sums are that expression for
  :math:`N`.
- upper :math:`T` (first row :math:`c`): mirrored, with the upper diagonal sums
  :math:`v_i = \sum_p W_{p, p+i}`: :math:`q_k = \sum_{i \ge k} c_{i-k} v_i`.

The rows of :math:`W` are filtered ``rows`` at a time (:math:`x T` is a correlation of
the row :math:`x` with :math:`c` for lower :math:`T`, a convolution for upper), and the
diagonal sums of each block are read off a skewed view of it, so no intermediate has
``d x d`` elements.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import pad

from structmat._toeplitz_kernels import anticausal_correlation, causal_convolution, lag_sums

#: Elements of one block of filtered rows (rows times ``d``); at most a quarter of d^2.
BLOCK_ELEMENTS = 1 << 20


def sandwich_pair_sums(kernel: Tensor, mat: Tensor, upper: bool, dtype: torch.dtype) -> Tensor:
    r"""Pair sums :math:`q_k` of the mirrored diagonals of :math:`T^\top M T`.

    Args:
        kernel: The coefficients :math:`c` of :math:`T`, shape ``(d,)``, in ``dtype``.
        mat: :math:`M`, shape ``(d, d)``; need not be symmetric.
        upper: Whether :math:`T` is upper (else lower) triangular Toeplitz.
        dtype: The dtype to compute in (one that FFTs support).

    Returns:
        :math:`q`, shape ``(d,)``: :math:`q_k` is the sum of the ``k``-th lower and the
        ``k``-th upper diagonal, so :math:`q_0 = 2 \operatorname{tr}(T^\top M T)`.

    Complexity:
        :math:`O(d^2 \log d)` (``d`` filtered rows) and :math:`O(d^2)` reads of ``M``;
        the largest intermediate holds about :math:`\min(d^2/4, 2^{20})` rows-by-FFT
        elements.
    """
    d = kernel.shape[0]
    rows = max(1, min(d // 4, BLOCK_ELEMENTS // d))
    sums = torch.zeros(2 * d - 1, dtype=dtype, device=kernel.device)
    for start in range(0, d, rows):
        stop = min(d, start + rows)
        count = stop - start
        block = mat[start:stop].to(dtype) + mat[:, start:stop].mT.to(dtype)  # rows of M + M^T
        filtered = (causal_convolution if upper else anticausal_correlation)(kernel, block)
        # Row a of the skewed view holds row a of the flipped block shifted right by a,
        # so column m sums the entries W[p, b] with (p - start) + (d - 1 - b) = m,
        # i.e. on diagonal j = p - b = start + m - (d - 1).
        padded = pad(filtered.flip(1), (0, count)).reshape(-1)
        skewed = padded[: count * (d + count - 1)].view(count, d + count - 1)
        sums[start : start + d + count - 1] += skewed.sum(0)
    diagonal_sums = sums[:d].flip(0) if upper else sums[d - 1 :]
    return lag_sums(kernel.unsqueeze(0), diagonal_sums.unsqueeze(0))
