"""Gradient accumulation: k micro-batches with ``loss / k`` equal one full batch.

The full batch minimises the same objective, the sum of the micro-batch losses: for
a mean loss that is the mean over the full batch; for a summed loss
(``loss_average=None``) it is the full sum divided by ``k`` (or the full sum when the
micro-batch losses are not divided).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from singd_opt import SINGD
from tests.optim._singd_helpers import assert_same_parameters, dense_factors


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _loss(out: Tensor, y: Tensor, loss_average: str | None) -> Tensor:
    reduction = "sum" if loss_average is None else "mean"
    return nn.functional.mse_loss(out, y, reduction=reduction)


def _run(
    micro_batches: int, data: list[tuple[Tensor, Tensor]], loss_scale: float, **kwargs: Any
) -> tuple[nn.Module, SINGD]:
    model = _model()
    optimizer = SINGD(
        model,
        **{"lr": 0.05, "lr_cov": 0.1, "damping": 0.01, "T": 1, **kwargs},
        defaults="reference",
        train_all_parameters=True,
    )
    for x, y in data:
        optimizer.zero_grad()
        for x_part, y_part in zip(x.chunk(micro_batches), y.chunk(micro_batches), strict=True):
            loss = _loss(model(x_part), y_part, kwargs.get("loss_average", "batch"))
            (loss * loss_scale).backward()
        optimizer.step()
    return model, optimizer


def _data(shape: tuple[int, ...]) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(2)
    return [
        (
            torch.randn(*shape, 5, generator=generator, dtype=torch.float64),
            torch.randn(*shape, 3, generator=generator, dtype=torch.float64),
        )
        for _ in range(5)
    ]


MODES: list[dict[str, Any]] = [
    {},
    {"kfac_like": True, "alpha1": 0.0},
    {"loss_average": None},
    {"loss_average": None, "kfac_like": True, "alpha1": 0.0},
    {"normalize_lr_cov": True},
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("micro_batches", [2, 3])
def test_micro_batches_equal_the_full_batch(mode: dict[str, Any], micro_batches: int) -> None:
    data = _data((12,))
    summed = "loss_average" in mode and mode["loss_average"] is None
    full, full_opt = _run(1, data, 1 / micro_batches if summed else 1.0, **mode)
    accumulated, acc_opt = _run(micro_batches, data, 1 / micro_batches, **mode)
    assert_same_parameters(accumulated, full, rtol=1e-10, atol=1e-12)
    expected = dense_factors(full_opt)
    for key, factor in dense_factors(acc_opt).items():
        torch.testing.assert_close(factor, expected[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kfac_approx", ["expand", "reduce"])
@pytest.mark.parametrize("loss_average", ["batch", "batch+sequence", None])
def test_micro_batches_with_sequences(kfac_approx: str, loss_average: str | None) -> None:
    data = _data((6, 4))
    mode = {"kfac_approx": kfac_approx, "loss_average": loss_average, "kfac_like": True}
    mode["alpha1"] = 0.0
    full, _ = _run(1, data, 1 / 3 if loss_average is None else 1.0, **mode)
    accumulated, _ = _run(3, data, 1 / 3, **mode)
    assert_same_parameters(accumulated, full, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kfac_like", [False, True])
def test_summed_loss_micro_batches_without_division(kfac_like: bool) -> None:
    data = _data((12,))
    mode: dict[str, Any] = {"loss_average": None, "kfac_like": kfac_like, "alpha1": 0.0}
    mode.update(lr=0.005, lr_cov=0.01)
    full, _ = _run(1, data, 1.0, **mode)
    accumulated, _ = _run(4, data, 1.0, **mode)
    assert_same_parameters(accumulated, full, rtol=1e-10, atol=1e-12)


def test_pending_counts_follow_the_micro_batches() -> None:
    model = _model()
    optimizer = SINGD(model, T=1, defaults="reference", train_all_parameters=True)
    x, y = _data((10,))[0]
    for x_part, y_part in zip(x.split([4, 6]), y.split([4, 6]), strict=True):
        _loss(model(x_part), y_part, "batch").backward()
    assert optimizer.H_counts == {"0": (10, 10), "2": (10, 10)}
    # an unequal split is weighted by the sizes
    single = copy.deepcopy(model)
    single_opt = SINGD(single, T=1, defaults="reference", train_all_parameters=True)
    _loss(single(x), y, "batch").backward()
    for name in ("0", "2"):
        torch.testing.assert_close(
            optimizer.H_Ks[name].to_dense(), single_opt.H_Ks[name].to_dense()
        )
