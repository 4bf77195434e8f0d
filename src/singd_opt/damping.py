r"""The damping terms of a preconditioner update: absolute (the reference's) or relative.

SINGD's update of ``K`` (see :mod:`singd_opt.preconditioner`) moves towards

.. math::
    K^\top\!\left[\bar{\operatorname{tr}}(H_C)\, S_K + c_K\, I\right]\! K \approx I,
    \qquad
    m_K \propto \bar{\operatorname{tr}}(H_C)\, H_K + c_K\, K^\top K - I,

with :math:`H_K = \Pi_K(K^\top S_K K)` and the damping coefficient :math:`c_K` (and the
same for ``C``). The reference uses an absolute damping :math:`\lambda`:
:math:`c_K = \lambda\, \bar{\operatorname{tr}}(C^\top C)`, i.e. the Kronecker
curvature :math:`S_C \otimes S_K` damped by :math:`\lambda I`. Whether :math:`\lambda`
is small or dominates then depends on the scale of the curvature (the loss's
average, the layer's width, the activations' size); at small curvature the
preconditioner is :math:`\approx I / \lambda` times a constant and SINGD behaves like
SGD with momentum.

A **relative** damping :math:`\lambda_r` (``relative_damping``) adds a term measured in
units of the curvature, like the trace-normalised damping of KFAC implementations
(damping :math:`A + \lambda \tfrac{\operatorname{tr} A}{d} I`): per side the
curvature's average eigenvalue in the current metric,

.. math::
    \rho_K = \frac{\bar{\operatorname{tr}}(H_K)}{\bar{\operatorname{tr}}(K^\top K)}, \qquad
    \rho_C = \frac{u\,\bar{\operatorname{tr}}(H_C)}{\bar{\operatorname{tr}}(C^\top C)},

and the Kronecker curvature is damped by :math:`\lambda + \lambda_r \rho_K \rho_C`:
:math:`c_K = \lambda\, \bar{\operatorname{tr}}(C^\top C) + \lambda_r \rho_K\, u\,
\bar{\operatorname{tr}}(H_C)`, :math:`c_C = \lambda\, \bar{\operatorname{tr}}(K^\top K) +
\lambda_r \rho_C\, \bar{\operatorname{tr}}(H_K)`, so that

.. math::
    m_K \propto u\,\bar{\operatorname{tr}}(H_C)\left[H_K + \lambda_r \rho_K K^\top K\right]
        + \lambda\, \bar{\operatorname{tr}}(C^\top C)\, K^\top K - I.

For dense factors at :math:`K = I` the relative part is :math:`S_K + \lambda_r
\bar{\operatorname{tr}}(S_K) I`: whatever the curvature's scale, it bounds how much the
preconditioner amplifies a direction against the average one, by :math:`(1 +
\lambda_r)/\lambda_r`. The absolute part stays as a floor: measured in the current
metric, :math:`\rho_K` shrinks as the preconditioner grows along directions without
curvature (for a rank-deficient :math:`S_K` it can fall towards 0 over the updates),
and :math:`\lambda` then keeps the preconditioner bounded. With ``kfac_like`` (IKFAC,
no traces) the sides are damped separately: :math:`c_K = \lambda + \lambda_r \rho_K`,
:math:`c_C = \lambda + \lambda_r \rho_C`. The scales are 0-dim tensors (no
synchronisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from structmat import StructuredMatrix


def relative_scales(
    H_K: StructuredMatrix,
    H_C: StructuredMatrix,
    K_tK: StructuredMatrix,
    C_tC: StructuredMatrix,
    grad_unscaling: float = 1.0,
) -> tuple[Tensor, Tensor]:
    r"""Return :math:`(\rho_K, \rho_C)`, the curvature's average eigenvalue per side.

    Args:
        H_K: :math:`\Pi_K(K^\top S_K K)`.
        H_C: :math:`\Pi_C(C^\top S_C C)`, still to be multiplied by ``grad_unscaling``.
        K_tK: :math:`\Pi_K(K^\top K)`.
        C_tC: :math:`\Pi_C(C^\top C)`.
        grad_unscaling: :math:`u`.
    """
    return AverageTraces.of(H_K, H_C, K_tK, C_tC, grad_unscaling).relative_scales()


def damping_coefficients(
    damping: float,
    H_K: StructuredMatrix,
    H_C: StructuredMatrix,
    K_tK: StructuredMatrix,
    C_tC: StructuredMatrix,
    grad_unscaling: float = 1.0,
    kfac_like: bool = False,
    relative: float = 0.0,
) -> tuple[float | Tensor, float | Tensor]:
    r"""Return :math:`(c_K, c_C)`, the coefficients of :math:`K^\top K` and :math:`C^\top C`.

    Must be called before ``H_K``, ``H_C`` are changed in place.

    Args:
        damping: :math:`\lambda`, the absolute damping.
        H_K: :math:`\Pi_K(K^\top S_K K)`.
        H_C: :math:`\Pi_C(C^\top S_C C)`, still to be multiplied by ``grad_unscaling``.
        K_tK: :math:`\Pi_K(K^\top K)`.
        C_tC: :math:`\Pi_C(C^\top C)`.
        grad_unscaling: :math:`u`.
        kfac_like: The IKFAC update (no traces).
        relative: :math:`\lambda_r`, the relative damping (see the module docstring).
    """
    if kfac_like and relative == 0.0:
        return damping, damping
    traces = AverageTraces.of(H_K, H_C, K_tK, C_tC, grad_unscaling)
    return coefficients_from_traces(damping, traces, kfac_like, relative)


@dataclass(frozen=True)
class AverageTraces:
    r"""The average traces an update needs, each computed once (0-dim tensors).

    Attributes:
        H_K: :math:`\bar{\operatorname{tr}}(H_K)`.
        H_C: :math:`u\,\bar{\operatorname{tr}}(H_C)` (un-scaled).
        K_tK: :math:`\bar{\operatorname{tr}}(K^\top K)`.
        C_tC: :math:`\bar{\operatorname{tr}}(C^\top C)`.
    """

    H_K: Tensor
    H_C: Tensor
    K_tK: Tensor
    C_tC: Tensor

    @staticmethod
    def of(
        H_K: StructuredMatrix,
        H_C: StructuredMatrix,
        K_tK: StructuredMatrix,
        C_tC: StructuredMatrix,
        grad_unscaling: float = 1.0,
    ) -> AverageTraces:
        """The four average traces, :math:`H_C`'s times :math:`u` (four trace kernels)."""
        t_C = H_C.average_trace()
        if grad_unscaling != 1.0:
            t_C = t_C * grad_unscaling
        return AverageTraces(H_K.average_trace(), t_C, K_tK.average_trace(), C_tC.average_trace())

    def relative_scales(self) -> tuple[Tensor, Tensor]:
        r"""Return :math:`(\rho_K, \rho_C)`, the curvature's average eigenvalue per side.

        :math:`\rho_K = \bar{\operatorname{tr}}(H_K) / \bar{\operatorname{tr}}(K^\top K)`,
        :math:`\rho_C = u\,\bar{\operatorname{tr}}(H_C) / \bar{\operatorname{tr}}(C^\top C)`.
        """
        return self.H_K / self.K_tK, self.H_C / self.C_tC


def coefficients_from_traces(
    damping: float, traces: AverageTraces, kfac_like: bool = False, relative: float = 0.0
) -> tuple[float | Tensor, float | Tensor]:
    r""":func:`damping_coefficients` from the average traces (a few scalar operations).

    Args:
        damping: :math:`\lambda`.
        traces: The average traces of the update.
        kfac_like: The IKFAC update.
        relative: :math:`\lambda_r`.
    """
    if relative == 0.0:
        if kfac_like:
            return damping, damping
        return damping * traces.C_tC, damping * traces.K_tK
    rho_K, rho_C = traces.relative_scales()
    if kfac_like:
        return damping + relative * rho_K, damping + relative * rho_C
    # c_K = lambda tr(C^T C) + lambda_r rho_K u tr(H_C), and alike for C
    return (
        torch.addcmul(damping * traces.C_tC, rho_K, traces.H_C, value=relative),
        torch.addcmul(damping * traces.K_tK, rho_C, traces.H_K, value=relative),
    )
