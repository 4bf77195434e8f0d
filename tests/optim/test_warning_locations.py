"""Every warning of the optimizer names the user's line that led to it."""

from __future__ import annotations

import linecache
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn import functional

from singd_opt import SINGD


def _warning_site(trigger: Callable[[], object], match: str) -> str:
    """Run ``trigger``; return the source line the matching warning names."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trigger()
    found = [w for w in caught if match in str(w.message)]
    assert found, f"no warning matching {match!r}: {[str(w.message) for w in caught]}"
    (warning,) = found[:1]
    assert warning.filename == __file__, f"points at {warning.filename}:{warning.lineno}"
    return linecache.getline(warning.filename, warning.lineno).strip()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=generator), torch.randn(8, 2, generator=generator)


def test_constructor_warnings_point_at_the_constructor_call() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    line = _warning_site(lambda: SINGD(model, train_all_parameters=False), "not supported")
    assert "SINGD(model, train_all_parameters=False)" in line
    line = _warning_site(lambda: SINGD(model, kfac_like=True, alpha1=0.5), "kfac_like=True")
    assert "SINGD(model, kfac_like=True, alpha1=0.5)" in line
    wide = nn.Linear(2048, 64)
    line = _warning_site(lambda: SINGD(wide, structures=("dense", "dense")), "keep more than")
    assert 'SINGD(wide, structures=("dense", "dense"))' in line
    params = list(model.parameters())
    line = _warning_site(
        lambda: SINGD(model, params, train_all_parameters=False, warn_unsupported=True),
        "do not belong",
    )
    assert "SINGD(model, params" in line
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    shared = nn.Sequential(first, second)
    line = _warning_site(lambda: SINGD(shared, elementwise_below=0), "shared by layers")
    assert "SINGD(shared, elementwise_below=0)" in line


def test_step_warnings_point_at_the_step_call() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    optimizer = SINGD(model, T=1, elementwise_below=0)
    x, y = _data()

    def nonfinite_step() -> None:
        optimizer.zero_grad()
        functional.mse_loss(model(x * torch.inf), y).backward()
        optimizer.step()

    assert _warning_site(nonfinite_step, "skipping step") == "optimizer.step()"

    other = torch.optim.SGD(model[1].parameters(), lr=1e-3)

    def two_optimizers() -> None:
        for _ in range(4):
            optimizer.zero_grad()
            functional.mse_loss(model(x), y).backward()
            optimizer.step()
            other.step()

    assert _warning_site(two_optimizers, "changed in place") == "optimizer.step()"


def test_unrecorded_layer_warning_points_at_the_step_call() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    optimizer = SINGD(model, T=1, elementwise_below=0)
    x, y = _data()

    def unrecorded_step() -> None:
        # the layer is called outside the forward pass of the optimizer's model
        functional.mse_loss(model[0](x), y).backward()
        optimizer.step()

    assert _warning_site(unrecorded_step, "no curvature was recorded") == "optimizer.step()"


@pytest.mark.parametrize("through_scaler", [False, True])
def test_grad_scale_warnings_point_at_the_user(through_scaler: bool) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    optimizer = SINGD(model, T=1, elementwise_below=0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4)
    x, y = _data()

    def scaled_step() -> None:
        optimizer.zero_grad()
        scaler.scale(functional.mse_loss(model(x), y)).backward()
        if through_scaler:
            scaler.step(optimizer)
        else:
            optimizer.set_current_grad_scale(scaler.get_scale())

    line = _warning_site(scaled_step, "init_grad_scale")
    expected = "scaler.step(optimizer)" if through_scaler else "optimizer.set_current_grad_scale"
    assert line.startswith(expected)
