r"""The SINGD equations for one layer, written with structured-matrix operations only.

Per layer the preconditioner is :math:`(C C^\top) \otimes (K K^\top)` with
:math:`K \in \mathcal{S}_K^{d_K \times d_K}`, :math:`C \in \mathcal{S}_C^{d_C \times
d_C}` members of structures :math:`\mathcal{S}_K, \mathcal{S}_C` and
:math:`\Pi_K, \Pi_C` the projections onto them (``from_dense``). Notation:
:math:`\bar{\operatorname{tr}}` is the average trace, :math:`\lambda` the damping,
:math:`\alpha_1` the Riemannian momentum, :math:`\beta_1` the covariance learning rate.

Curvature terms (recorded by :mod:`singd_opt.capture`, accumulated by :mod:`singd_opt.curvature`):

.. math::
    H_K = \Pi_K(K^\top A^\top A K), \qquad H_C = \Pi_C(C^\top G_\text{out}^\top G_\text{out} C).

Preconditioner update, with :math:`s = \frac{1}{2}` (times :math:`1 - \alpha_1` when
``normalize_lr_cov``) and :math:`u` the remaining gradient-scaler un-scaling of
:math:`H_C`:

.. math::
    m_K &\leftarrow \alpha_1 m_K + s\left[u\,\bar{\operatorname{tr}}(H_C) H_K
        + \lambda \bar{\operatorname{tr}}(\Pi_C(C^\top C)) \Pi_K(K^\top K) - I\right] \\
    m_C &\leftarrow \alpha_1 m_C + s\left[u\,\bar{\operatorname{tr}}(H_K) H_C
        + \lambda \bar{\operatorname{tr}}(\Pi_K(K^\top K)) \Pi_C(C^\top C) - I\right] \\
    K &\leftarrow K - \beta_1 K m_K, \qquad C \leftarrow C - \beta_1 C m_C,

(with ``relative_damping`` the damping terms are measured in units of the curvature,
see :mod:`singd_opt.damping`), where ``kfac_like`` (IKFAC) drops the traces and the momentum:
:math:`m_K = s[H_K + \lambda \Pi_K(K^\top K) - I]`,
:math:`m_C = s[u H_C + \lambda \Pi_C(C^\top C) - I]`; and ``normalize_lr_cov`` divides
:math:`\beta_1` by :math:`\max(1, \|m\|_\infty)` of the new momentum (``"spectral"``:
by :math:`\max(1, \|m\|_\infty, 2 \beta_1 \|m\|_F)`).

Natural gradient of the ``(d_C, d_K)`` gradient matrix :math:`G`:
:math:`N = C C^\top G K K^\top`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from singd_opt.damping import AverageTraces, coefficients_from_traces
from structmat import StructuredMatrix


@dataclass(frozen=True)
class UpdateConfig:
    r"""Hyper-parameters of one preconditioner update.

    Attributes:
        damping: :math:`\lambda`.
        alpha1: :math:`\alpha_1` (0 disables the momenta).
        kfac_like: Use the IKFAC update.
        normalize_lr_cov: Normalise :math:`\beta_1` by the momentum's infinity norm
            (``True``), and by its Frobenius norm as well (``"spectral"``; see
            :func:`_negative_step`).
        lr_cov: :math:`\beta_1` for this step.
        grad_unscaling: Factor :math:`u` that finishes un-scaling :math:`H_C`.
        relative_damping: :math:`\lambda_r`, damping relative to the curvature
            (:mod:`singd_opt.damping`).
    """

    damping: float
    alpha1: float
    kfac_like: bool
    normalize_lr_cov: bool | str
    lr_cov: float
    grad_unscaling: float = 1.0
    relative_damping: float = 0.0


def update_preconditioner(
    K: StructuredMatrix,
    C: StructuredMatrix,
    m_K: StructuredMatrix | None,
    m_C: StructuredMatrix | None,
    H_K: StructuredMatrix,
    H_C: StructuredMatrix,
    config: UpdateConfig,
) -> tuple[StructuredMatrix, StructuredMatrix, StructuredMatrix, StructuredMatrix]:
    r"""Return ``(K, C, m_K, m_C)`` after one Riemannian step; the inputs are kept.

    Consumes ``H_K`` and ``H_C`` (their storage becomes the new momenta); ``K``,
    ``C`` and the old momenta are not changed. The four average traces the update
    needs are taken once each (:class:`~singd_opt.damping.AverageTraces`).

    Args:
        K: Input-side factor.
        C: Output-side factor.
        m_K: Momentum of ``K`` (``None`` when ``alpha1 == 0``).
        m_C: Momentum of ``C`` (``None`` when ``alpha1 == 0``).
        H_K: Accumulated :math:`\Pi_K(K^\top A^\top A K)`.
        H_C: Accumulated :math:`\Pi_C(C^\top G_\text{out}^\top G_\text{out} C)`,
            still to be multiplied by ``config.grad_unscaling``.
        config: The hyper-parameters.

    Returns:
        The new factors and momenta (the momenta to be stored when ``alpha1 != 0``).
    """
    damping, alpha1, u = config.damping, config.alpha1, config.grad_unscaling
    K_tK = K.from_inner()
    C_tC = C.from_inner()
    relative = config.relative_damping
    coeff_H_K: float | Tensor = 1.0
    coeff_H_C: float | Tensor = u
    if config.kfac_like and relative == 0.0:  # no traces needed
        coeff_K_tK: float | Tensor = damping
        coeff_C_tC: float | Tensor = damping
    else:  # every average trace once
        traces = AverageTraces.of(H_K, H_C, K_tK, C_tC, u)
        coeff_K_tK, coeff_C_tC = coefficients_from_traces(
            damping, traces, config.kfac_like, relative
        )
        if not config.kfac_like:
            coeff_H_K, coeff_H_C = traces.H_C, traces.H_K if u == 1.0 else u * traces.H_K
    scale = 0.5 * ((1.0 - alpha1) if config.normalize_lr_cov else 1.0)

    new_m_K = H_K if isinstance(coeff_H_K, float) and coeff_H_K == 1.0 else H_K.mul_(coeff_H_K)
    new_m_K.add_(K_tK, alpha=coeff_K_tK).diag_add_(-1.0).mul_(scale)
    new_m_C = H_C if isinstance(coeff_H_C, float) and coeff_H_C == 1.0 else H_C.mul_(coeff_H_C)
    new_m_C.add_(C_tC, alpha=coeff_C_tC).diag_add_(-1.0).mul_(scale)

    if alpha1 != 0.0:
        if m_K is not None:
            new_m_K.add_(m_K, alpha=alpha1)
        if m_C is not None:
            new_m_C.add_(m_C, alpha=alpha1)

    new_K, new_C = factor_step(K, C, new_m_K, new_m_C, config)
    return new_K, new_C, new_m_K, new_m_C


def factor_step(
    K: StructuredMatrix,
    C: StructuredMatrix,
    m_K: StructuredMatrix,
    m_C: StructuredMatrix,
    config: UpdateConfig,
) -> tuple[StructuredMatrix, StructuredMatrix]:
    r"""Return :math:`K - \beta_1 K m_K` and :math:`C - \beta_1 C m_C` (new matrices).

    The last part of :func:`update_preconditioner`: given the new momenta, every
    process computes the same factors (``normalize_lr_cov`` scales :math:`\beta_1` by
    the momenta's infinity norms).
    """
    new_K = K.add(K @ m_K, alpha=_negative_step(m_K, config))
    new_C = C.add(C @ m_C, alpha=_negative_step(m_C, config))
    return new_K, new_C


#: The values of ``normalize_lr_cov``: off, the reference's bound, and that bound with a
#: bound on the spectrum (:func:`_negative_step`).
NORMALIZE_LR_COV: tuple[bool | str, ...] = (False, True, "spectral")


def _negative_step(momentum: StructuredMatrix, config: UpdateConfig) -> float | Tensor:
    r""":math:`-\beta_1`, divided by a bound on the momentum with ``normalize_lr_cov``.

    ``True`` (the reference's rule) divides by :math:`\max(1, \|m\|_\infty)`, which
    bounds the step's largest entry but not its spectrum: a block of width :math:`b`
    whose :math:`m` is near a matrix of equal entries has an eigenvalue up to :math:`b`
    times its largest entry, and with :math:`\beta_1 b > 1` the factor step
    :math:`I - \beta_1 m` reverses that direction. ``"spectral"`` divides by
    :math:`\max(1, \|m\|_\infty, 2 \beta_1 \|m\|_F)`: as ``True`` while
    :math:`\|m\|_F \le \max(1, \|m\|_\infty) / (2 \beta_1)`, and otherwise
    :math:`\beta_1 \|m\|_2 \le 1/2`, so every eigenvalue of a symmetric
    :math:`I - \beta_1 m` stays in :math:`[1/2, 3/2]` (:math:`\|m\|_2 \le \|m\|_F`).
    """
    if not config.normalize_lr_cov:
        return -config.lr_cov
    largest = torch.clamp(momentum.infinity_vector_norm(), min=1.0)
    if config.normalize_lr_cov == "spectral":
        largest = torch.maximum(largest, momentum.frobenius_norm().mul_(2.0 * config.lr_cov))
    return largest.reciprocal_().mul_(-config.lr_cov)


def cached_square(K: StructuredMatrix, other_dim: int, uses: int) -> StructuredMatrix | None:
    r"""Return :math:`K K^\top` when caching it makes the natural gradient cheaper, else ``None``.

    With :math:`K K^\top` at hand the natural gradient needs one product per side
    instead of two (:func:`natural_gradient`). For a structure closed under
    transposition the product is a member of the structure; with :math:`s` stored
    entries, :math:`s / d` per row, it costs about :math:`s^2 / d` multiply-adds and
    saves a product with the ``d x n`` gradient side, :math:`s n`, per use, with
    :math:`n` the other dimension of the gradient matrix. It pays when
    :math:`s / d < u\,n` for :math:`u` uses (the steps until the next update, ``T``):
    always for diagonal and block-diagonal factors (:math:`s / d` = 1 or the block
    size), for dense ones (:math:`s / d = d`) when :math:`d < u\,n`, at the price of one
    more ``d x d`` matrix in memory. Structures not closed under transposition
    (hierarchical, triangular, Toeplitz, arrows) would need a dense product and return
    ``None``.

    Args:
        K: The factor.
        other_dim: :math:`n`, the gradient matrix's size along the other side.
        uses: :math:`u`, how many natural gradients the product serves.
    """
    if not type(K).closed_under_transpose:
        return None
    dim = K.shape[0]
    return K @ K.T if type(K).stored_numbers(dim) < uses * other_dim * dim else None


def natural_gradient(
    K: StructuredMatrix,
    C: StructuredMatrix,
    grad: Tensor,
    KKT: StructuredMatrix | None = None,
    CCT: StructuredMatrix | None = None,
) -> Tensor:
    r"""Return :math:`C C^\top G K K^\top` in the dtype of ``grad``.

    The ``K`` side is computed in ``K``'s dtype, the ``C`` side in ``C``'s.

    Args:
        K: Input-side factor (``d_K x d_K``).
        C: Output-side factor (``d_C x d_C``).
        grad: The gradient matrix :math:`G` of shape ``(d_C, d_K)``.
        KKT: :math:`K K^\top` from :func:`cached_square`, if available.
        CCT: :math:`C C^\top` from :func:`cached_square`, if available.
    """
    dtype_K, dtype_C = K.dtype, C.dtype
    grad_T = grad.mT if grad.dtype == dtype_K else grad.mT.to(dtype_K)
    # G K K^T = (K K^T G^T)^T
    right = (KKT @ grad_T if KKT is not None else K @ K.rmatmat(grad_T)).mT
    if dtype_C != dtype_K:
        right = right.to(dtype_C)
    result = CCT @ right if CCT is not None else C @ C.rmatmat(right)
    return result if result.dtype == grad.dtype else result.to(grad.dtype)
