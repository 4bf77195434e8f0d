"""The two sets of defaults: recommended (the constructor's) and the reference's."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from singd_opt import SINGD
from singd_opt.default_sets import DEFAULT_SETS, RECOMMENDED, REFERENCE, SETTINGS


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 2))


def group_values(optimizer: SINGD) -> dict[str, object]:
    group = optimizer.param_groups[0]
    return {key: group[key] for key in SETTINGS if key != "train_all_parameters"}


@pytest.mark.parametrize("name", ["recommended", "reference"])
def test_every_unset_argument_takes_the_set_value(name: str) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer = SINGD(model(), defaults=name)
    expected = {k: v for k, v in DEFAULT_SETS[name].items() if k != "train_all_parameters"}
    assert group_values(optimizer) == expected
    # the reference trains only the Linear layers (and warns about the layer norm)
    trains_all = DEFAULT_SETS[name]["train_all_parameters"]
    assert len(optimizer.param_groups[0]["params"]) == (6 if trains_all else 4)
    assert (
        any("LayerNorm" in str(w.message) or "not be trained" in str(w.message) for w in caught)
        != trains_all
    )


def test_the_constructor_defaults_are_the_recommended_set() -> None:
    assert group_values(SINGD(model())) == {
        k: v for k, v in RECOMMENDED.items() if k != "train_all_parameters"
    }


@pytest.mark.parametrize("name", ["recommended", "reference"])
def test_explicit_arguments_win(name: str) -> None:
    optimizer = SINGD(
        model(),
        None,
        0.02,
        momentum=0.5,
        T=3,
        structures=("diagonal", "dense"),
        train_all_parameters=True,
        defaults=name,
    )
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["T"]) == (0.02, 0.5, 3)
    assert group["structures"] == ("diagonal", "dense")
    assert len(group["params"]) == 6
    assert group["damping"] == DEFAULT_SETS[name]["damping"]


def test_reference_set_matches_singd_0_0_5_signature() -> None:
    """The reference's constructor defaults, read from the installed package."""
    singd = pytest.importorskip("singd.optim.optimizer")
    import inspect

    parameters = inspect.signature(singd.SINGD.__init__).parameters
    for key, value in REFERENCE.items():
        if key in parameters:
            assert parameters[key].default == value, key
    assert "train_all_parameters" not in parameters  # the reference trains Linear/Conv only
    assert REFERENCE["train_all_parameters"] is False


@pytest.mark.parametrize("value", ["Reference", "adamw", None, 1])
def test_invalid_defaults_name(value: object) -> None:
    with pytest.raises(ValueError, match="defaults must be one of 'recommended', 'reference'"):
        SINGD(model(), defaults=value)  # type: ignore[arg-type]
