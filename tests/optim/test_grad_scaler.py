"""Training with a gradient scaler: constant and changing scales, skipped steps."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from singd_opt import SINGD
from tests.optim._singd_helpers import (
    assert_same_parameters,
    batches,
    dense_factors,
    mlp,
    trained_copy,
)


def _train_scaled(
    model: nn.Module, optimizer: SINGD, scaler: torch.amp.GradScaler, data: list
) -> list[float]:
    scales = []
    for x, y in data:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scales.append(scaler.get_scale())
        scaler.update()
    return scales


@pytest.mark.parametrize("growth_interval", [1000, 1], ids=["constant", "changing"])
@pytest.mark.parametrize("T", [1, 2])
def test_grad_scaler_matches_unscaled_training(growth_interval: int, T: int) -> None:
    data = batches(6)
    kwargs = {"T": T, "lr": 0.1, "lr_cov": 0.1}
    expected, expected_opt = trained_copy(mlp(), data, **kwargs)

    model = mlp()
    init_scale = 2.0**10
    optimizer = SINGD(
        model, init_grad_scale=init_scale, **kwargs, defaults="reference", train_all_parameters=True
    )
    scaler = torch.amp.GradScaler(
        "cpu", init_scale=init_scale, growth_factor=3.0, growth_interval=growth_interval
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scales = _train_scaled(model, optimizer, scaler, data)
    assert len(set(scales)) == (1 if growth_interval > 10 else len(data))
    assert_same_parameters(model, expected, rtol=1e-5, atol=1e-6)
    actual, reference = dense_factors(optimizer), dense_factors(expected_opt)
    for key, factor in reference.items():
        torch.testing.assert_close(actual[key], factor, rtol=1e-5, atol=1e-6)


def test_step_with_inf_is_skipped_and_drops_the_curvature() -> None:
    model = mlp()
    optimizer = SINGD(
        model, T=1, init_grad_scale=2.0**8, defaults="reference", train_all_parameters=True
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    _train_scaled(model, optimizer, scaler, batches(2))

    parameters = copy.deepcopy(model)
    factors = {k: v.clone() for k, v in dense_factors(optimizer).items()}
    x, y = batches(1)[0]
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    scaler.scale(loss * float("inf")).backward()
    assert optimizer.H_Ks  # curvature was collected ...
    with pytest.warns(UserWarning, match="non-finite gradients"):
        scaler.step(optimizer)
    scaler.update()
    assert optimizer.H_Ks == {} and optimizer.H_Cs == {}  # ... and dropped
    assert (optimizer.steps, optimizer.skipped_steps) == (2, 1)  # a skipped step does not count
    assert scaler.get_scale() == 2.0**7
    assert_same_parameters(model, parameters)
    for key, factor in dense_factors(optimizer).items():
        assert torch.equal(factor, factors[key])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train_scaled(model, optimizer, scaler, batches(2))
    assert all(p.isfinite().all() for p in model.parameters())


def test_manual_loss_scale_with_set_current_grad_scale() -> None:
    data = batches(4)
    expected, _ = trained_copy(mlp(), data, T=1, lr=0.1)
    model = mlp()
    optimizer = SINGD(
        model, T=1, lr=0.1, init_grad_scale=8.0, defaults="reference", train_all_parameters=True
    )
    for step, (x, y) in enumerate(data):
        scale = 8.0 * 2**step
        optimizer.zero_grad()
        (scale * nn.functional.cross_entropy(model(x), y)).backward()
        optimizer.set_current_grad_scale(scale)
        optimizer.step()
    assert_same_parameters(model, expected, rtol=1e-5, atol=1e-6)


def test_unscaled_gradients_for_clipping() -> None:
    """``scaler.unscale_`` before the step (gradient clipping) with the scale announced."""
    data = batches(4)
    expected, _ = trained_copy(mlp(), data, T=1, lr=0.1)
    model = mlp()
    optimizer = SINGD(
        model, T=1, lr=0.1, init_grad_scale=2.0**6, defaults="reference", train_all_parameters=True
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**6)
    for x, y in data:
        optimizer.zero_grad()
        scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1e6)
        optimizer.set_current_grad_scale(scaler.get_scale())
        scaler.step(optimizer)
        scaler.update()
    assert_same_parameters(model, expected, rtol=1e-5, atol=1e-6)


def test_grad_scale_at_step_zero_without_init_grad_scale_warns() -> None:
    model = mlp()
    optimizer = SINGD(model, T=1, defaults="reference", train_all_parameters=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    with pytest.warns(UserWarning, match="init_grad_scale"):
        _train_scaled(model, optimizer, scaler, batches(1))
