"""Damping relative to the curvature: coefficients, the update and the warm start."""

from __future__ import annotations

import math

import pytest
import torch

from singd_opt.damping import damping_coefficients, relative_scales
from singd_opt.preconditioner import UpdateConfig, update_preconditioner
from singd_opt.warm_start import fixed_point_factors, warm_start_factors
from structmat import Dense, get_structure

DTYPE = torch.float64


def terms(structure: str = "dense", d_K: int = 6, d_C: int = 4, scale: float = 1.0, seed: int = 0):
    """Random K, C (near the identity) and H_K = Pi(K^T A^T A K), H_C = Pi(C^T G^T G C)."""
    generator = torch.Generator().manual_seed(seed)
    cls = get_structure(structure)
    K = cls.from_dense(
        torch.eye(d_K, dtype=DTYPE) + 0.1 * torch.randn(d_K, d_K, generator=generator, dtype=DTYPE)
    )
    C = cls.from_dense(
        torch.eye(d_C, dtype=DTYPE) + 0.1 * torch.randn(d_C, d_C, generator=generator, dtype=DTYPE)
    )
    A = scale * torch.randn(5, d_K, generator=generator, dtype=DTYPE)
    G = torch.randn(5, d_C, generator=generator, dtype=DTYPE)
    H_K = K.from_inner(A.T)
    H_C = C.from_inner(G.T)
    return K, C, H_K, H_C


def test_absolute_coefficients_are_the_reference_ones() -> None:
    K, C, H_K, H_C = terms()
    K_tK, C_tC = K.from_inner(), C.from_inner()
    c_K, c_C = damping_coefficients(1e-3, H_K, H_C, K_tK, C_tC)
    assert float(c_K) == pytest.approx(1e-3 * float(C_tC.average_trace()), rel=1e-14)
    assert float(c_C) == pytest.approx(1e-3 * float(K_tK.average_trace()), rel=1e-14)
    assert damping_coefficients(1e-3, H_K, H_C, K_tK, C_tC, kfac_like=True) == (1e-3, 1e-3)


@pytest.mark.parametrize("kfac_like", [False, True])
def test_relative_coefficients_scale_with_the_curvature(kfac_like: bool) -> None:
    """Scaling the inputs by s multiplies H_K by s^2; the damping follows, the absolute does not."""
    K, C, H_K, H_C = terms()
    _, _, H_K2, _ = terms(scale=3.0)
    K_tK, C_tC = K.from_inner(), C.from_inner()
    rel = damping_coefficients(0.0, H_K, H_C, K_tK, C_tC, 0.5, kfac_like, relative=1e-2)
    rel2 = damping_coefficients(0.0, H_K2, H_C, K_tK, C_tC, 0.5, kfac_like, relative=1e-2)
    # H_K grows by 9: c_K grows by 9 (rho_K), c_C by 9 (tr H_K) unless kfac_like (rho_C only)
    assert float(rel2[0]) == pytest.approx(9 * float(rel[0]), rel=1e-12)
    assert float(rel2[1]) == pytest.approx((1 if kfac_like else 9) * float(rel[1]), rel=1e-12)
    # the absolute part adds on top
    both = damping_coefficients(1e-3, H_K, H_C, K_tK, C_tC, 0.5, kfac_like, relative=1e-2)
    absolute = damping_coefficients(1e-3, H_K, H_C, K_tK, C_tC, 0.5, kfac_like)
    for total, a, r in zip(both, absolute, rel, strict=True):
        assert float(total) == pytest.approx(float(a) + float(r), rel=1e-12)


def test_relative_update_at_the_identity_damps_by_the_average_eigenvalue() -> None:
    """At K = C = I: m_K = 1/2 [tr(H_C) (H_K + lambda_r tr(H_K) I) + lambda I - I]."""
    _, _, H_K, H_C = terms()
    d_K, d_C = H_K.shape[0], H_C.shape[0]
    K, C = Dense.eye(d_K, dtype=DTYPE), Dense.eye(d_C, dtype=DTYPE)
    S_K, S_C = H_K.to_dense(), H_C.to_dense()
    t_K, t_C = S_K.trace() / d_K, S_C.trace() / d_C
    config = UpdateConfig(
        damping=0.01,
        alpha1=0.0,
        kfac_like=False,
        normalize_lr_cov=False,
        lr_cov=0.2,
        relative_damping=0.1,
    )
    new_K, _, m_K, m_C = update_preconditioner(K, C, None, None, H_K.clone(), H_C.clone(), config)
    expected_m_K = 0.5 * (
        t_C * (S_K + 0.1 * t_K * torch.eye(d_K, dtype=DTYPE))
        + 0.01 * torch.eye(d_K, dtype=DTYPE)
        - torch.eye(d_K, dtype=DTYPE)
    )
    expected_m_C = 0.5 * (
        t_K * (S_C + 0.1 * t_C * torch.eye(d_C, dtype=DTYPE))
        + 0.01 * torch.eye(d_C, dtype=DTYPE)
        - torch.eye(d_C, dtype=DTYPE)
    )
    torch.testing.assert_close(m_K.to_dense(), expected_m_K, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(m_C.to_dense(), expected_m_C, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(new_K.to_dense(), torch.eye(d_K, dtype=DTYPE) - 0.2 * expected_m_K)


def test_relative_scales_are_rayleigh_quotients() -> None:
    K, C, H_K, H_C = terms()
    rho_K, rho_C = relative_scales(H_K, H_C, K.from_inner(), C.from_inner(), 2.0)
    assert float(rho_K) == pytest.approx(
        float(H_K.average_trace() / K.from_inner().average_trace())
    )
    assert float(rho_C) == pytest.approx(
        float(2 * H_C.average_trace() / C.from_inner().average_trace())
    )


@pytest.mark.parametrize("structure", ["dense", "diagonal", "block2diagonal"])
def test_relative_warm_start_solves_the_relative_fixed_point(structure: str) -> None:
    """SINGD: damping lambda + lambda_r tr(H_K) tr(H_C); IKFAC: (H + c I)^-1 per side."""
    _, _, H_K, H_C = terms(structure)
    t_K, t_C = float(H_K.average_trace()), float(H_C.average_trace())
    config = UpdateConfig(0.002, 0.0, False, False, 0.1, relative_damping=0.05)
    K, C = warm_start_factors(H_K, H_C, config)
    K_ref, C_ref = fixed_point_factors(H_K, H_C, 0.002 + 0.05 * t_K * t_C)
    torch.testing.assert_close(K.to_dense(), K_ref.to_dense(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(C.to_dense(), C_ref.to_dense(), rtol=1e-12, atol=1e-14)

    ikfac = UpdateConfig(0.002, 0.0, True, False, 0.1, relative_damping=0.05)
    K, C = warm_start_factors(H_K, H_C, ikfac)
    for factor, H, t in ((K, H_K, t_K), (C, H_C, t_C)):
        dense = factor.to_dense()
        # the projection keeps the blocks: (K K^T)^-1 = Pi(H) + lambda t I
        inverse = torch.linalg.inv(dense @ dense.T)
        expected = H.to_dense() + (0.002 + 0.05 * t) * torch.eye(H.shape[0], dtype=DTYPE)
        torch.testing.assert_close(inverse, expected, rtol=1e-9, atol=1e-12 * math.sqrt(t))


def test_warm_start_without_any_damping_or_curvature_stays_at_the_identity() -> None:
    zero = Dense(torch.zeros(3, 3, dtype=DTYPE))
    config = UpdateConfig(0.0, 0.0, False, False, 0.1, relative_damping=0.1)
    K, C = warm_start_factors(zero, zero.clone(), config)
    torch.testing.assert_close(K.to_dense(), torch.eye(3, dtype=DTYPE))
    torch.testing.assert_close(C.to_dense(), torch.eye(3, dtype=DTYPE))
