"""Training features: schedulers, lr_cov, closures, in-place activations, robustness."""

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
    train,
    trained_copy,
)


def test_lr_scheduler_drives_the_parameter_learning_rate() -> None:
    model = mlp()
    optimizer = SINGD(model, lr=0.1, T=1, defaults="reference", train_all_parameters=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda epoch: 1.0 if epoch < 2 else 0.0
    )
    data = batches(4)
    snapshots = []
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
        snapshots.append(copy.deepcopy(model))
    assert optimizer.param_groups[0]["lr"] == 0.0
    assert not torch.equal(snapshots[0][0].weight, snapshots[1][0].weight)
    assert_same_parameters(snapshots[1], snapshots[3])  # lr 0 from the third step on

    model = mlp()
    optimizer = SINGD(model, lr=0.1, T=1, defaults="reference", train_all_parameters=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    for x, y in data:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**4)


def test_callable_lr_cov_gets_the_step_number() -> None:
    calls: list[int] = []

    def lr_cov(step: int) -> float:
        calls.append(step)
        return 0.0 if step < 3 else 0.05

    model = mlp()
    optimizer = SINGD(model, lr_cov=lr_cov, T=2, defaults="reference", train_all_parameters=True)
    train(model, optimizer, batches(3))
    assert sorted(set(calls)) == [0, 2]
    for factor in dense_factors(optimizer).values():  # lr_cov 0 so far: identities
        assert torch.equal(factor, torch.eye(factor.shape[0]))
    train(model, optimizer, batches(2))  # step 4 updates with lr_cov 0.05
    assert 4 in calls
    assert not torch.equal(optimizer.Ks["0"].to_dense(), torch.eye(7))

    constant, _ = trained_copy(mlp(), batches(4), lr_cov=0.05, T=1)
    scheduled, _ = trained_copy(mlp(), batches(4), lr_cov=lambda step: 0.05, T=1)
    assert_same_parameters(constant, scheduled)


def test_normalize_lr_cov_keeps_large_lr_cov_stable() -> None:
    data = batches(6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the plain run blows up (nothing skips its steps)
        plain, plain_opt = trained_copy(mlp(), data, lr_cov=1.0, T=1, lr=0.01, skip_nonfinite=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        normalized, norm_opt = trained_copy(
            mlp(), data, lr_cov=1.0, T=1, lr=0.01, normalize_lr_cov=True
        )
    assert all(f.abs().max() < 20 for f in dense_factors(norm_opt).values())
    assert all(f.abs().max() > 1e6 for f in dense_factors(plain_opt).values())
    assert not torch.equal(plain[0].weight, normalized[0].weight)


def test_inplace_activations_give_the_same_trajectory() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True), nn.Linear(5, 3))
    reference = copy.deepcopy(model)
    reference[1] = nn.ReLU()
    data = batches(4)
    for m in (model, reference):
        train(m, SINGD(m, T=1, lr=0.1, defaults="reference", train_all_parameters=True), data)
    assert_same_parameters(model, reference)


def test_step_with_closure() -> None:
    data = batches(4)
    expected, _ = trained_copy(mlp(), data, T=2, lr=0.1)
    model = mlp()
    optimizer = SINGD(model, T=2, lr=0.1, defaults="reference", train_all_parameters=True)
    for x, y in data:

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        with torch.no_grad():  # step() enables gradients for the closure
            loss = optimizer.step(closure)
        assert isinstance(loss, torch.Tensor) and loss.isfinite()
    assert_same_parameters(model, expected)
    assert optimizer.step(None) is None


class TwoBranches(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(6, 4)
        self.left = nn.Linear(4, 3)
        self.right = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor, branch: str) -> torch.Tensor:
        return getattr(self, branch)(torch.relu(self.shared(x)))


def test_layer_unused_in_an_update_step() -> None:
    torch.manual_seed(0)
    model = TwoBranches()
    optimizer = SINGD(model, T=1, lr=0.1, defaults="reference", train_all_parameters=True)
    data = batches(4)
    for step, (x, y) in enumerate(data):
        branch = "left" if step < 2 else "right"
        if step == 2:
            K_left = optimizer.Ks["left"].to_dense().clone()
            left_weight = model.left.weight.clone()
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x, branch), y).backward()
        optimizer.step()
    # the left branch took no part in steps 2 and 3: preconditioner and weights kept
    assert torch.equal(optimizer.Ks["left"].to_dense(), K_left)
    assert torch.equal(model.left.weight, left_weight)
    assert not torch.equal(optimizer.Ks["right"].to_dense(), torch.eye(5))


def test_forward_without_backward_records_nothing() -> None:
    model = mlp()
    optimizer = SINGD(model, T=1, defaults="reference", train_all_parameters=True)
    x, _ = batches(1)[0]
    model(x)
    with torch.no_grad():
        model(x)
    assert optimizer.H_Ks == {}


def test_non_finite_curvature_skips_the_whole_step() -> None:
    model = mlp()
    optimizer = SINGD(model, T=1, lr=1e-3, defaults="reference", train_all_parameters=True)
    train(model, optimizer, batches(2))
    before = {k: v.clone() for k, v in dense_factors(optimizer).items()}
    momenta = {k: v.to_dense().clone() for k, v in optimizer.m_Ks.items()}
    weights = [p.detach().clone() for p in model.parameters()]
    buffers = [optimizer.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    x, y = batches(1)[0]
    x = x.clone()
    x[0, 0] = 1e25  # finite input and gradients, but x x^T overflows float32
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    assert all(p.grad.isfinite().all() for p in model.parameters())
    with pytest.warns(UserWarning, match="skipping step 2"):
        optimizer.step()
    assert (optimizer.steps, optimizer.skipped_steps) == (2, 1)
    for key, value in before.items():
        assert torch.equal(value, dense_factors(optimizer)[key])
    assert torch.equal(momenta["0"], optimizer.m_Ks["0"].to_dense())
    assert optimizer.H_Ks == {}
    for param, weight, buffer in zip(model.parameters(), weights, buffers, strict=True):
        assert torch.equal(param, weight)
        assert torch.equal(optimizer.state[param]["momentum_buffer"], buffer)
    # training goes on with finite factors
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(model, optimizer, batches(2))
    assert all(f.isfinite().all() for f in dense_factors(optimizer).values())


def _regression(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    teacher = torch.randn(8, 2, generator=generator)
    data = []
    for _ in range(steps):
        x = torch.randn(32, 8, generator=generator)
        data.append((x, torch.tanh(x @ teacher)))
    return data


def test_bfloat16_autocast_converges_like_float32() -> None:
    data = _regression(60)

    def run(autocast: bool, **kwargs: object) -> list[float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
        optimizer = SINGD(
            model,
            lr=0.05,
            lr_cov=0.05,
            damping=0.1,
            T=1,
            defaults="reference",
            train_all_parameters=True,
            **kwargs,  # type: ignore[arg-type]
        )
        losses = []
        for x, y in data:
            optimizer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                out = model(x)
            loss = nn.functional.mse_loss(out.float(), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    full = run(False)
    mixed = run(True)
    mixed_bf16_factors = run(True, preconditioner_dtype=(torch.bfloat16, torch.bfloat16))
    start = full[0]
    for losses in (full, mixed, mixed_bf16_factors):
        final = sum(losses[-10:]) / 10
        assert final < 0.01 * start
    assert abs(sum(mixed[-10:]) - sum(full[-10:])) / sum(full[-10:]) < 0.3
    assert abs(sum(mixed_bf16_factors[-10:]) - sum(full[-10:])) / sum(full[-10:]) < 0.3


def test_weight_decay_and_momentum_zero() -> None:
    data = batches(3)
    decayed, _ = trained_copy(mlp(), data, weight_decay=0.5, momentum=0.0, T=1, lr=0.1)
    plain, _ = trained_copy(mlp(), data, weight_decay=0.0, momentum=0.0, T=1, lr=0.1)
    assert decayed[0].weight.norm() < plain[0].weight.norm()


def test_layer_called_with_keyword_input() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4, 2)
    optimizer = SINGD(layer, T=1, defaults="reference", train_all_parameters=True)
    layer(input=torch.randn(5, 4)).square().sum().backward()
    assert optimizer.H_counts == {"": (5, 5)}
    optimizer.step()
    assert not torch.equal(optimizer.Ks[""].to_dense(), torch.eye(5))


@pytest.mark.parametrize("context", ["no_grad", "inference_mode", "enable_grad"])
def test_the_callers_grad_mode_changes_nothing(context: str) -> None:
    """The step runs in inference mode whatever mode its caller is in.

    The parameters stay ordinary leaves that require gradients (the next backward
    pass works), and the trajectory is the one of a plain call.
    """
    data = batches(5)
    torch.manual_seed(0)
    plain = mlp()
    wrapped = copy.deepcopy(plain)
    optimizers = {
        "plain": SINGD(plain, lr=0.05, elementwise_below=0),
        "wrapped": SINGD(wrapped, lr=0.05, elementwise_below=0),
    }
    modes = {
        "no_grad": torch.no_grad,
        "inference_mode": torch.inference_mode,
        "enable_grad": torch.enable_grad,
    }
    for x, y in data:
        for name, model in (("plain", plain), ("wrapped", wrapped)):
            optimizer = optimizers[name]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if name == "plain":
                optimizer.step()
            else:
                with modes[context]():
                    optimizer.step()
    assert_same_parameters(wrapped, plain)
    for param in wrapped.parameters():
        assert param.requires_grad and param.is_leaf and not param.is_inference()
