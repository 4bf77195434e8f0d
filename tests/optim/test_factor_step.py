"""The factor step's bound: ``normalize_lr_cov=True`` caps entries, ``"spectral"`` the spectrum."""

from __future__ import annotations

import pytest
import torch

import structmat
from singd_opt.preconditioner import UpdateConfig, factor_step


def _step(normalize: bool | str, lr_cov: float, members: int = 1) -> torch.Tensor:
    r"""Eigenvalues of :math:`I - \beta m` for ``K = I`` and :math:`m = 11^\top` (blocks of 64)."""
    cls = structmat.BlockDiagonal.with_block_size(64)
    K = cls.eye(64, dtype=torch.float64)
    m = cls.from_dense(torch.ones(64, 64, dtype=torch.float64))  # largest entry 1, spectrum 64
    if members > 1:
        K, m = cls.stack([K] * members), cls.stack([m * (i + 1) for i in range(members)])
    config = UpdateConfig(0.0, 0.0, False, normalize, lr_cov)
    new_K, _ = factor_step(K, K, m, m, config)
    dense = new_K.to_dense()
    return torch.linalg.eigvalsh(0.5 * (dense + dense.mT))


def test_the_entry_bound_reverses_a_wide_block() -> None:
    r"""The reference's bound leaves :math:`\beta_1 \|m\|_2 = 6.4`: a direction flips."""
    assert _step(True, 0.1).min() == pytest.approx(1.0 - 0.1 * 64)


@pytest.mark.parametrize("members", [1, 3])
def test_the_spectral_bound_keeps_every_direction(members: int) -> None:
    r"""``"spectral"`` caps :math:`\beta_1 \|m\|_2` at 1/2 (one bound per member of a stack)."""
    values = _step("spectral", 0.1, members)
    assert values.min() >= 0.5 - 1e-12
    assert values.max() == pytest.approx(1.0)
    # each member's own bound: 1 - 64 (i + 1) / (2 * 64 (i + 1)) = 1/2 for every member
    assert values.reshape(members, -1).amin(-1).tolist() == pytest.approx([0.5] * members)


def test_the_spectral_bound_leaves_small_momenta_alone() -> None:
    r"""Where :math:`2 \beta_1 \|m\|_F \le \max(1, \|m\|_\infty)` both bounds agree."""
    cls = structmat.BlockDiagonal.with_block_size(4)
    torch.manual_seed(0)
    K = cls.from_dense(torch.eye(8, dtype=torch.float64) + 0.1 * torch.randn(8, 8).double())
    m = cls.from_dense(0.05 * torch.randn(8, 8, dtype=torch.float64))
    entry, _ = factor_step(K, K, m, m, UpdateConfig(0.0, 0.0, False, True, 0.1))
    spectral, _ = factor_step(K, K, m, m, UpdateConfig(0.0, 0.0, False, "spectral", 0.1))
    assert torch.equal(entry.to_dense(), spectral.to_dense())
