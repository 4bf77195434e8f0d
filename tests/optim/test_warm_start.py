r"""The fixed-point start of ``K, C``, checked against dense computations of the equations.

With dense covariances :math:`S_K = A^\\top A` and :math:`S_C = G^\\top G` and the factors
returned by :func:`fixed_point_factors`, the SINGD fixed point says (bars are average
traces)

    Pi_K(K^T M_K K) = I,  M_K = tr(C^T S_C C)/d_C S_K + lambda tr(C^T C)/d_C I,

and the same with ``K`` and ``C`` swapped; for the scalar solution only the average
traces of these equations hold. Everything is in float64 so the tolerances reflect
the conditioning of the eigendecompositions, not float32 rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from singd_opt import SINGD
from singd_opt.preconditioner import UpdateConfig, update_preconditioner
from singd_opt.warm_start import (
    coupled_inverse_eigenvalues,
    fixed_point_factors,
    solves_exactly,
)
from structmat import StructuredMatrix, get_structure
from tests.optim._singd_helpers import batches, mlp

DTYPE = torch.float64
EXACT = ("dense", "diagonal", "block3diagonal", "block4diagonal")
SCALAR = ("hierarchical2_3", "triltoeplitz", "triutoeplitz", "tril")
TOL = 1e-9


def covariance_terms(
    structure_K: str, structure_C: str, d_K: int = 10, d_C: int = 7, n: int = 6, seed: int = 0
) -> tuple[Tensor, Tensor, StructuredMatrix, StructuredMatrix]:
    """Dense ``S_K, S_C`` of rank ``n`` and the curvature terms ``Pi(S)`` at ``K = C = I``."""
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d_K, generator=generator, dtype=DTYPE) / math.sqrt(n)
    G = torch.randn(n, d_C, generator=generator, dtype=DTYPE) * 0.1
    eye_K = get_structure(structure_K).eye(d_K, dtype=DTYPE)
    eye_C = get_structure(structure_C).eye(d_C, dtype=DTYPE)
    return A.T @ A, G.T @ G, eye_K.from_inner(A.T), eye_C.from_inner(G.T)


def fixed_point_operators(
    K: Tensor, C: Tensor, S_K: Tensor, S_C: Tensor, damping: float
) -> tuple[Tensor, Tensor]:
    """Dense ``K^T M_K K`` and ``C^T M_C C`` of the SINGD fixed-point equations."""
    d_K, d_C = K.shape[0], C.shape[0]
    eye_K = torch.eye(d_K, dtype=DTYPE)
    eye_C = torch.eye(d_C, dtype=DTYPE)
    M_K = (C.T @ S_C @ C).trace() / d_C * S_K + damping * (C.T @ C).trace() / d_C * eye_K
    M_C = (K.T @ S_K @ K).trace() / d_K * S_C + damping * (K.T @ K).trace() / d_K * eye_C
    return K.T @ M_K @ K, C.T @ M_C @ C


@pytest.mark.parametrize("damping", [1e-3, 0.1])
@pytest.mark.parametrize("structure_K", EXACT)
@pytest.mark.parametrize("structure_C", EXACT)
def test_exact_structures_satisfy_the_projected_fixed_point(
    structure_K: str, structure_C: str, damping: float
) -> None:
    S_K, S_C, H_K, H_C = covariance_terms(structure_K, structure_C)
    K, C = fixed_point_factors(H_K, H_C, damping)
    assert type(K) is type(H_K) and type(C) is type(H_C)
    K_dense, C_dense = K.to_dense(), C.to_dense()
    lhs_K, lhs_C = fixed_point_operators(K_dense, C_dense, S_K, S_C, damping)
    # Project with the structure's own projection (dense keeps everything, the
    # block structures keep their diagonal blocks).
    projected_K = type(K).from_dense(lhs_K).to_dense()
    projected_C = type(C).from_dense(lhs_C).to_dense()
    torch.testing.assert_close(projected_K, torch.eye(10, dtype=DTYPE), atol=TOL, rtol=0)
    torch.testing.assert_close(projected_C, torch.eye(7, dtype=DTYPE), atol=TOL, rtol=0)


def test_dense_fixed_point_is_the_damped_inverse() -> None:
    """Dense: ``K K^T = M_K^{-1}`` exactly, and ``K`` is symmetric."""
    S_K, S_C, H_K, H_C = covariance_terms("dense", "dense")
    damping = 1e-2
    K, C = fixed_point_factors(H_K, H_C, damping)
    K_dense, C_dense = K.to_dense(), C.to_dense()
    d_C = 7
    M_K = (C_dense.T @ S_C @ C_dense).trace() / d_C * S_K + damping * (
        C_dense.T @ C_dense
    ).trace() / d_C * torch.eye(10, dtype=DTYPE)
    torch.testing.assert_close(K_dense @ K_dense.T, torch.linalg.inv(M_K), atol=0, rtol=1e-8)
    torch.testing.assert_close(K_dense, K_dense.T, atol=1e-12, rtol=0)


@pytest.mark.parametrize("structure", SCALAR)
def test_other_structures_get_trace_matched_multiples_of_the_identity(structure: str) -> None:
    S_K, S_C, H_K, H_C = covariance_terms(structure, "dense")
    damping = 1e-2
    assert not solves_exactly(H_K) and solves_exactly(H_C)
    K, C = fixed_point_factors(H_K, H_C, damping)
    K_dense = K.to_dense()
    scale = K_dense[0, 0]
    torch.testing.assert_close(K_dense, scale * torch.eye(10, dtype=DTYPE), atol=0, rtol=0)
    lhs_K, lhs_C = fixed_point_operators(K_dense, C.to_dense(), S_K, S_C, damping)
    assert lhs_K.trace().item() / 10 == pytest.approx(1.0, abs=TOL)
    torch.testing.assert_close(lhs_C, torch.eye(7, dtype=DTYPE), atol=TOL, rtol=0)


def test_solution_is_balanced() -> None:
    """Mean log-eigenvalue of ``K K^T`` equals that of ``C C^T``."""
    _, _, H_K, H_C = covariance_terms("dense", "dense")
    K, C = fixed_point_factors(H_K, H_C, 1e-3)
    logdet_K = torch.linalg.slogdet(K.to_dense())[1] / 10
    logdet_C = torch.linalg.slogdet(C.to_dense())[1] / 7
    assert logdet_K.item() == pytest.approx(logdet_C.item(), abs=1e-9)


def test_kfac_like_fixed_point_is_uncoupled() -> None:
    S_K, S_C, H_K, H_C = covariance_terms("dense", "block3diagonal")
    damping = 0.05
    K, C = fixed_point_factors(H_K, H_C, damping, kfac_like=True)
    K_dense, C_dense = K.to_dense(), C.to_dense()
    expected_K = torch.linalg.inv(S_K + damping * torch.eye(10, dtype=DTYPE))
    torch.testing.assert_close(K_dense @ K_dense.T, expected_K, atol=0, rtol=1e-8)
    projected = type(C).from_dense(
        C_dense.T @ (S_C + damping * torch.eye(7, dtype=DTYPE)) @ C_dense
    )
    torch.testing.assert_close(projected.to_dense(), torch.eye(7, dtype=DTYPE), atol=TOL, rtol=0)


@pytest.mark.parametrize("structure", [*EXACT, "triltoeplitz"])
def test_singd_update_leaves_the_fixed_point_in_place(structure: str) -> None:
    """One SINGD update from the start with the same data moves an exact solution by ~0."""
    generator = torch.Generator().manual_seed(3)
    A = torch.randn(8, 10, generator=generator, dtype=DTYPE) / math.sqrt(8)
    G = torch.randn(8, 7, generator=generator, dtype=DTYPE) * 0.1
    eye_K = get_structure(structure).eye(10, dtype=DTYPE)
    eye_C = get_structure(structure).eye(7, dtype=DTYPE)
    damping = 1e-2
    K, C = fixed_point_factors(eye_K.from_inner(A.T), eye_C.from_inner(G.T), damping)
    K_before, C_before = K.to_dense().clone(), C.to_dense().clone()
    config = UpdateConfig(damping, alpha1=0.0, kfac_like=False, normalize_lr_cov=False, lr_cov=0.5)
    new_K, new_C, m_K, m_C = update_preconditioner(
        K, C, None, None, K.from_inner(A.T), C.from_inner(G.T), config
    )
    if solves_exactly(eye_K):
        torch.testing.assert_close(new_K.to_dense(), K_before, atol=1e-10, rtol=0)
        torch.testing.assert_close(new_C.to_dense(), C_before, atol=1e-10, rtol=0)
    else:  # only the trace of the update direction vanishes
        assert m_K.average_trace().item() == pytest.approx(0.0, abs=1e-10)
        assert m_C.average_trace().item() == pytest.approx(0.0, abs=1e-10)


def test_coupled_eigenvalues_solve_the_scalar_equations() -> None:
    sigma = torch.tensor([0.0, 1e-3, 0.5, 2.0], dtype=DTYPE)
    tau = torch.tensor([1e-4, 0.3, 3.0], dtype=DTYPE)
    damping = 1e-3
    p, q = coupled_inverse_eigenvalues(sigma, tau, damping)
    a, b = (tau * q).mean(), q.mean()
    c, e = (sigma * p).mean(), p.mean()
    torch.testing.assert_close(p, 1 / (a * sigma + damping * b), atol=0, rtol=1e-9)
    torch.testing.assert_close(q, 1 / (c * tau + damping * e), atol=0, rtol=1e-9)
    assert p.log().mean().item() == pytest.approx(q.log().mean().item(), abs=1e-12)


def test_zero_damping_is_rejected() -> None:
    with pytest.raises(ValueError, match="damping"):
        coupled_inverse_eigenvalues(torch.ones(2), torch.ones(2), 0.0)


# ----------------------------------------------------------------- optimizer
def test_optimizer_starts_at_the_fixed_point_of_the_first_curvature() -> None:
    model = mlp(DTYPE)
    data = batches(3, dtype=DTYPE)
    warm = SINGD(
        model,
        lr=0.0,
        damping=0.01,
        warm_start=True,
        T=2,
        defaults="reference",
        train_all_parameters=True,
    )
    x, y = data[0]
    warm.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    H_Ks = {name: H.clone() for name, H in warm.H_Ks.items()}
    H_Cs = {name: H.clone() for name, H in warm.H_Cs.items()}
    warm.step()
    for name in H_Ks:
        K, C = fixed_point_factors(H_Ks[name], H_Cs[name], 0.01)
        torch.testing.assert_close(warm.Ks[name].to_dense(), K.to_dense())
        torch.testing.assert_close(warm.Cs[name].to_dense(), C.to_dense())
    # Later updates are ordinary SINGD updates again.
    Ks = {name: K.to_dense().clone() for name, K in warm.Ks.items()}
    for x, y in data[1:]:
        warm.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        warm.step()
    assert any(not torch.equal(Ks[n], warm.Ks[n].to_dense()) for n in Ks)


def test_warm_start_is_off_by_default_and_validated() -> None:
    model = mlp()
    assert (
        SINGD(model, defaults="reference", train_all_parameters=True).param_groups[0]["warm_start"]
        is False
    )
    with pytest.raises(TypeError, match="warm_start"):
        SINGD(model, warm_start=1, defaults="reference", train_all_parameters=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warm_start"):
        SINGD(model, warm_start=True, damping=0.0, defaults="reference", train_all_parameters=True)


def test_a_loaded_checkpoint_does_not_start_again() -> None:
    model = mlp(DTYPE)
    data = batches(2, dtype=DTYPE)
    first = SINGD(
        model,
        lr=0.0,
        damping=0.01,
        warm_start=True,
        T=1,
        defaults="reference",
        train_all_parameters=True,
    )
    x, y = data[0]
    first.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    first.step()
    state = first.state_dict()
    first.remove_hooks()
    second = SINGD(
        model,
        lr=0.0,
        damping=0.01,
        warm_start=True,
        T=1,
        defaults="reference",
        train_all_parameters=True,
    )
    second.load_state_dict(state)
    reference = SINGD(
        model, lr=0.0, damping=0.01, T=1, defaults="reference", train_all_parameters=True
    )
    reference.load_state_dict(state)
    x, y = data[1]
    for optimizer in (second, reference):
        optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    second.step()
    reference.step()
    for name in reference.Ks:
        torch.testing.assert_close(second.Ks[name].to_dense(), reference.Ks[name].to_dense())
