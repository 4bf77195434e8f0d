r"""Kernels of a stack of triangular Toeplitz members (coefficients ``(..., d)``).

Each member of a stack has its own coefficient vector, so the convolutions are
per member: a grouped ``conv1d`` with one group per member computes every member's
truncated convolution or lag sums in one call, :math:`O(d^2)` per member, exactly
(plain sums of products, no FFT rounding). Products with operands use the blocked
GEMMs of :func:`structmat._toeplitz_direct.lower_product`, which act on the leading
dimensions too. These are the kernels of the stack operations
(:data:`structmat.STACK_OPERATIONS`); members keep their FFT and crossover routes.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn.functional import conv1d, pad


def _grouped(weights: Tensor, signals: Tensor) -> Tensor:
    r"""``conv1d`` (a correlation) of each row of ``signals`` with its own row of ``weights``.

    Args:
        weights: ``(..., d)``.
        signals: ``(..., L)`` with the same leading dimensions, ``L >= d``.

    Returns:
        ``(..., L - d + 1)``: entry ``t`` is :math:`\sum_q w_q s_{t+q}` per member.
    """
    batch, d = weights.shape[:-1], weights.shape[-1]
    flat_weights = weights.reshape(-1, 1, d)
    flat_signals = signals.reshape(1, -1, signals.shape[-1])
    out = conv1d(flat_signals, flat_weights, groups=flat_weights.shape[0])
    return out.reshape(*batch, out.shape[-1])


def member_convolutions(first: Tensor, second: Tensor) -> Tensor:
    r"""Truncated causal convolutions :math:`y_i = \sum_{p \le i} a_p b_{i-p}`, per member.

    Args:
        first: :math:`a`, ``(..., d)``.
        second: :math:`b`, ``(..., d)``.

    Returns:
        ``(..., d)``, the coefficients of the product of the lower-triangular Toeplitz
        matrices of :math:`a` and :math:`b`. :math:`O(d^2)` per member.
    """
    d = first.shape[-1]
    return _grouped(first.flip(-1), pad(second, (d - 1, 0)))


def member_lag_sums(first: Tensor, second: Tensor) -> Tensor:
    r"""Lag sums :math:`r_k = \sum_p a_p b_{p+k}`, :math:`k = 0, \dots, d - 1`, per member.

    Args:
        first: :math:`a`, ``(..., d)``.
        second: :math:`b`, ``(..., d)``.

    Returns:
        ``(..., d)``. :math:`O(d^2)` per member.
    """
    d = first.shape[-1]
    return _grouped(first, pad(second, (0, d - 1)))
