"""Checkpoints: plain contents (``weights_only`` loading) and bitwise-exact resumption."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from singd_opt import SINGD
from tests.optim._singd_helpers import assert_same_parameters, batches, dense_factors, mlp

CONFIGS: list[dict[str, Any]] = [
    {"T": 1},
    {"T": 3, "structures": ("diagonal", "dense"), "weight_decay": 0.01},
    {"T": 2, "kfac_like": True, "momentum": 0.0},
    {"T": 3, "structures": ("triltoeplitz", "block3diagonal"), "normalize_lr_cov": True},
]


def _micro_batch_step(
    model: nn.Module, optimizer: SINGD, x: Tensor, y: Tensor, scale: float, finish: bool = True
) -> None:
    """Two micro-batches with a (manual) loss scale, then (optionally) the step."""
    optimizer.zero_grad()
    for x_part, y_part in zip(x.chunk(2), y.chunk(2), strict=True):
        (scale * nn.functional.cross_entropy(model(x_part), y_part) / 2).backward()
    optimizer.set_current_grad_scale(scale)
    if finish:
        optimizer.step()


def _scale(step: int) -> float:
    return 4.0 * 2 ** (step % 3)


def _make(config: dict[str, Any]) -> tuple[nn.Module, SINGD]:
    model = mlp()
    kwargs = {"lr": 0.1, "lr_cov": 0.05, "init_grad_scale": 4.0, **config}
    if kwargs.get("kfac_like"):
        kwargs["alpha1"] = 0.0
    return model, SINGD(model, **{"defaults": "reference", "train_all_parameters": True, **kwargs})


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("save_at", [4, 6])
def test_resume_is_bitwise_identical(config: dict[str, Any], save_at: int, tmp_path: Path) -> None:
    data = batches(9)
    model, optimizer = _make(config)
    for step, (x, y) in enumerate(data):
        _micro_batch_step(model, optimizer, x, y, _scale(step))
    uninterrupted = copy.deepcopy(model)
    expected_factors = dense_factors(optimizer)

    model, optimizer = _make(config)
    for step, (x, y) in enumerate(data[:save_at]):
        _micro_batch_step(model, optimizer, x, y, _scale(step))
    torch.save({"model": model.state_dict(), "opt": optimizer.state_dict()}, tmp_path / "ckpt.pt")

    checkpoint = torch.load(tmp_path / "ckpt.pt")  # weights_only=True by default
    resumed_model, resumed_opt = _make(config)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    assert resumed_opt.steps == save_at
    for step, (x, y) in enumerate(data[save_at:], start=save_at):
        _micro_batch_step(resumed_model, resumed_opt, x, y, _scale(step))
    assert_same_parameters(resumed_model, uninterrupted)
    for key, factor in dense_factors(resumed_opt).items():
        assert torch.equal(factor, expected_factors[key]), key


@pytest.mark.parametrize("config", CONFIGS[1:])
def test_resume_with_pending_curvature(config: dict[str, Any], tmp_path: Path) -> None:
    """Save between backward and step of an update step (curvature collected, not used)."""
    data = batches(8)
    model, optimizer = _make(config)
    for step, (x, y) in enumerate(data):
        _micro_batch_step(model, optimizer, x, y, _scale(step))
    uninterrupted = copy.deepcopy(model)

    model, optimizer = _make(config)
    save_at = 6  # an update step for T in {1, 2, 3}
    for step, (x, y) in enumerate(data[:save_at]):
        _micro_batch_step(model, optimizer, x, y, _scale(step))
    x, y = data[save_at]
    _micro_batch_step(model, optimizer, x, y, _scale(save_at), finish=False)
    assert optimizer.H_Ks and optimizer.H_counts
    grads = [p.grad.clone() for p in model.parameters()]
    torch.save(
        {"model": model.state_dict(), "opt": optimizer.state_dict(), "grads": grads},
        tmp_path / "c.pt",
    )

    checkpoint = torch.load(tmp_path / "c.pt")
    resumed_model, resumed_opt = _make(config)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["opt"])
    for p, grad in zip(resumed_model.parameters(), checkpoint["grads"], strict=True):
        p.grad = grad
    resumed_opt.step()
    for step, (x, y) in enumerate(data[save_at + 1 :], start=save_at + 1):
        _micro_batch_step(resumed_model, resumed_opt, x, y, _scale(step))
    assert_same_parameters(resumed_model, uninterrupted)


def test_state_dict_holds_only_plain_values() -> None:
    model, optimizer = _make({"T": 1, "lr_cov": lambda step: 0.01})
    for step, (x, y) in enumerate(batches(2)):
        _micro_batch_step(model, optimizer, x, y, _scale(step))
    state = optimizer.state_dict()

    def check(value: object) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                assert isinstance(key, str | int)
                check(item)
        elif isinstance(value, list | tuple):
            for item in value:
                check(item)
        else:
            assert value is None or isinstance(
                value, Tensor | str | int | float | bool | torch.dtype
            )

    check(state)
    assert state["singd"]["blocks"]["0"]["K"]["structure"] == "dense"
    assert state["param_groups"][0]["lr_cov"] == "<callable>"
    assert callable(optimizer.param_groups[0]["lr_cov"])
    # loading keeps this optimizer's callable
    _, other = _make({"T": 1, "lr_cov": lambda step: 0.01})
    other.load_state_dict(state)
    assert callable(other.param_groups[0]["lr_cov"])
    with pytest.raises(ValueError, match="callable lr_cov"):
        _make({"T": 1})[1].load_state_dict(state)


def test_bad_state_dict_changes_nothing() -> None:
    model, optimizer = _make({"T": 1})
    for step, (x, y) in enumerate(batches(2)):
        _micro_batch_step(model, optimizer, x, y, _scale(step))
    fresh_model, fresh = _make({"T": 1})
    before = copy.deepcopy(fresh.state_dict())

    def blocks(state: dict) -> dict:
        return state["singd"]["blocks"]

    broken = copy.deepcopy(optimizer.state_dict())
    del blocks(broken)["0"]["K"]
    with pytest.raises(ValueError, match="block '0' has no entry 'K'"):
        fresh.load_state_dict(broken)
    missing_block = copy.deepcopy(optimizer.state_dict())
    del blocks(missing_block)["2"]
    with pytest.raises(ValueError, match="blocks"):
        fresh.load_state_dict(missing_block)
    wrong_shape = copy.deepcopy(optimizer.state_dict())
    blocks(wrong_shape)["0"]["C"] = {"structure": "dense", "tensors": {"matrix": torch.eye(3)}}
    with pytest.raises(ValueError, match="shape"):
        fresh.load_state_dict(wrong_shape)
    unknown = copy.deepcopy(optimizer.state_dict())
    blocks(unknown)["0"]["K"] = {"structure": "nope", "tensors": {"matrix": torch.eye(7)}}
    with pytest.raises(ValueError, match="unknown structure"):
        fresh.load_state_dict(unknown)
    other_structure = copy.deepcopy(optimizer.state_dict())
    blocks(other_structure)["0"]["K"] = {
        "structure": "diagonal",
        "tensors": {"diagonal": torch.ones(7)},
    }
    with pytest.raises(ValueError, match=r"structure 'diagonal'.*uses 'dense'"):
        fresh.load_state_dict(other_structure)
    saved_diagonal = _make({"T": 1, "structures": ("diagonal", "dense")})[1].state_dict()
    with pytest.raises(ValueError, match=r"saved with structures \('diagonal', 'dense'\)"):
        fresh.load_state_dict(saved_diagonal)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict(torch.optim.SGD(fresh_model.parameters(), lr=0.1).state_dict())

    after = fresh.state_dict()
    assert after["singd"]["steps"] == before["singd"]["steps"] == 0
    assert after["param_groups"] == before["param_groups"]
    for name, entry in blocks(before).items():
        for key, matrix in entry.items():
            if isinstance(matrix, dict):
                for tname, tensor in matrix["tensors"].items():
                    assert torch.equal(blocks(after)[name][key]["tensors"][tname], tensor)


def test_a_checkpoint_loads_across_the_compile_wrapper() -> None:
    """Blocks are named after the bare model, with or without ``torch.compile``'s wrapper."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    optimizer = SINGD(model, T=1, elementwise_below=0)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(3, 4)).square().sum().backward()
        optimizer.step()
    state = optimizer.state_dict()
    copy_ = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
    compiled = torch.compile(copy_, backend="eager")
    resumed = SINGD(compiled, T=1, elementwise_below=0)
    assert [b.name for b in resumed.blocks] == [b.name for b in optimizer.blocks]
    resumed.load_state_dict(state)
    assert resumed.steps == 2
    for name, K in optimizer.Ks.items():
        torch.testing.assert_close(resumed.Ks[name].to_dense(), K.to_dense())
    # a state whose block names carry a wrapper's prefix loads as well
    prefixed = copy.deepcopy(state)
    entry = next(v for v in prefixed.values() if isinstance(v, dict) and "blocks" in v)
    entry["blocks"] = {f"_orig_mod.{name}": value for name, value in entry["blocks"].items()}
    again = SINGD(
        nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)), T=1, elementwise_below=0
    )
    again.load_state_dict(prefixed)
    for name, C in optimizer.Cs.items():
        torch.testing.assert_close(again.Cs[name].to_dense(), C.to_dense())


def _tensors(value: object) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


def _load_in_place(live: object, saved: object) -> object:
    """``saved`` loaded the way ``torch.distributed.checkpoint`` loads: into ``live``.

    Each tensor of ``saved`` is copied into the tensor at the same place of ``live``
    (in place, outside inference mode); every other value is taken from ``saved``.
    """
    if isinstance(saved, Tensor):
        assert isinstance(live, Tensor)
        assert not live.is_inference()
        return live.copy_(saved)
    if not _tensors(saved):  # numbers, strings, step-keyed scales: as saved
        return saved
    if isinstance(saved, dict):
        assert isinstance(live, dict) and live.keys() == saved.keys()
        return {key: _load_in_place(live[key], value) for key, value in saved.items()}
    if isinstance(saved, list | tuple):
        assert isinstance(live, list | tuple) and len(live) == len(saved)
        return type(saved)(_load_in_place(a, b) for a, b in zip(live, saved, strict=True))
    return saved


@pytest.mark.parametrize("defaults", ["recommended", "reference"])
def test_a_loader_may_write_into_the_state_dict_in_place(defaults: str) -> None:
    """As ``torch.distributed.checkpoint`` does: fill the tensors of a live state dict.

    The step computes in inference mode; the state dict's tensors must still accept
    in-place writes outside it, and resuming from them must continue bitwise.
    """
    data = batches(7)
    config = {"defaults": defaults, "lr": 0.05, "elementwise_below": 0}
    torch.manual_seed(0)
    model = mlp()
    start = copy.deepcopy(model)
    optimizer = SINGD(model, **config)

    def train(net: nn.Module, opt: SINGD, part: list[tuple[Tensor, Tensor]]) -> None:
        for x, y in part:
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

    train(model, optimizer, data)
    resumed = copy.deepcopy(start)
    resumed_opt = SINGD(resumed, **config)
    train(resumed, resumed_opt, data[:4])
    saved = copy.deepcopy(resumed_opt.state_dict())
    params = copy.deepcopy(resumed.state_dict())
    train(resumed, resumed_opt, data[4:])  # moved on: loading must bring the values back
    loaded = _load_in_place(resumed_opt.state_dict(), saved)
    resumed.load_state_dict(params)
    resumed_opt.load_state_dict(loaded)  # type: ignore[arg-type]
    train(resumed, resumed_opt, data[4:])
    assert_same_parameters(resumed, model)
