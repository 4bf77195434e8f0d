r"""Direct (GEMM) kernels for triangular Toeplitz matrices of moderate size.

These kernels work on matrices ``X`` of shape ``(d, n)`` in any memory layout (a
transposed view costs no copy), with :math:`L` the lower-triangular Toeplitz matrix
with first column :math:`c` and :math:`L^\top` the upper one with first row :math:`c`.
Every entry is a plain sum of products, so its rounding error is bounded by
:math:`\gamma_d \sum |L_{ij}| |X_{jk}|`, entry by entry, where a zero-padded FFT
spreads an error of the order of :math:`u \|c\| \|X\|` evenly over all entries
(in float32 about :math:`10^{-4}` relative on the small entries of a product).

Blocking: the rows are cut into blocks of at most :data:`BLOCK_ROWS` rows (the
short block first). By the Toeplitz shift, every block of :math:`L` that a product
needs is a slice of one ``b x d`` matrix (the last ``b`` rows of :math:`L`) or one
``d x b`` matrix (its first ``b`` columns), so the scratch memory is :math:`O(d b)`
and, with ``b <= n``, never more than the operand. Only the triangle is multiplied:
:math:`d^2 n / 2 + O(d b n)` multiply-adds for a product.

Which kernel is faster, a direct or an FFT one (:mod:`structmat._toeplitz_kernels`),
depends on ``d``, ``n``, the layout of ``X`` and the machine; :func:`use_direct_product`,
:func:`use_direct_lags` and :func:`use_gram_first` hold the crossovers measured by
``benchmarks/toeplitz_crossover.py``. The direct kernels need ``n >=`` :data:`BLOCK_ROWS`
columns. The route of ``from_inner(X)`` through :math:`X X^\top` is the one place where
a ``d x d`` matrix is formed, and only for ``n >= 8 d``, so that it never holds more
than an eighth of the elements of ``X``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import pad

from structmat._layout import stored_by_columns, writes_forbidden

#: Rows per block of the direct kernels (and the least ``n`` they are used for, so
#: that their ``b x d`` scratch matrix is never larger than the ``d x n`` operand).
BLOCK_ROWS = 64

#: Largest ``d`` for which a product :math:`L X` or :math:`L^\top X` is computed
#: directly when ``X`` is stored row by row (contiguous), for ``d <= 3 n`` as well
#: (:data:`DIRECT_PRODUCT_MAX_ROWS_PER_COLUMN`). Measured with one thread (CPU, float32,
#: ``benchmarks/toeplitz_crossover.py``, results in
#: ``benchmarks/results/toeplitz_crossover.json``): the blocked product takes 0.5-0.9
#: of the FFT time for ``d <= 3 n``; it breaks even near ``d = 384 ... 512`` for
#: ``n = 64``, ``d = 512 ... 640`` for ``n = 128`` and ``d = 1024`` for ``n = 512``.
DIRECT_PRODUCT_MAX_DIM = 768

#: The same for ``X`` stored column by column (a transposed view such as ``G.mT``),
#: whose columns the FFT reads in place, without the transposing copy it needs
#: otherwise: the direct product takes 0.5-0.9 of the FFT time for ``d <= 3 n`` up to
#: ``d = 256 ... 384`` and 1.1-1.5 times it at ``d = 512``.
DIRECT_PRODUCT_MAX_DIM_COLUMNS = 320

#: Largest ratio ``d / n`` for a direct product: with few columns the GEMMs are short.
DIRECT_PRODUCT_MAX_ROWS_PER_COLUMN = 3

#: Largest ``d`` for which lag sums (the diagonal sums of a Gram matrix) are computed
#: directly, for many columns. Their GEMMs have inner dimension ``n``, so they gain
#: speed with ``n``: measured as above, the direct lag sums take 0.3-0.95 of the FFT
#: time for ``d <= 1.5 n`` up to ``d = 384``, and break even near ``d = 128`` for
#: ``n = 64``, ``d = 256`` for ``n = 128`` and ``d = 384 ... 512`` for ``n = 512`` (both
#: layouts). The direct ``from_inner(X)``, a product and lag sums, breaks even at about
#: the same ``d``.
DIRECT_LAGS_MAX_DIM = 384

#: Largest ratio ``d / n`` for direct lag sums (see :data:`DIRECT_LAGS_MAX_DIM`).
DIRECT_LAGS_MAX_ROWS_PER_COLUMN = 1.5

#: ``from_inner(X)`` goes through the Gram matrix :math:`X X^\top` when ``X`` has at
#: least this many times ``d`` columns (and ``d <=`` :data:`GRAM_FIRST_MAX_DIM`): measured
#: as above, 0.3-0.6 of the FFT time at ``n = 8 d`` and 0.1-0.3 at ``n = 64 d`` for
#: ``d = 32 ... 1024`` (0.03-0.15 on the convolutions' patches, ``n = 16384 ... 65536``).
GRAM_FIRST_MIN_COLUMNS_PER_ROW = 8

#: Largest ``d`` for the route through :math:`X X^\top`: its :math:`O(d^3)` part and
#: the ``d x d`` matrices grow past the FFT's cost; at ``n = 8 d`` it takes 0.5-0.8 of
#: the FFT time at ``d = 1536`` and 0.8-1.2 at ``d = 2048``.
GRAM_FIRST_MAX_DIM = 1024


def use_direct_product(X: Tensor) -> bool:
    """Whether :func:`lower_product` beats the FFT for the ``(d, n)`` operand ``X``.

    Also for small ``d`` with fewer than :data:`BLOCK_ROWS` columns, as long as the
    ``d x min(d, BLOCK_ROWS)`` scratch is no larger than ``X``: there the product costs
    at most :math:`n^3 / 2` multiply-adds, less than the FFTs' fixed cost, and it is
    accurate entry by entry (an FFT's error is relative to the norm of a whole column,
    which swamps the small entries of the first rows of a triangular product).
    """
    d, n = X.shape
    limit = DIRECT_PRODUCT_MAX_DIM_COLUMNS if stored_by_columns(X) else DIRECT_PRODUCT_MAX_DIM
    return n >= min(BLOCK_ROWS, d) and d <= min(limit, DIRECT_PRODUCT_MAX_ROWS_PER_COLUMN * n)


def use_direct_lags(dim: int, columns: int) -> bool:
    """Whether :func:`gram_lag_sums` beats the FFT for a ``(dim, columns)`` operand."""
    limit = min(DIRECT_LAGS_MAX_DIM, DIRECT_LAGS_MAX_ROWS_PER_COLUMN * columns)
    return columns >= BLOCK_ROWS and dim <= limit


def use_gram_first(dim: int, columns: int) -> bool:
    r"""Whether ``from_inner`` should start from :math:`X X^\top` (``d x d``).

    That costs :math:`d^2 n / 2 + O(d^3)` (a symmetric Gram matrix, see
    :mod:`structmat._gram`), and its ``d x d`` memory is at most an eighth of ``X``.
    """
    return columns >= GRAM_FIRST_MIN_COLUMNS_PER_ROW * dim and dim <= GRAM_FIRST_MAX_DIM


def row_blocks(dim: int, block: int) -> list[tuple[int, int]]:
    """Cut ``range(dim)`` into ``[start, end)`` blocks of ``block`` rows, the short one first."""
    first = dim % block or block
    starts = [0, *range(first, dim, block)]
    return list(zip(starts, [*starts[1:], dim], strict=True))


def lower_rows(coefficients: Tensor, rows: int) -> Tensor:
    r"""Return the last ``rows`` rows of :math:`L`, shape ``(rows, d)`` (one copy).

    Entry ``(t, u)`` is :math:`c_{d - rows + t - u}`, zero for a negative index.
    """
    d = coefficients.shape[-1]
    return pad(coefficients, (rows - 1, 0)).unfold(-1, d, 1).flip(-1)


def lower_columns(coefficients: Tensor, columns: int) -> Tensor:
    r"""Return the first ``columns`` columns of :math:`L`, shape ``(d, columns)`` (one copy).

    Entry ``(i, t)`` is :math:`c_{i - t}`, zero for a negative index.
    """
    return pad(coefficients, (columns - 1, 0)).unfold(-1, columns, 1).flip(-1)


def lower_product(coefficients: Tensor, X: Tensor, transpose: bool) -> Tensor:
    r"""Return :math:`L X` (or :math:`L^\top X` with ``transpose``) by blocked GEMMs.

    With row blocks :math:`[s, e)` and :math:`R` the last ``b`` rows of :math:`L`,
    :math:`(L X)_{s:e} = L_{s:e,\,:e} X_{:e}` where
    :math:`L_{s:e,\,:e} = R_{:e-s,\ d-b-s\,:\,d-b-s+e}`; with :math:`W` the first ``b``
    columns of :math:`L`, :math:`(L^\top X)_{s:e} = (L_{s:,\,s:e})^\top X_{s:}` where
    :math:`L_{s:,\,s:e} = W_{:d-s,\,:e-s}`.

    Args:
        coefficients: :math:`c`, shape ``(d,)``, in the dtype of ``X``; for a stack
            ``(..., d)``, one vector per member.
        X: Shape ``(d, n)``, any strides; for a stack ``(..., d, n)``.
        transpose: Whether to multiply by :math:`L^\top` instead of :math:`L`.

    Returns:
        Shape ``(d, n)`` (``(..., d, n)``), contiguous.

    Complexity:
        :math:`d^2 n / 2 + O(d b n)` multiply-adds in :math:`\lceil d / b \rceil` GEMMs;
        scratch :math:`d b` elements.
    """
    d, n = X.shape[-2:]
    b = min(BLOCK_ROWS, d)
    blocks = row_blocks(d, b)
    if transpose:
        W = lower_columns(coefficients, b)
        pieces = [(W[..., : d - s, : e - s].mT, X[..., s:, :]) for s, e in blocks]
    else:
        R = lower_rows(coefficients, b)
        pieces = [(R[..., : e - s, d - b - s : d - b - s + e], X[..., :e, :]) for s, e in blocks]
    if X.ndim > 2 or writes_forbidden(coefficients, X):
        return torch.cat([block @ rows for block, rows in pieces], -2)
    out = X.new_empty((d, n))
    for (s, e), (block, rows) in zip(blocks, pieces, strict=True):
        torch.mm(block, rows, out=out[s:e])
    return out


def gram_lag_sums(X: Tensor) -> Tensor:
    r"""Lag sums :math:`r_k = \sum_i (X X^\top)_{i, i+k}` by blocked GEMMs.

    These are the sums of the upper diagonals of the Gram matrix (equally of its
    lower ones), i.e. :func:`~structmat._toeplitz_kernels.lag_sums` of the columns of
    ``X``. Row block :math:`[s, e)` forms :math:`P = X_{s:e} X_{s:}^\top`, the
    entries of the Gram matrix at or right of its diagonal block, and adds the upper
    diagonal sums of :math:`P` (:func:`upper_diagonal_sums`) to :math:`r_{0..d-s-1}`.

    Args:
        X: Shape ``(d, n)``, any strides.

    Returns:
        :math:`r`, shape ``(d,)``.

    Complexity:
        :math:`d^2 n / 2 + O(d b n)` multiply-adds with :math:`b \le n / 2`; scratch
        :math:`b (d + b) \le d n` elements.
    """
    d, n = X.shape
    # Blocks of b <= n / 2 rows keep the padded b x (d - s + b) scratch within d n.
    block = max(1, min(BLOCK_ROWS, n // 2, d))
    lags = X.new_zeros(d)
    for s, e in row_blocks(d, block):
        lags[: d - s] += upper_diagonal_sums(X[s:e] @ X[s:].mT)
    return lags


def upper_diagonal_sums(mat: Tensor) -> Tensor:
    r"""Return :math:`u_t = \sum_i M_{i, i+t}` for :math:`t = 0, \dots, w - 1`.

    With ``h`` zero columns appended to the ``h x w`` matrix :math:`M`, the view with
    row stride one more than the padded row length has entry :math:`M_{i, i+t}` at
    ``(i, t)`` (zero past the last column), so its column sums are :math:`u`.

    Args:
        mat: :math:`M`, shape ``(h, w)``, any strides.

    Returns:
        Shape ``(w,)``.

    Complexity:
        :math:`O(h (w + h))`: one padded copy and one reduction.
    """
    h, width = mat.shape
    padded = pad(mat, (0, h))
    return padded.as_strided((h, width), (width + h + 1, 1)).sum(0)
