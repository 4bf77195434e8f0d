"""Linear maps found by what the forward pass computes, however the weight is reached."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional
from torch.nn.functional import linear as linear_by_name

from singd_opt import SINGD
from singd_opt.map_calls import MapCallMode, UntrackedParameters

DTYPE = torch.float64
CONFIG = {
    "lr": 0.1,
    "lr_cov": 0.1,
    "damping": 1e-3,
    "T": 2,
    "momentum": 0.5,
    "elementwise_below": 0,
}


def _addmm(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight).view(*x.shape[:-1], -1)


# (weight layout, bias used, forward(x, weight, bias)); "in_out" weights are (d_in, d_out)
USES: dict[str, tuple[str, bool, Callable[[Tensor, Tensor, Tensor], Tensor]]] = {
    "linear by name": ("out_in", True, linear_by_name),
    "x @ W.T": ("out_in", False, lambda x, w, b: x @ w.T),
    "x @ W.T + b": ("out_in", True, lambda x, w, b: x @ w.T + b),
    "torch.matmul(x, W.t())": ("out_in", False, lambda x, w, b: torch.matmul(x, w.t())),
    "x @ P": ("in_out", False, lambda x, w, b: x @ w),
    "torch.addmm (Conv1D)": ("in_out", True, _addmm),
    "torch.mm": ("in_out", False, lambda x, w, b: torch.mm(x.flatten(0, 1), w).view(4, 6, 3)),
    "W @ x^T": ("out_in", False, lambda x, w, b: (w @ x.mT).mT),
    "cast, then linear": ("out_in", True, lambda x, w, b: functional.linear(x, w.to(DTYPE), b)),
}


class Custom(nn.Module):
    def __init__(
        self, layout: str, use: Callable[[Tensor, Tensor, Tensor], Tensor], with_bias: bool
    ) -> None:
        super().__init__()
        shape = (3, 5) if layout == "out_in" else (5, 3)
        self.weight = nn.Parameter(torch.randn(*shape, dtype=DTYPE))
        self.bias = nn.Parameter(torch.randn(3, dtype=DTYPE)) if with_bias else None
        self.layout, self.use = layout, use

    def forward(self, x: Tensor) -> Tensor:
        return self.use(x, self.weight, self.bias)


class Model(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.out = nn.Linear(3, 2, dtype=DTYPE)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.tanh(self.inner(x)))


def _twin(model: Model, with_bias: bool) -> Model:
    inner = model.inner
    weight = inner.weight if inner.layout == "out_in" else inner.weight.T
    linear = nn.Linear(5, 3, bias=with_bias, dtype=DTYPE)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if with_bias:
            linear.bias.copy_(inner.bias)
    twin = Model(linear)
    twin.out.load_state_dict(model.out.state_dict())
    return twin


@pytest.mark.parametrize("use", sorted(USES))
def test_every_way_of_using_a_weight_equals_a_linear_layer(use: str) -> None:
    layout, with_bias, forward = USES[use]
    torch.manual_seed(0)
    model = Model(Custom(layout, forward, with_bias))
    twin = _twin(model, with_bias)
    optimizer = SINGD(model, **CONFIG)
    twin_optimizer = SINGD(twin, **CONFIG)
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.randn(4, 6, 5, dtype=DTYPE, generator=generator)
        y = torch.randn(4, 6, 2, dtype=DTYPE, generator=generator)
        for net, opt in ((model, optimizer), (twin, twin_optimizer)):
            opt.zero_grad()
            functional.mse_loss(net(x), y).backward()
            opt.step()
    weight = model.inner.weight if layout == "out_in" else model.inner.weight.T
    torch.testing.assert_close(weight, twin.inner.weight, rtol=1e-12, atol=1e-12)
    if with_bias:
        torch.testing.assert_close(model.inner.bias, twin.inner.bias, rtol=1e-12, atol=1e-12)
    K = optimizer.Ks["inner.weight"].to_dense()
    torch.testing.assert_close(K, twin_optimizer.Ks["inner"].to_dense(), rtol=1e-12, atol=1e-12)


def test_a_weight_used_element_wise_falls_back_with_a_warning_and_stops_recording() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(4, 5))

        def forward(self, x: Tensor) -> Tensor:
            return (x * self.scale).sum(-1)

    model = Scaled()
    optimizer = SINGD(model, T=1, elementwise_below=0)
    assert "forward" in model.__dict__  # the recording switch
    with pytest.warns(UserWarning, match=r"'scale' is used by Tensor.mul.*element-wise"):
        model(torch.randn(2, 4, 5)).sum().backward()
    optimizer.step()
    assert [block.kind for block in optimizer.blocks] == ["elementwise"]
    assert "forward" not in model.__dict__  # nothing left to record: the switch is gone
    assert not model._forward_pre_hooks and not model._forward_hooks


def test_einsum_with_a_batch_dimension_on_the_weight_falls_back() -> None:
    class Batched(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(2, 5, 3))

        def forward(self, x: Tensor) -> Tensor:
            return torch.einsum("bi,hio->bho", x, self.weight)

    model = Batched()
    optimizer = SINGD(model, T=1, elementwise_below=0)
    with pytest.warns(UserWarning, match=r"'weight' is used by torch.einsum"):
        model(torch.randn(4, 5)).square().sum().backward()
    optimizer.step()
    assert optimizer.blocks[0].kind == "elementwise"


def test_recording_does_not_replace_torch_functions() -> None:
    seen: list[bool] = []
    original = functional.linear

    class Probe(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            seen.append(functional.linear is original)
            return self.layer(x)

    model = Probe()
    optimizer = SINGD(model, T=1, elementwise_below=0)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    assert seen == [True]
    assert optimizer.H_Ks == {} and optimizer.Ks["layer"].shape == (5, 5)


def test_recording_is_off_between_recording_steps() -> None:
    calls: list[int] = []
    model = nn.Sequential(nn.Linear(4, 3))
    optimizer = SINGD(model, T=3, elementwise_below=0)
    block = optimizer.blocks[0]
    record = block.record

    def counted(*args: object, **kwargs: object) -> None:
        calls.append(1)
        record(*args, **kwargs)

    block.record = counted
    for _ in range(6):
        optimizer.zero_grad()
        model(torch.randn(2, 4)).sum().backward()
        optimizer.step()
    assert len(calls) == 2  # steps 0 and 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            model(torch.randn(2, 4))


class _Target:
    """A map target that keeps what it is handed."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self.others: list[str] = []

    def capture(self, call: object) -> None:
        self.calls.append(call)

    def other_use(self, name: str) -> None:
        self.others.append(name)


def test_an_untracked_parameter_costs_one_lookup_across_passes() -> None:
    """A layer norm's parameters are looked up once, not on every pass."""
    layer, norm = nn.Linear(4, 3), nn.LayerNorm(3)
    target, lookups = _Target(), []

    def lookup() -> list[tuple[Tensor, _Target]]:
        lookups.append(1)
        return [(layer.weight, target)]

    untracked = UntrackedParameters()
    for _ in range(3):
        with MapCallMode(lookup, untracked=untracked):
            norm(layer(torch.randn(2, 4)))
    # one lookup per pass to start it, one more for the first sight of each
    # untracked parameter (norm.weight, norm.bias, layer.bias) in the first pass
    assert len(lookups) == 3 + 3
    assert len(target.calls) == 3 and target.others == []


class _SwappableWeight:
    """Two layers; the tracked weight is ``self.tracked`` (first ``layer``'s), swappable."""

    def __init__(self) -> None:
        self.layer, self.other = nn.Linear(4, 3), nn.Linear(3, 3)
        self.target, self.untracked = _Target(), UntrackedParameters()
        self.tracked: Tensor = self.layer.weight

    def mode(self) -> MapCallMode:
        return MapCallMode(lambda: [(self.tracked, self.target)], untracked=self.untracked)

    def first_pass(self) -> None:
        """One pass: ``layer``'s call captured, ``other.weight`` remembered as untracked."""
        with self.mode():
            self.other(self.layer(torch.randn(2, 4)))
        assert len(self.target.calls) == 1 and self.untracked.remembers(self.other.weight)


def test_a_tensor_swapped_in_during_a_pass_is_still_found() -> None:
    """The tracked tensor changes during the pass (as FSDP2 does): its call is captured."""
    case = _SwappableWeight()
    case.first_pass()
    swapped = nn.Parameter(torch.randn(3, 3))
    with case.mode():
        hidden = case.layer(torch.randn(2, 4))  # starts with the old tracked tensor
        case.tracked = swapped  # swapped in during the pass
        functional.linear(hidden, swapped)
    assert len(case.target.calls) == 3  # layer's call and the swapped weight's call
    assert not case.untracked.remembers(case.other.weight)  # the tracked tensors changed


def test_a_parameter_once_untracked_is_found_when_it_becomes_tracked() -> None:
    """A weight replaced between passes by a parameter seen untracked before is recorded."""
    case = _SwappableWeight()
    case.first_pass()
    case.tracked = case.other.weight  # the tracked weight is now other's
    with case.mode():
        case.other(case.layer(torch.randn(2, 4)))
    assert len(case.target.calls) == 2 and case.target.calls[-1].output.shape == (2, 3)
    assert not case.untracked.remembers(case.other.weight)
