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

A **relative** damping measures :math:`\lambda` in units of the curvature, like the
trace-normalised damping of KFAC implementations (damping :math:`A + \lambda
\tfrac{\operatorname{tr} A}{d} I`): per side the curvature's average eigenvalue
in the current metric,

.. math::
    \rho_K = \frac{\bar{\operatorname{tr}}(H_K)}{\bar{\operatorname{tr}}(K^\top K)}, \qquad
    \rho_C = \frac{u\,\bar{\operatorname{tr}}(H_C)}{\bar{\operatorname{tr}}(C^\top C)},

and the Kronecker curvature is damped by :math:`\lambda \rho_K \rho_C` instead of
:math:`\lambda`: :math:`c_K = \lambda \rho_K\, u\,\bar{\operatorname{tr}}(H_C)`,
:math:`c_C = \lambda \rho_C\, \bar{\operatorname{tr}}(H_K)`, so that

.. math::
    m_K \propto u\,\bar{\operatorname{tr}}(H_C)\left[H_K + \lambda \rho_K K^\top K\right] - I.

For dense factors at :math:`K = I` this is :math:`S_K + \lambda \bar{\operatorname{tr}}(S_K) I`:
:math:`\lambda` bounds the preconditioner's condition number on each side by
:math:`(1 + \lambda) / \lambda` times the curvature's relative spread, whatever the
curvature's scale. With ``kfac_like`` (IKFAC, no traces) the sides are damped
separately: :math:`c_K = \lambda \rho_K`, :math:`c_C = \lambda \rho_C`. The scales are
0-dim tensors (no synchronisation); a layer with no curvature at all (every recorded
input or output gradient zero) gets no damping.
"""

from __future__ import annotations

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
    rho_K = H_K.average_trace() / K_tK.average_trace()
    rho_C = H_C.average_trace() * grad_unscaling / C_tC.average_trace()
    return rho_K, rho_C


def damping_coefficients(
    damping: float,
    H_K: StructuredMatrix,
    H_C: StructuredMatrix,
    K_tK: StructuredMatrix,
    C_tC: StructuredMatrix,
    grad_unscaling: float = 1.0,
    kfac_like: bool = False,
    relative: bool = False,
) -> tuple[float | Tensor, float | Tensor]:
    r"""Return :math:`(c_K, c_C)`, the coefficients of :math:`K^\top K` and :math:`C^\top C`.

    Must be called before ``H_K``, ``H_C`` are changed in place.

    Args:
        damping: :math:`\lambda`.
        H_K: :math:`\Pi_K(K^\top S_K K)`.
        H_C: :math:`\Pi_C(C^\top S_C C)`, still to be multiplied by ``grad_unscaling``.
        K_tK: :math:`\Pi_K(K^\top K)`.
        C_tC: :math:`\Pi_C(C^\top C)`.
        grad_unscaling: :math:`u`.
        kfac_like: The IKFAC update (no traces).
        relative: Damp relative to the curvature (see the module docstring).
    """
    if relative:
        rho_K, rho_C = relative_scales(H_K, H_C, K_tK, C_tC, grad_unscaling)
        if kfac_like:
            return damping * rho_K, damping * rho_C
        return (
            damping * rho_K * (H_C.average_trace() * grad_unscaling),
            damping * rho_C * H_K.average_trace(),
        )
    if kfac_like:
        return damping, damping
    return damping * C_tC.average_trace(), damping * K_tK.average_trace()
