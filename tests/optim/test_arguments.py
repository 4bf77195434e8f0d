"""Construction: supported structures, parameter selection and groups, bad input."""

from __future__ import annotations

import copy
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import structmat
from singd_opt import SINGD
from tests.optim._singd_helpers import batches, mlp, train

STANDARD = [
    "dense",
    "diagonal",
    "block30diagonal",
    "hierarchical15_15",
    "triltoeplitz",
    "triutoeplitz",
]


def test_supported_structures_mapping() -> None:
    assert list(SINGD.SUPPORTED_STRUCTURES.keys()) == STANDARD
    x = torch.rand(10, 10)
    x = (x + x.T) / 2
    for name, cls in SINGD.SUPPORTED_STRUCTURES.items():
        assert cls is structmat.get_structure(name)
        dense = cls.from_dense(x).to_dense()
        assert dense.shape == (10, 10)
    assert "nope" not in SINGD.SUPPORTED_STRUCTURES


@pytest.mark.parametrize(
    "structures",
    [("block4diagonal", "hierarchical2_3"), ("tril", "triu"), ("triltopleftdiag", "dense")],
)
def test_other_registered_structures_are_accepted(structures: tuple[str, str]) -> None:
    model = mlp()
    optimizer = SINGD(
        model, structures=structures, T=1, defaults="reference", train_all_parameters=True
    )
    train(model, optimizer, batches(2))
    for K in optimizer.Ks.values():
        assert type(K) is structmat.get_structure(structures[0])
    for C in optimizer.Cs.values():
        assert type(C) is structmat.get_structure(structures[1])


def test_layers_and_dimensions() -> None:
    model = mlp()
    optimizer = SINGD(model, defaults="reference", train_all_parameters=True)
    assert list(optimizer.module_names.values()) == ["0", "2", "4"]
    dims = {name: (K.shape[0], optimizer.Cs[name].shape[0]) for name, K in optimizer.Ks.items()}
    assert dims == {"0": (7, 5), "2": (5, 4), "4": (5, 3)}
    assert SINGD.preconditioner_dims(model[0]) == (7, 5)
    conv = nn.Conv2d(4, 6, (3, 2), groups=2)
    assert SINGD.preconditioner_dims(conv) == (2 * 3 * 2 + 1, 6)
    assert optimizer.m_Ks.keys() == optimizer.Ks.keys()


def test_param_groups_with_own_hyperparameters_and_structures() -> None:
    model = mlp()
    before = copy.deepcopy(model)
    groups = [
        {"params": model[0].parameters(), "structures": ("diagonal", "dense"), "lr": 0.0},
        {"params": list(model[2].parameters()) + list(model[4].parameters()), "T": 2},
    ]
    optimizer = SINGD(
        model,
        groups,
        lr=0.1,
        structures=("dense", "triltoeplitz"),
        T=1,
        defaults="reference",
        train_all_parameters=True,
    )
    assert isinstance(optimizer.Ks["0"], structmat.get_structure("diagonal"))
    assert isinstance(optimizer.Cs["0"], structmat.get_structure("dense"))
    assert isinstance(optimizer.Cs["4"], structmat.get_structure("triltoeplitz"))
    assert [g["T"] for g in optimizer.param_groups] == [1, 2]
    train(model, optimizer, batches(3))
    # lr = 0 in group 0: the first layer keeps its parameters but its K still learns
    assert torch.equal(model[0].weight, before[0].weight)
    assert not torch.equal(optimizer.Ks["0"].to_dense(), torch.eye(7))
    assert not torch.equal(model[2].weight, before[2].weight)


def test_params_select_layers_and_parameters() -> None:
    model = mlp()
    before = copy.deepcopy(model)
    # the first layer's weight without its bias, the last layer's bias without its weight
    optimizer = SINGD(
        model,
        [model[0].weight, model[4].bias],
        T=1,
        lr=0.1,
        defaults="reference",
        train_all_parameters=True,
    )
    assert set(optimizer.Ks) == {"0", "4"}
    assert optimizer.Ks["0"].shape[0] == 6  # no bias column
    assert optimizer.Ks["4"].shape[0] == 1  # bias only
    train(model, optimizer, batches(2))
    assert not torch.equal(model[0].weight, before[0].weight)
    assert torch.equal(model[0].bias, before[0].bias)
    assert torch.equal(model[2].weight, before[2].weight)
    assert torch.equal(model[4].weight, before[4].weight)
    assert not torch.equal(model[4].bias, before[4].bias)


def test_frozen_bias_is_left_alone() -> None:
    model = mlp()
    model[0].bias.requires_grad_(False)
    before = model[0].bias.clone()
    optimizer = SINGD(model, T=1, defaults="reference", train_all_parameters=True)
    assert optimizer.Ks["0"].shape[0] == 6
    train(model, optimizer, batches(2))
    assert torch.equal(model[0].bias, before)


def test_reference_mode_warns_about_unsupported_layers_and_leaves_them() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    with pytest.warns(UserWarning, match=r"layer '1' \(LayerNorm\) is not supported"):
        optimizer = SINGD(model, T=1, train_all_parameters=False, defaults="reference")
    norm = copy.deepcopy(model[1])
    weight = model[0].weight.clone()
    train(model, optimizer, batches(3))
    assert torch.equal(model[1].weight, norm.weight) and torch.equal(model[1].bias, norm.bias)
    assert not torch.equal(model[0].weight, weight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SINGD(
            copy.deepcopy(model),
            warn_unsupported=False,
            train_all_parameters=False,
            defaults="reference",
        )
    with pytest.warns(UserWarning, match="2 of the given parameters do not belong"):
        SINGD(model, list(model.parameters()), train_all_parameters=False, defaults="reference")


def test_every_parameter_is_trained_by_default_without_warnings() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer = SINGD(model, T=1, defaults="reference", train_all_parameters=True)
        before = copy.deepcopy(model)
        train(model, optimizer, batches(3))
    for param, old in zip(model.parameters(), before.parameters(), strict=True):
        assert not torch.equal(param, old)
    kinds = {block.name: block.kind for block in optimizer.blocks}
    assert kinds == {
        "0": "kronecker",
        "1.weight": "elementwise",
        "1.bias": "elementwise",
        "2": "kronecker",
    }


def test_kfac_like_forces_alpha1_to_zero() -> None:
    model = mlp()
    with pytest.warns(UserWarning, match="kfac_like=True"):
        optimizer = SINGD(
            model, kfac_like=True, alpha1=0.5, defaults="reference", train_all_parameters=True
        )
    assert optimizer.param_groups[0]["alpha1"] == 0.0
    assert optimizer.m_Ks == {} and optimizer.m_Cs == {}
    train(model, optimizer, batches(2))
    assert optimizer.m_Ks == {}


def test_no_momenta_without_alpha1() -> None:
    optimizer = SINGD(mlp(), alpha1=0.0, defaults="reference", train_all_parameters=True)
    assert optimizer.m_Ks == {} and optimizer.m_Cs == {}


# ------------------------------------------------------------------ bad input
BAD_ARGUMENTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"structures": ("dense", "nope")}, ValueError, r"structures.*'nope'.*dense.*diagonal"),
    ({"structures": "dense"}, TypeError, "structures"),
    ({"structures": ("dense",)}, ValueError, "structures"),
    ({"lr": -0.1}, ValueError, "lr"),
    ({"lr": float("nan")}, ValueError, "lr"),
    ({"lr_cov": -1e-3}, ValueError, "lr_cov"),
    ({"damping": -1.0}, ValueError, "damping"),
    ({"momentum": -0.9}, ValueError, "momentum"),
    ({"weight_decay": -1e-4}, ValueError, "weight_decay"),
    ({"alpha1": -0.5}, ValueError, "alpha1"),
    ({"alpha1": 1.5}, ValueError, "alpha1"),
    ({"T": 0}, ValueError, "T"),
    ({"T": 2.5}, TypeError, "T"),
    ({"kfac_approx": "average"}, ValueError, r"kfac_approx.*expand.*reduce"),
    ({"loss_average": "mean"}, ValueError, r"loss_average.*batch\+sequence"),
    ({"preconditioner_dtype": (torch.int32, None)}, TypeError, "preconditioner_dtype"),
    ({"preconditioner_dtype": torch.float32}, TypeError, "preconditioner_dtype"),
    ({"kfac_like": "yes"}, TypeError, "kfac_like"),
    ({"normalize_lr_cov": 1}, TypeError, "normalize_lr_cov"),
    ({"normalize_lr_cov": "frobenius"}, ValueError, r"normalize_lr_cov.*'spectral'"),
    ({"warn_unsupported": None}, TypeError, "warn_unsupported"),
    ({"init_grad_scale": 0.0}, ValueError, "init_grad_scale"),
    ({"lr": "0.1"}, TypeError, "lr"),
    ({"momentum": 1.5}, ValueError, r"momentum must lie in \[0, 1\)"),
    ({"momentum": 1.0}, ValueError, r"momentum must lie in \[0, 1\)"),
    ({"elementwise_beta2": 1.0}, ValueError, r"elementwise_beta2 must lie in \[0, 1\)"),
    ({"elementwise_eps": 0.0}, ValueError, "elementwise_eps must be finite and > 0"),
    ({"elementwise_lr": -1.0}, ValueError, "elementwise_lr"),
    ({"max_update_rms": 0.0}, ValueError, "max_update_rms must be finite and > 0"),
    ({"train_all_parameters": "no"}, TypeError, "train_all_parameters"),
    ({"skip_nonfinite": 0}, TypeError, "skip_nonfinite"),
    ({"distribute": "shard"}, ValueError, r"distribute must be one of \('replicate', 'split'\)"),
    ({"average_gradients": "auto"}, TypeError, "average_gradients"),
]


def _assert_untouched(model: nn.Module, reference: nn.Module) -> None:
    for module in model.modules():
        assert not module._forward_hooks, "a hook was installed"
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_ARGUMENTS)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    model = mlp()
    reference = copy.deepcopy(model)
    with pytest.raises(error, match=match):
        SINGD(model, **{"defaults": "reference", "train_all_parameters": True, **kwargs})
    _assert_untouched(model, reference)


@pytest.mark.parametrize(("kwargs", "error", "match"), BAD_ARGUMENTS[:16])
def test_bad_group_hyperparameters(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    model = mlp()
    reference = copy.deepcopy(model)
    groups = [{"params": model[0].parameters()}, {"params": model[2].parameters(), **kwargs}]
    snapshot = copy.copy(groups[1])
    with pytest.raises(error, match=match) as info:
        SINGD(model, groups, defaults="reference", train_all_parameters=True)
    assert "parameter group 1" in str(info.value)
    assert groups[1] == snapshot
    _assert_untouched(model, reference)


def test_weight_and_bias_in_different_groups() -> None:
    model = mlp()
    reference = copy.deepcopy(model)
    groups = [{"params": [model[0].weight]}, {"params": [model[0].bias], "lr": 0.5}]
    with pytest.raises(ValueError, match=r"parameters of layer '0'.*different parameter groups"):
        SINGD(model, groups, defaults="reference", train_all_parameters=True)
    _assert_untouched(model, reference)


def test_wrapped_models_are_rejected() -> None:
    model = mlp()
    reference = copy.deepcopy(model)
    with pytest.raises(TypeError, match="DataParallel"):
        SINGD(nn.DataParallel(model), defaults="reference", train_all_parameters=True)
    _assert_untouched(model, reference)
    with pytest.raises(TypeError, match=r"model must be .*pass SINGD\(model\)"):
        SINGD(model.parameters())  # type: ignore[arg-type]


def test_parameter_shared_as_different_maps() -> None:
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight  # same weight, different biases: not one map
    model = nn.Sequential(first, second)
    with pytest.raises(ValueError, match="shared by layers"):
        SINGD(model, train_all_parameters=False, defaults="reference")
    with pytest.warns(UserWarning, match="shared by layers.*element-wise"):
        optimizer = SINGD(model, defaults="reference", train_all_parameters=True)
    kinds = {block.name: block.kind for block in optimizer.blocks}
    assert kinds == {"0.weight": "elementwise", "0.bias": "elementwise", "1.bias": "elementwise"}


def test_weight_shared_by_the_same_map_is_one_block() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, nn.Tanh(), layer)  # one module called twice
    tied = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    tied[2].weight, tied[2].bias = tied[0].weight, tied[0].bias
    tied.load_state_dict(model.state_dict())
    data = [(torch.randn(8, 4), torch.randint(0, 4, (8,))) for _ in range(3)]
    first, second = (
        SINGD(model, T=1, lr=0.1, defaults="reference", train_all_parameters=True),
        SINGD(tied, T=1, lr=0.1, defaults="reference", train_all_parameters=True),
    )
    assert [b.name for b in second.blocks] == ["0"]
    train(model, first, data)
    train(tied, second, data)
    assert torch.equal(model[0].weight, tied[0].weight)


def test_param_groups_cannot_be_added_later() -> None:
    model = mlp()
    optimizer = SINGD(
        model, [{"params": model[0].parameters()}], defaults="reference", train_all_parameters=True
    )
    with pytest.raises(RuntimeError, match="constructor"):
        optimizer.add_param_group({"params": model[2].parameters()})
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("case", ["parameter-free", "frozen", "empty-list", "empty-groups"])
def test_nothing_to_train_is_an_error(case: str) -> None:
    model = nn.Sequential(nn.ReLU(), nn.Flatten()) if case == "parameter-free" else mlp()
    if case == "frozen":
        model.requires_grad_(False)
    params = {"empty-list": [], "empty-groups": [{"params": []}]}.get(case)
    with pytest.raises(ValueError, match="no parameter to train"):
        SINGD(model, params, defaults="reference", train_all_parameters=True)
    for module in model.modules():
        assert not module._forward_hooks


@pytest.mark.parametrize("value", ["Kronecker", "adam", None])
def test_invalid_tied_embeddings_names_the_choices(value: object) -> None:
    expected = r"tied_embeddings must be one of 'elementwise', 'kronecker'"
    with pytest.raises(ValueError, match=expected):
        SINGD(nn.Linear(3, 2), tied_embeddings=value)  # type: ignore[arg-type]
