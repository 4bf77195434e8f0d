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
    if kfac_like:
        c_K: float | Tensor = damping
        c_C: float | Tensor = damping
    else:
        c_K, c_C = damping * C_tC.average_trace(), damping * K_tK.average_trace()
    if relative == 0.0:
        return c_K, c_C
    rho_K, rho_C = relative_scales(H_K, H_C, K_tK, C_tC, grad_unscaling)
    if kfac_like:
        return c_K + relative * rho_K, c_C + relative * rho_C
    return (
        c_K + relative * rho_K * (H_C.average_trace() * grad_unscaling),
        c_C + relative * rho_C * H_K.average_trace(),
    )
