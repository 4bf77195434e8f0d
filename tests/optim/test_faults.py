"""Fault injection: a bad batch leaves no trace, and training goes on.

A training run sees one bad step (NaN or inf in an input, in the loss, in one layer's
gradient, or an input so large that the curvature overflows) among clean batches. The
step must be skipped whole, so that afterwards every piece of state (parameters,
momenta, ``K``, ``C`` and their momenta, the element-wise blocks, the step counter)
equals that of a run that never saw the bad batch, and the loss still goes down.
``optimizer.steps`` counts steps taken, so the ``T`` schedule continues as if the bad
batch had not come.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

from singd_opt import SINGD
from tests.optim.dense_reference_impl import single_intra_op_thread

STRUCTURES = [
    "dense",
    "diagonal",
    "block30diagonal",
    "hierarchical15_15",
    "triltoeplitz",
    "triutoeplitz",
    "triltopleftdiag",
    "trilbottomrightdiag",
    "triutopleftdiag",
    "triubottomrightdiag",
    "tril",
    "triu",
]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))


def batches(count: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator))
        for _ in range(count)
    ]


def nan_input(x: Tensor, loss_fn: Callable[[Tensor], Tensor], net: nn.Module) -> None:
    x = x.clone()
    x[3, 2] = float("nan")
    loss_fn(x).backward()


def inf_loss(x: Tensor, loss_fn: Callable[[Tensor], Tensor], net: nn.Module) -> None:
    (loss_fn(x) * float("inf")).backward()


def nan_gradient(x: Tensor, loss_fn: Callable[[Tensor], Tensor], net: nn.Module) -> None:
    loss_fn(x).backward()
    net[3].weight.grad[1, 2] = float("nan")  # one layer only


def overflowing_curvature(x: Tensor, loss_fn: Callable[[Tensor], Tensor], net: nn.Module) -> None:
    x = x.clone()
    x[0, 0] = 1e25  # finite input and gradients, but x x^T overflows float32
    loss_fn(x).backward()


FAULTS = {
    "nan-input": nan_input,
    "inf-loss": inf_loss,
    "nan-gradient": nan_gradient,
    "overflow": overflowing_curvature,
}


def train(
    net: nn.Module,
    optimizer: SINGD,
    data: list[tuple[Tensor, Tensor]],
    micro_batches: int = 1,
    fault: str | None = None,
    fault_at: int = 0,
) -> list[float]:
    """Train on ``data``; before batch ``fault_at``, take one step with the fault."""
    losses = []
    for index, (x, y) in enumerate(data):
        if fault is not None and index == fault_at:
            optimizer.zero_grad()

            def loss_fn(inputs: Tensor, y: Tensor = y) -> Tensor:
                return functional.cross_entropy(net(inputs), y)

            with pytest.warns(UserWarning, match="skipping step"):
                FAULTS[fault](x, loss_fn, net)
                optimizer.step()
        optimizer.zero_grad()
        loss = 0.0
        for x_part, y_part in zip(x.chunk(micro_batches), y.chunk(micro_batches), strict=True):
            part = functional.cross_entropy(net(x_part), y_part) / micro_batches
            part.backward()
            loss += part.item()
        optimizer.step()
        losses.append(loss)
    return losses


def state(net: nn.Module, optimizer: SINGD) -> dict[str, Tensor]:
    out = {f"param:{n}": p.detach().clone() for n, p in net.named_parameters()}
    for name, param in net.named_parameters():
        buffer = optimizer.state[param].get("momentum_buffer")
        if buffer is not None:
            out[f"momentum:{name}"] = buffer.clone()
    for kind in ("Ks", "Cs", "m_Ks", "m_Cs"):
        for name, matrix in getattr(optimizer, kind).items():
            out[f"{kind}:{name}"] = matrix.to_dense().clone()
    for block in optimizer.blocks:
        for key, tensor in block.state_dict().items():
            if isinstance(tensor, Tensor):
                out[f"block:{block.name}:{key}"] = tensor.clone()
    out["steps"] = torch.tensor(optimizer.steps)
    return out


def assert_same_state(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize(("T", "fault_at"), [(1, 2), (3, 3), (3, 4)])  # update, update, other
def test_a_bad_step_leaves_no_trace(structure: str, fault: str, T: int, fault_at: int) -> None:
    data = batches(7)
    options = {
        "lr": 0.05,
        "lr_cov": 0.05,
        "damping": 0.1,
        "T": T,
        "structures": (structure, structure),
    }
    with single_intra_op_thread():
        clean_net = model()
        clean = SINGD(
            clean_net, **{"defaults": "reference", "train_all_parameters": True, **options}
        )
        clean_losses = train(clean_net, clean, data)
        net = model()
        optimizer = SINGD(net, **{"defaults": "reference", "train_all_parameters": True, **options})
        losses = train(net, optimizer, data, fault=fault, fault_at=fault_at)
    assert optimizer.skipped_steps == 1
    assert_same_state(state(net, optimizer), state(clean_net, clean))
    assert losses == clean_losses
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_bad_step_with_gradient_accumulation(fault: str) -> None:
    data = batches(6)
    options = {"lr": 0.05, "lr_cov": 0.05, "damping": 0.1, "T": 2}
    clean_net, net = model(), model()
    clean, optimizer = (
        SINGD(clean_net, **{"defaults": "reference", "train_all_parameters": True, **options}),
        SINGD(net, **{"defaults": "reference", "train_all_parameters": True, **options}),
    )
    train(clean_net, clean, data, micro_batches=2)
    train(net, optimizer, data, micro_batches=2, fault=fault, fault_at=2)
    assert_same_state(state(net, optimizer), state(clean_net, clean))


def test_a_bad_step_under_a_gradient_scaler() -> None:
    """The scaler skips the step; the state matches the clean run up to the scale's rounding."""
    data = batches(6)
    options = {"lr": 0.05, "lr_cov": 0.05, "damping": 0.1, "T": 1, "init_grad_scale": 2.0**8}

    def run(bad: bool) -> tuple[nn.Module, SINGD, list[float]]:
        net = model()
        optimizer = SINGD(net, **{"defaults": "reference", "train_all_parameters": True, **options})
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1000)
        losses = []
        for index, (x, y) in enumerate(data):
            if bad and index == 2:
                optimizer.zero_grad()
                scaler.scale(functional.cross_entropy(net(x), y) * float("inf")).backward()
                with pytest.warns(UserWarning, match="skipping step"):
                    scaler.step(optimizer)
                scaler.update()
            optimizer.zero_grad()
            loss = functional.cross_entropy(net(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
        return net, optimizer, losses

    clean_net, clean, _ = run(False)
    net, optimizer, losses = run(True)
    assert optimizer.skipped_steps == 1 and optimizer.steps == clean.steps
    expected = state(clean_net, clean)
    for key, value in state(net, optimizer).items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6, msg=key)
    assert losses[-1] < losses[0]


def test_skipped_steps_are_reported_with_a_count() -> None:
    net = model()
    optimizer = SINGD(net, T=1, defaults="reference", train_all_parameters=True)
    x, y = batches(1)[0]
    messages = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(5):
            optimizer.zero_grad()
            (functional.cross_entropy(net(x), y) * float("nan")).backward()
            optimizer.step()
        messages = [str(w.message) for w in caught]
    assert optimizer.skipped_steps == 5 and optimizer.steps == 0
    assert len(messages) == 3  # the 1st, 2nd and 4th
    assert "4 step(s) skipped" in messages[-1]


def test_without_the_check_a_bad_step_is_applied_like_the_reference() -> None:
    net = model()
    optimizer = SINGD(
        net, T=1, skip_nonfinite=False, defaults="reference", train_all_parameters=True
    )
    x, y = batches(1)[0]
    x = x.clone()
    x[0, 0] = float("nan")
    functional.cross_entropy(net(x), y).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer.step()
    assert optimizer.steps == 1
    assert not all(p.isfinite().all() for p in net.parameters())


def test_update_clipping_bounds_each_block() -> None:
    torch.manual_seed(0)
    net = model()
    reference = copy.deepcopy(net)
    clipped = SINGD(
        net,
        lr=1.0,
        momentum=0.0,
        T=1,
        max_update_rms=1e-3,
        defaults="reference",
        train_all_parameters=True,
    )
    free = SINGD(
        reference, lr=1.0, momentum=0.0, T=1, defaults="reference", train_all_parameters=True
    )
    x, y = batches(1)[0]
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    for n_, o in ((net, clipped), (reference, free)):
        functional.cross_entropy(n_(x), y).backward()
        o.step()
    for block in clipped.blocks:
        changes = [
            (dict(net.named_parameters())[name] - before[name]).flatten()
            for name in before
            if any(rows.param is dict(net.named_parameters())[name] for rows in block.params)
        ]
        change = torch.cat(changes)
        rms = change.square().mean().sqrt().item()
        assert rms <= 1e-3 * (1 + 1e-5), block.name
    # without the bound the same steps are larger
    for name, param in reference.named_parameters():
        free_change = (param - before[name]).square().mean().sqrt()
        clipped_change = (dict(net.named_parameters())[name] - before[name]).square().mean().sqrt()
        assert clipped_change <= free_change + 1e-9
