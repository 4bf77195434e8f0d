r"""Start ``K, C`` at the fixed point of the first curvature instead of at the identity.

SINGD's update of a layer's factors (see :mod:`singd_opt.preconditioner`) is a
multiplicative flow towards the fixed point

.. math::
    \Pi_K\!\left(K^\top M_K K\right) = I, \quad
    M_K = \bar{\operatorname{tr}}(C^\top S_C C)\, S_K
        + \lambda \bar{\operatorname{tr}}(C^\top C)\, I

(and the same with the roles of ``K`` and ``C`` swapped), where :math:`S_K = A^\top A`
and :math:`S_C = G_\text{out}^\top G_\text{out}` are the layer's input and
output-gradient covariances. For dense factors the fixed point is
:math:`K K^\top = M_K^{-1}`. Starting from :math:`K = I`, an eigen-direction of
:math:`M_K` with eigenvalue :math:`\mu` moves by the factor
:math:`1 - \tfrac{\beta_1}{2}(\mu k^2 - 1)` per update, so directions of small
curvature (:math:`\mu k^2 \ll 1`) grow by at most :math:`1 + \beta_1/2` per update: with
:math:`\beta_1 = 0.1` and :math:`\lambda = 10^{-3}` that takes about 70 updates, while a
larger :math:`\beta_1` diverges along the directions of large curvature.

:func:`fixed_point_factors` instead solves the fixed-point equations once, from the
curvature terms of the first update (taken at :math:`K = C = I`, so
:math:`H_K = \Pi_K(S_K)` and :math:`H_C = \Pi_C(S_C)`), and returns the factors to
continue from. The later Riemannian updates then only have to track how the
curvature changes.

How the equations are solved depends on the structure:

- **exact** for the structures closed under spectral functions
  (:attr:`~structmat.StructuredMatrix.closed_under_spectral_functions`: dense,
  diagonal and block-diagonal): their projection keeps whole symmetric blocks of
  :math:`S`, so with :math:`M = \alpha H + \beta I` blockwise and the eigenvalues
  :math:`\sigma` of those blocks, the symmetric :math:`K = M^{-1/2}` satisfies
  :math:`\Pi(K^\top M K) = I` exactly. Cost: one symmetric eigendecomposition per block,
  :math:`O(d b^2)` for blocks of size :math:`b` (:math:`O(d^3)` for dense, once).
- **scalar** for every other structure: :math:`K = k I, C = c I` with the equations
  holding in the average trace, :math:`\bar{\operatorname{tr}}(K^\top M_K K) = 1`. Cost:
  :math:`O(d)`.

The coefficients of :math:`M_K` depend on ``C`` and vice versa; with the spectra
fixed they are found by a short alternating iteration on vectors (:math:`O(d)` per
round). The equations fix only the product of the scales of ``K`` and ``C``
(:math:`K \to sK, C \to C/s` maps solutions to solutions); the solution returned is the
balanced one, :math:`\operatorname{mean}\log\operatorname{eig}(K K^\top) =
\operatorname{mean}\log\operatorname{eig}(C C^\top)`, the relation that the
continuous-time SINGD flow from :math:`K = C = I` conserves (both factors' updates
have the same average trace). With ``kfac_like`` (IKFAC) the equations decouple:
:math:`K K^\top = (S_K + \lambda I)^{-1}` and :math:`C C^\top = (S_C + \lambda I)^{-1}`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from singd_opt.preconditioner import UpdateConfig
from structmat import StructuredMatrix

#: Rounds of the alternating iteration for the coupled scale coefficients.
COUPLING_ROUNDS = 50
#: The iteration stops once no coefficient changes by more than this, relatively.
COUPLING_RTOL = 1e-10


@dataclass(frozen=True)
class Spectrum:
    r"""The modes of one factor's curvature term ``H`` used to solve the fixed point.

    Attributes:
        values: Eigenvalues of ``H`` (exact structures, clamped at 0), or the single
            value :math:`\bar{\operatorname{tr}}(H)` (scalar solution); float64.
        compose: Maps new eigenvalues to the member of ``H``'s structure with ``H``'s
            eigenvectors (exact structures; ``None`` for the scalar solution).
        scalar: Whether this is the trace-matched scalar solution.
    """

    values: Tensor
    compose: Callable[[Tensor], StructuredMatrix] | None
    scalar: bool = False


def solves_exactly(H: StructuredMatrix) -> bool:
    """Return whether :func:`fixed_point_factors` solves ``H``'s structure exactly.

    True for structures closed under spectral functions (dense, diagonal and
    block-diagonal: their projection keeps whole symmetric blocks); the others get the
    trace-matched scalar solution.
    """
    return type(H).closed_under_spectral_functions


def spectrum(H: StructuredMatrix, exact: bool = True) -> Spectrum:
    r"""Return the modes of a curvature term :math:`H = \Pi(S)`.

    Args:
        H: Symmetric positive semi-definite curvature term of a factor's structure.
        exact: Solve exactly where :func:`solves_exactly`; ``False`` forces the
            scalar solution.

    Returns:
        The eigenvalues (clamped at 0) with the map back to the structure for the
        exact structures, else :math:`\bar{\operatorname{tr}}(H)` as a one-entry
        tensor. Computed in float64.
    """
    if not (exact and solves_exactly(H)):
        return Spectrum(H.average_trace().double().clamp(min=0.0).reshape(1), None, True)
    values, compose = H.to(torch.float64).symmetric_eigen()
    return Spectrum(values.clamp(min=0.0), compose)


def coupled_inverse_eigenvalues(
    sigma: Tensor, tau: Tensor, damping: float, kfac_like: bool = False
) -> tuple[Tensor, Tensor]:
    r"""Solve the fixed-point equations on the spectra: eigenvalues of ``K K^T``, ``C C^T``.

    With :math:`p, q` the eigenvalues of :math:`K K^\top, C C^\top` (in the
    eigenbases of the curvature blocks) the SINGD fixed point reads

    .. math::
        p = \frac{1}{a \sigma + \lambda b}, \quad a = \operatorname{mean}(\tau q),\
        b = \operatorname{mean}(q); \qquad
        q = \frac{1}{c \tau + \lambda e}, \quad c = \operatorname{mean}(\sigma p),\
        e = \operatorname{mean}(p),

    solved by alternating the two halves, rescaling to the balanced solution
    (:math:`\operatorname{mean}\log p = \operatorname{mean}\log q`) after each round.
    IKFAC (``kfac_like``) has :math:`p = 1/(\sigma + \lambda)`, :math:`q = 1/(\tau + \lambda)`.

    Args:
        sigma: Non-negative eigenvalues of :math:`H_K` (or its average trace), ``(m,)``.
        tau: Non-negative eigenvalues of :math:`H_C` (or its average trace), ``(n,)``.
        damping: :math:`\lambda > 0`.
        kfac_like: Solve the decoupled IKFAC equations.

    Returns:
        ``(p, q)``, positive, of the shapes of ``sigma`` and ``tau``.

    Raises:
        ValueError: If ``damping`` is not positive (the fixed point would not exist
            for a singular curvature).
    """
    if not damping > 0.0:
        raise ValueError(f"damping must be > 0 for a fixed-point start, got {damping!r}")
    if kfac_like:
        return 1.0 / (sigma + damping), 1.0 / (tau + damping)
    q = torch.ones_like(tau)
    p = torch.ones_like(sigma)
    for _ in range(COUPLING_ROUNDS):
        p_new = 1.0 / ((tau * q).mean() * sigma + damping * q.mean())
        q_new = 1.0 / ((sigma * p_new).mean() * tau + damping * p_new.mean())
        shift = torch.exp(0.5 * (q_new.log().mean() - p_new.log().mean()))
        p_new, q_new = p_new * shift, q_new / shift
        change = torch.maximum(((p_new - p).abs() / p_new).max(), ((q_new - q).abs() / q_new).max())
        p, q = p_new, q_new
        if change <= COUPLING_RTOL:
            break
    return p, q


def factor_from_spectrum(
    H: StructuredMatrix, modes: Spectrum, inverse_eigenvalues: Tensor
) -> StructuredMatrix:
    r"""Return the factor :math:`K` of ``H``'s structure with :math:`K K^\top = P`.

    ``P`` has the eigenvectors of ``modes`` and the eigenvalues
    ``inverse_eigenvalues``; ``K`` is its symmetric square root, built block by block
    (exact structures), or :math:`\sqrt{p}\, I` (scalar solution).

    Args:
        H: The curvature term whose structure, dtype and device ``K`` takes.
        modes: :func:`spectrum` of ``H``.
        inverse_eigenvalues: Eigenvalues of :math:`K K^\top`, shaped like ``modes.values``.
    """
    roots = inverse_eigenvalues.sqrt()
    if modes.scalar or modes.compose is None:
        return type(H).eye(H.shape[0], dtype=H.dtype, device=H.device).mul_(float(roots[0]))
    return modes.compose(roots).to(H.dtype)


def fixed_point_factors(
    H_K: StructuredMatrix,
    H_C: StructuredMatrix,
    damping: float,
    kfac_like: bool = False,
    exact: bool = True,
) -> tuple[StructuredMatrix, StructuredMatrix]:
    r"""Return ``(K, C)`` at the fixed point of the curvature terms of an update at ``K = C = I``.

    Args:
        H_K: :math:`\Pi_K(S_K)`, the ``K``-side curvature term collected while
            :math:`K = I` (``d_K x d_K``, of ``K``'s structure).
        H_C: :math:`\Pi_C(S_C)`, likewise for ``C`` (already un-scaled from any loss
            scaling).
        damping: :math:`\lambda > 0`.
        kfac_like: Solve the IKFAC equations instead of SINGD's.
        exact: Solve exactly where the structure allows it; ``False`` gives every
            structure the scalar solution.

    Returns:
        New factors in the structures, dtypes and devices of ``H_K`` and ``H_C``: the
        exact projected fixed point for dense, diagonal and block-diagonal structures,
        else the trace-matched multiples of the identity (see the module docstring).

    Raises:
        ValueError: If ``damping`` is not positive.
    """
    modes_K, modes_C = spectrum(H_K, exact), spectrum(H_C, exact)
    p, q = coupled_inverse_eigenvalues(modes_K.values, modes_C.values, damping, kfac_like)
    return factor_from_spectrum(H_K, modes_K, p), factor_from_spectrum(H_C, modes_C, q)


def warm_start_factors(
    H_K: StructuredMatrix, H_C: StructuredMatrix, config: UpdateConfig
) -> tuple[StructuredMatrix, StructuredMatrix]:
    r"""Return :func:`fixed_point_factors` for an update's configuration.

    With a relative damping :math:`\lambda_r` (``config.relative_damping``, see
    :mod:`singd_opt.damping`) measured at :math:`K = C = I`, where
    :math:`\rho = \bar{\operatorname{tr}}(H)`: SINGD's coupled equations get the damping
    :math:`\lambda + \lambda_r \bar{\operatorname{tr}}(H_K) \bar{\operatorname{tr}}(H_C)`;
    IKFAC's decoupled ones, with :math:`c = \lambda + \lambda_r \bar{\operatorname{tr}}(H)`
    per side, are solved for :math:`H / c` with damping 1 and the factor divided by
    :math:`\sqrt{c}`, which is :math:`K K^\top = (H_K + c_K I)^{-1}` exactly.

    Args:
        H_K: The ``K``-side curvature term at :math:`K = I`.
        H_C: The ``C``-side one, un-scaled.
        config: The update's hyper-parameters (``damping``, ``kfac_like``,
            ``relative_damping``).

    A curvature term that is not finite (a bad batch) gives non-finite factors, so that
    the optimizer skips the step instead of failing.
    """
    if not all(bool(t.isfinite().all()) for H in (H_K, H_C) for t in H.tensors().values()):
        # a bad batch: non-finite factors, which the step's finiteness check rejects
        return H_K.clone().mul_(math.nan), H_C.clone().mul_(math.nan)
    damping, relative = float(config.damping), float(config.relative_damping)
    if relative == 0.0:
        return fixed_point_factors(H_K, H_C, damping, config.kfac_like)
    t_K, t_C = float(H_K.average_trace()), float(H_C.average_trace())
    if damping + relative * min(t_K, t_C) <= 0.0:  # no curvature and no floor: stay at I
        return type(H_K).eye(H_K.shape[0], dtype=H_K.dtype, device=H_K.device), type(H_C).eye(
            H_C.shape[0], dtype=H_C.dtype, device=H_C.device
        )
    if not config.kfac_like:
        return fixed_point_factors(H_K, H_C, damping + relative * t_K * t_C)
    c_K, c_C = damping + relative * t_K, damping + relative * t_C
    K, C = fixed_point_factors(H_K.clone().mul_(1.0 / c_K), H_C.clone().mul_(1.0 / c_C), 1.0, True)
    return K.mul_(c_K**-0.5), C.mul_(c_C**-0.5)
