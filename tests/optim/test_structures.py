"""Every structure trains, in float32 and float64; wide blocks reproduce dense exactly."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import structmat
from singd_opt import SINGD
from tests.optim._singd_helpers import assert_same_parameters, batches, mlp, train

ALL_STRUCTURES = [
    "dense",
    "diagonal",
    "block30diagonal",
    "block3diagonal",
    "hierarchical15_15",
    "hierarchical2_3",
    "triltoeplitz",
    "triutoeplitz",
    "tril",
    "triu",
    "triltopleftdiag",
    "trilbottomrightdiag",
    "triutopleftdiag",
    "triubottomrightdiag",
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("structure", ALL_STRUCTURES)
def test_every_structure_trains(structure: str, dtype: torch.dtype) -> None:
    model = mlp(dtype, widths=(6, 9, 7, 3))
    data = batches(1, dtype=dtype) * 12
    optimizer = SINGD(
        model,
        structures=(structure, structure),
        T=2,
        lr=0.1,
        lr_cov=0.05,
        damping=0.1,
        defaults="reference",
        train_all_parameters=True,
    )
    cls = structmat.get_structure(structure)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        losses = train(model, optimizer, data)
    assert losses[-1] < 0.9 * losses[0]
    for store in (optimizer.Ks, optimizer.Cs, optimizer.m_Ks, optimizer.m_Cs):
        for matrix in store.values():
            assert type(matrix) is cls
            assert matrix.dtype == dtype
            assert all(t.isfinite().all() for t in matrix.tensors().values())
    assert all(p.dtype == dtype and p.isfinite().all() for p in model.parameters())


@pytest.mark.parametrize(
    ("structure", "widths"),
    [("block30diagonal", (20, 29, 29, 10)), ("hierarchical15_15", (8, 14, 14, 6))],
)
@pytest.mark.parametrize("kfac_like", [False, True])
def test_structure_as_wide_as_the_layers_equals_dense(
    structure: str, widths: tuple[int, ...], kfac_like: bool
) -> None:
    """With one block (or one dense corner) the structure is all matrices: dense updates.

    Non-symmetric factors must enter as ``K^T`` where the equations say so.
    """
    data = batches(6, d_in=widths[0], classes=widths[-1], dtype=torch.float64)
    kwargs = {
        "T": 1,
        "lr": 0.1,
        "lr_cov": 0.1,
        "kfac_like": kfac_like,
        "alpha1": 0.0 if kfac_like else 0.5,
    }
    dense_model = mlp(torch.float64, widths)
    dense_opt = SINGD(
        dense_model,
        structures=("dense", "dense"),
        **kwargs,
        defaults="reference",
        train_all_parameters=True,
    )
    train(dense_model, dense_opt, data)
    model = mlp(torch.float64, widths)
    optimizer = SINGD(
        model,
        structures=(structure, structure),
        **kwargs,
        defaults="reference",
        train_all_parameters=True,
    )
    train(model, optimizer, data)
    for name, K in optimizer.Ks.items():
        torch.testing.assert_close(
            K.to_dense(), dense_opt.Ks[name].to_dense(), rtol=1e-10, atol=1e-12
        )
        assert not torch.equal(K.to_dense(), K.to_dense().T)  # the factors are not symmetric
    assert_same_parameters(model, dense_model, rtol=1e-10, atol=1e-12)


def test_mixed_dtypes_for_the_two_factors() -> None:
    model = mlp()
    optimizer = SINGD(
        model,
        T=1,
        structures=("triltoeplitz", "diagonal"),
        preconditioner_dtype=(torch.float64, torch.bfloat16),
        defaults="reference",
        train_all_parameters=True,
    )
    train(model, optimizer, batches(3))
    for name in optimizer.Ks:
        assert optimizer.Ks[name].dtype == torch.float64
        assert optimizer.m_Ks[name].dtype == torch.float64
        assert optimizer.Cs[name].dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_conv_with_structures() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 3, (8,))
    for structure in ("block4diagonal", "triutoeplitz", "hierarchical3_2"):
        optimizer = SINGD(
            model,
            structures=(structure, "diagonal"),
            T=1,
            defaults="reference",
            train_all_parameters=True,
        )
        train(model, optimizer, [(x, y)] * 2)
        optimizer.remove_hooks()
