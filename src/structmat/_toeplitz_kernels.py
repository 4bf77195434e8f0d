r"""Convolution kernels behind the triangular Toeplitz structures.

A lower-triangular Toeplitz matrix with first column :math:`c \in \mathbb{R}^d` acts on
a vector as the truncated causal convolution :math:`(c * x)_i = \sum_{p \le i} c_p
x_{i-p}`, and its transpose as the correlation :math:`\sum_p c_p x_{i+p}`. Products of
such matrices are truncated convolutions of their coefficient vectors (power series
modulo :math:`z^d`), and the diagonal sums of Gram matrices are lag sums
(autocorrelations). Every kernel here works on *signals*: tensors of shape ``(n, d)``
whose rows are independent length-``d`` sequences, in one floating dtype that FFTs
support (callers convert half types to float32 first).

Long signals go through zero-padded real FFTs of a fast length :math:`N \ge 2d - 1`,
so no circular wrap-around reaches the ``d`` kept outputs: :math:`O(n N \log N)`. A
single short signal (``n = 1``, :math:`d \le` :data:`DIRECT_MAX_LENGTH`, or
:data:`DIRECT_MAX_LAG_LENGTH` for lag sums) is convolved directly by ``conv1d`` in
:math:`O(d^2)`, which avoids the fixed cost of three FFT calls. Many signals of
moderate length go to the blocked GEMM kernels of :mod:`structmat._toeplitz_direct`
instead (the structures choose). No kernel creates a tensor with :math:`d^2` elements;
:func:`diagonal_sums` reads a ``d x d`` input through strided views of its storage.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.functional import conv1d, pad

from structmat._toeplitz_direct import upper_diagonal_sums

#: Largest length convolved directly (``conv1d``, :math:`O(d^2)`) for a single signal.
#: Measured with one thread (CPU): for one signal ``conv1d`` takes about two thirds of
#: the time of the three FFT calls up to ``d = 128`` and breaks even near ``d = 256``.
#: For several signals ``conv1d`` wins only for tiny ``d n`` in float64, is slower in
#: float32 and loses by large factors as ``n`` grows, so they take the FFT path here.
DIRECT_MAX_LENGTH = 128

#: Largest length whose lag sums are computed directly (``conv1d``) for a single pair of
#: signals (``from_inner()``). Measured with one thread (CPU, float32): ``conv1d``
#: takes 0.2-0.5 of the FFT route (three transforms plus the exact tail) up to
#: ``d = 512`` and 1.5 times it at ``d = 785``.
DIRECT_MAX_LAG_LENGTH = 512

#: Number of trailing lags that :func:`lag_sums` computes exactly instead of by FFT.
EXACT_TAIL_LAGS = 64

#: Rows of the skewed view that :func:`diagonal_sums` reduces per block.
DIAGONAL_BLOCK_ROWS = 64


def fast_length(minimum: int) -> int:
    """Return the smallest even ``2^a 3^b 5^c`` that is at least ``minimum`` (and 2).

    FFTs of these lengths are fast (powers of two are the fastest); a length with a
    large prime factor can be several times slower.

    Args:
        minimum: The least admissible length.

    Returns:
        The FFT length.
    """
    best = 2
    while best < minimum:
        best *= 2
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            length = 2 * power35
            while length < minimum:
                length *= 2
            best = min(best, length)
            power35 *= 3
        power5 *= 5
    return best


def _use_direct(signals: Tensor) -> bool:
    return signals.shape[0] == 1 and signals.shape[-1] <= DIRECT_MAX_LENGTH


def _no_signals(kernel: Tensor, signals: Tensor) -> Tensor:
    """The empty ``(0, d)`` result, still connected to both inputs for autograd."""
    return signals * kernel


def _spectrum(signals: Tensor, length: int) -> Tensor:
    """Real FFT of the rows of ``signals`` zero-padded to ``length`` (any strides).

    The transform pads internally, without a separate padded copy. Signals that are
    not stored row by row (the columns of a contiguous ``X``) are first copied into
    rows by a blocked transpose: measured with one thread, 4 times faster at
    ``d = 2048 ... 4096`` than letting the transform (or ``pad``) read them strided.
    """
    return torch.fft.rfft(signals.contiguous(), n=length)


def _filtered(kernel: Tensor, signals: Tensor, causal: bool) -> tuple[Tensor, int]:
    r"""Spectrum of the full linear convolution (``causal``) or correlation of each row.

    Returns the spectrum, of FFT length :math:`N \ge 2d - 1`, and :math:`N`. The
    inverse FFT holds the outputs ``0, ..., d - 1`` first; with :math:`N \ge 2d - 1`
    no circular wrap-around reaches them.
    """
    length = fast_length(2 * kernel.shape[0] - 1)
    kernel_spectrum = torch.fft.rfft(kernel, n=length)
    spectrum = _spectrum(signals, length)
    spectrum.mul_(kernel_spectrum if causal else kernel_spectrum.conj())
    return spectrum, length


def _summed_power(spectrum: Tensor) -> Tensor:
    r"""Return :math:`\sum_j |F_{jw}|^2` over the rows :math:`j` of a complex spectrum."""
    rows = spectrum.shape[0]
    squares = torch.view_as_real(spectrum).reshape(rows, -1).square()
    ones = torch.ones(1, rows, dtype=squares.dtype, device=squares.device)
    return (ones @ squares).view(-1, 2).sum(-1)


def causal_convolution(kernel: Tensor, signals: Tensor) -> Tensor:
    r"""Truncated causal convolution :math:`y_i = \sum_{p=0}^{i} k_p s_{i-p}`, :math:`i < d`.

    Row by row this is :math:`L s` for the lower-triangular Toeplitz :math:`L` with first
    column ``kernel``; for one signal it is the power-series product ``kernel * signal``
    modulo :math:`z^d`.

    Args:
        kernel: Shape ``(d,)``.
        signals: Shape ``(n, d)``.

    Returns:
        Shape ``(n, d)`` (possibly a view of a larger buffer).

    Complexity:
        :math:`O(n d \log d)` (FFT), or :math:`O(d^2)` for one short signal.
    """
    d = kernel.shape[0]
    if signals.shape[0] == 0:
        return _no_signals(kernel, signals)
    if _use_direct(signals):
        padded = pad(signals, (d - 1, 0)).unsqueeze(1)
        return conv1d(padded, kernel.flip(0).view(1, 1, d)).squeeze(1)
    spectrum, length = _filtered(kernel, signals, causal=True)
    return torch.fft.irfft(spectrum, n=length)[:, :d]


def anticausal_correlation(kernel: Tensor, signals: Tensor) -> Tensor:
    r"""Truncated correlation :math:`y_i = \sum_{p=0}^{d-1-i} k_p s_{i+p}`, :math:`i < d`.

    Row by row this is :math:`U s` for the upper-triangular Toeplitz :math:`U` with first
    row ``kernel`` (equivalently :math:`L^\top s` for the lower one with first column
    ``kernel``).

    Args:
        kernel: Shape ``(d,)``.
        signals: Shape ``(n, d)``.

    Returns:
        Shape ``(n, d)`` (possibly a view of a larger buffer).

    Complexity:
        :math:`O(n d \log d)` (FFT), or :math:`O(d^2)` for one short signal.
    """
    d = kernel.shape[0]
    if signals.shape[0] == 0:
        return _no_signals(kernel, signals)
    if _use_direct(signals):
        padded = pad(signals, (0, d - 1)).unsqueeze(1)
        return conv1d(padded, kernel.view(1, 1, d)).squeeze(1)
    spectrum, length = _filtered(kernel, signals, causal=False)
    return torch.fft.irfft(spectrum, n=length)[:, :d]


def lag_sums(first: Tensor, second: Tensor | None = None) -> Tensor:
    r"""Cross-correlations summed over signals: :math:`r_k = \sum_j \sum_p a_{jp} b_{j,p+k}`.

    With ``second = None`` (:math:`b = a`) and :math:`a = X^\top`, :math:`r_k` is the sum
    of the ``k``-th lower (equally, upper) diagonal of :math:`X X^\top`.

    Args:
        first: :math:`a`, shape ``(n, d)``.
        second: :math:`b`, shape ``(n, d)``; ``None`` means ``first``.

    Returns:
        :math:`r`, shape ``(d,)``, lags :math:`k = 0, \dots, d-1`.

    Complexity:
        :math:`O(n d \log d)` (FFT), or :math:`O(d^2)` for one short signal.
    """
    d = first.shape[-1]
    if first.shape[0] == 0:
        return (first * (first if second is None else second)).sum(0)
    if first.shape[0] == 1 and d <= DIRECT_MAX_LAG_LENGTH:
        other = first if second is None else second
        padded = pad(other, (0, d - 1)).unsqueeze(0)
        return conv1d(padded, first.unsqueeze(0)).view(d)
    length = fast_length(2 * d - 1)
    spectrum = _spectrum(first, length)
    if second is None:
        power = _summed_power(spectrum)
    else:
        power = (spectrum.conj() * _spectrum(second, length)).sum(0)
    return _with_exact_tail(torch.fft.irfft(power, n=length)[:d], first, second)


def _with_exact_tail(lags: Tensor, first: Tensor, second: Tensor | None = None) -> Tensor:
    r"""Replace the last :math:`m` FFT lag sums of :func:`lag_sums` by exact sums.

    The rounding error of an FFT is spread evenly over all lags, while the Toeplitz
    projection divides lag :math:`k` by :math:`d - k`, which magnifies the error of the
    last lags (sums of few products) up to :math:`d`-fold. The last
    :math:`m = \min(\text{EXACT\_TAIL\_LAGS}, d / 2)` lags only involve the first and
    the last :math:`m` entries of each signal: they are the upper diagonal sums of the
    ``m x m`` Gram matrix of those pieces (:func:`upper_diagonal_sums`), :math:`O(n m^2)`.
    """
    d = lags.shape[0]
    m = min(EXACT_TAIL_LAGS, d // 2)
    if m == 0:
        return lags
    head = first[:, :m]
    tail = (first if second is None else second)[:, d - m :]
    exact = upper_diagonal_sums(head.mT @ tail)
    return torch.cat([lags[: d - m], exact])


def filtered_lag_sums(kernel: Tensor, signals: Tensor, causal: bool) -> Tensor:
    r""":func:`lag_sums` of the rows of :math:`T s`, :math:`T` triangular Toeplitz.

    Equals ``lag_sums(causal_convolution(kernel, signals))`` (``causal``) or
    ``lag_sums(anticausal_correlation(kernel, signals))``, but keeps the FFT buffer: the
    product is truncated by zeroing the buffer's tail in place, then transformed again.

    Args:
        kernel: Shape ``(d,)``.
        signals: Shape ``(n, d)``.
        causal: Whether :math:`T` is lower (convolution) or upper (correlation).

    Returns:
        Shape ``(d,)``.

    Complexity:
        :math:`O(n d \log d)`: three FFTs of the ``n`` rows.
    """
    d = kernel.shape[0]
    if signals.shape[0] == 0 or _use_direct(signals):
        product = causal_convolution if causal else anticausal_correlation
        return lag_sums(product(kernel, signals))
    spectrum, length = _filtered(kernel, signals, causal)
    product = torch.fft.irfft(spectrum, n=length)
    product[:, d:] = 0
    power = _summed_power(torch.fft.rfft(product))
    return _with_exact_tail(torch.fft.irfft(power, n=length)[:d], product[:, :d])


def inverse_series(coefficients: Tensor) -> Tensor:
    r"""Coefficients of :math:`1 / c(z) \bmod z^d` by Newton's iteration.

    The inverse of a triangular Toeplitz matrix with coefficients :math:`c` is the
    triangular Toeplitz matrix of the power series :math:`g = 1/c \bmod z^d`. Starting
    from :math:`g = 1/c_0 \bmod z`, each step doubles the number of correct terms
    :math:`m`: :math:`c g = 1 + z^m h \bmod z^{2m}` and then
    :math:`g \leftarrow g - z^m (g h) \bmod z^{2m}`, so the first :math:`m` terms are
    kept exactly.

    Args:
        coefficients: :math:`c`, shape ``(d,)``, with :math:`c_0 \ne 0`.

    Returns:
        :math:`g`, shape ``(d,)``.

    Complexity:
        :math:`O(d \log d)`: two truncated products of length at most :math:`2m` for
        :math:`m = 1, 2, 4, \dots`
    """
    d = coefficients.shape[0]
    inverse = coefficients[:1].reciprocal()
    known = 1
    while known < d:
        target = min(2 * known, d)
        padded = pad(inverse, (0, target - known)).unsqueeze(0)
        residual = causal_convolution(coefficients[:target], padded)[0, known:]
        correction = causal_convolution(inverse[: target - known], residual.unsqueeze(0))[0]
        inverse = torch.cat([inverse, -correction])
        known = target
    return inverse


def diagonal_sums(mat: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    r"""Diagonal sums :math:`u_k = \sum_i S_{i,i+k}` (upper) and :math:`l_k = \sum_i S_{i+k,i}`.

    Reads :math:`S` once, without copying it: the first :math:`d^2 - 1` entries of the
    row-major storage viewed as a ``(d - 1, d + 1)`` matrix :math:`W` hold
    :math:`W_{it} = S_{i,i+t}` where :math:`i + t < d` and :math:`W_{it} = S_{i+1,i+t-d}`
    (on lower diagonal :math:`d + 1 - t`) elsewhere, so every column of :math:`W`
    meets one upper and one lower diagonal. Column sums over blocks of :math:`b` rows
    (:data:`DIAGONAL_BLOCK_ROWS`) separate the two except in the :math:`b - 1` columns
    where a block's rows switch from one to the other; those ``b x (b - 1)`` corners
    are split into their two triangles. All blocks are handled by a few batched ops.

    Args:
        mat: :math:`S`, shape ``(d, d)`` (copied first if not contiguous).
        dtype: The dtype to accumulate in.

    Returns:
        :math:`(u, l)`, each of shape ``(d,)`` in ``dtype``; :math:`u_0 = l_0 =
        \operatorname{tr}(S)`.

    Complexity:
        :math:`O(d^2)` reads, :math:`O(d b)` further work.
    """
    d = mat.shape[0]
    flat = mat.reshape(-1)
    if d == 1:
        return flat.to(dtype), flat.to(dtype)
    rows = min(DIAGONAL_BLOCK_ROWS, d - 1)
    count, rest = divmod(d - 1, rows)
    upper, lower = _block_diagonal_sums(flat, d, 0, count, rows, dtype)
    if rest:
        upper_rest, lower_rest = _block_diagonal_sums(flat, d, count * rows, 1, rest, dtype)
        upper, lower = upper + upper_rest, lower + lower_rest
    # Column t of W: upper diagonal t, lower diagonal d + 1 - t; S[d-1, d-1] is not in W.
    upper_sums = upper[:d] + pad(flat[-1:].to(dtype), (0, d - 1))
    lower_sums = torch.cat([upper_sums[:1], lower[2:].flip(0)])
    return upper_sums, lower_sums


def _block_diagonal_sums(
    flat: Tensor, d: int, start: int, count: int, rows: int, dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """Upper and lower parts of the column sums of ``count`` blocks of ``rows`` rows of W.

    Block ``k`` holds rows ``s_k = start + k * rows`` onwards of the skewed view ``W``
    of :func:`diagonal_sums`. Row ``a`` of it lies on upper diagonals in columns
    ``t < d - s_k - a``, so columns ``t < split_k = d - s_k - rows + 1`` are upper in
    every row, columns ``t >= split_k + rows - 1`` lower in every row, and the mixed
    column ``split_k + e`` is upper in rows ``a <= rows - 2 - e``.

    Returns:
        Two tensors of shape ``(d + 1,)``: the sums over the upper resp. lower entries
        of each column of ``W`` within the blocks.
    """
    device = flat.device
    skewed = flat[: d * d - 1].view(d - 1, d + 1)
    blocks = skewed[start : start + count * rows].view(count, rows, d + 1)
    if blocks.dtype == dtype:
        sums = (torch.ones(1, rows, dtype=dtype, device=device) @ blocks).squeeze(1)
    else:
        sums = blocks.sum(1, dtype=dtype)
    columns = torch.arange(d + 1, device=device)
    split = d - rows + 1 - start - rows * torch.arange(count, device=device)
    upper = torch.where(columns < split[:, None], sums, 0).sum(0)
    lower = torch.where(columns >= split[:, None] + rows - 1, sums, 0).sum(0)
    # corners[k, a, e] = W[s_k + a, split_k + e] lies at flat index
    # (start + k rows) d + (d - rows + 1) + a (d + 1) + e.
    corners = flat.as_strided(
        (count, rows, rows - 1),
        (rows * d, d + 1, 1),
        flat.storage_offset() + start * d + d - rows + 1,
    )
    index = torch.arange(rows, device=device)
    in_upper = (index[:, None] + index[None, : rows - 1] <= rows - 2).to(dtype)
    mixed = corners.to(dtype)
    mixed_upper = (mixed * in_upper).sum(1)
    mixed_lower = (mixed * (1 - in_upper)).sum(1)
    # Corner k covers columns [split_k, split_k + rows - 1); one zero column each makes
    # the corners, in reversed order, tile [split_{count-1}, split_0 + rows) = [.., d - start].
    left = d - start - count * rows + 1
    for part, total in ((mixed_upper, upper), (mixed_lower, lower)):
        tiled = pad(part, (0, 1)).flip(0).reshape(-1)
        total += pad(tiled, (left, start))
    return upper, lower


def average_diagonal_pairs(pair_sums: Tensor) -> Tensor:
    r"""Toeplitz coefficients from mirrored diagonal sums: :math:`c_k = q_k / (d - k)`.

    This is the projection convention of the triangular Toeplitz structures:
    :math:`c_k` is the sum of the ``k``-th lower and ``k``-th upper diagonal divided by
    the length :math:`d - k` of one of them, and :math:`c_0` is the mean of the main
    diagonal. On a triangular Toeplitz matrix it returns its coefficients.

    Args:
        pair_sums: :math:`q`, shape ``(d,)``: :math:`q_k` is the sum of the ``k``-th
            lower plus the ``k``-th upper diagonal, so :math:`q_0` is twice the trace
            (then :math:`c_0 = q_0 / (2d)`).

    Returns:
        The coefficients :math:`c`, shape ``(d,)``.

    Complexity:
        :math:`O(d)`.
    """
    d = pair_sums.shape[-1]
    counts = torch.arange(d, 0, -1, dtype=pair_sums.dtype, device=pair_sums.device)
    counts[0] = 2 * d
    return pair_sums / counts
