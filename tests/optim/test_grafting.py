"""Layer-wise grafting and the averaged momentum, against direct computations."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from singd_opt import SINGD
from singd_opt.grafting import FactoredMoment, graft, graft_direction, rms_target
from singd_opt.update import apply_update, apply_updates

DTYPE = torch.float64


def test_graft_sets_the_norm_and_keeps_the_direction() -> None:
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(5, 7, generator=generator, dtype=DTYPE)
    grafted = graft(direction, 3.0)
    assert torch.linalg.vector_norm(grafted).item() == pytest.approx(3.0, rel=1e-12)
    cosine = (grafted * direction).sum() / (grafted.norm() * direction.norm())
    assert cosine.item() == pytest.approx(1.0, rel=1e-12)
    assert torch.equal(graft(torch.zeros(3, 4), 2.0), torch.zeros(3, 4))


def test_graft_of_a_stack_scales_each_member_and_keeps_a_zero_member_zero() -> None:
    generator = torch.Generator().manual_seed(3)
    direction = torch.randn(3, 4, 5, generator=generator, dtype=DTYPE)
    direction[1] = 0.0
    targets = torch.tensor([2.0, 5.0, 0.5], dtype=DTYPE)
    for target in (targets, 3.0):
        grafted = graft(direction, target)
        norms = torch.linalg.vector_norm(grafted, dim=(-2, -1))
        expected = torch.as_tensor(target, dtype=DTYPE).expand(3).clone()
        expected[1] = 0.0
        torch.testing.assert_close(norms, expected, rtol=1e-12, atol=0)
        assert torch.isfinite(grafted).all()


def test_rms_rule_has_root_mean_square_one() -> None:
    direction = torch.randn(6, 9, dtype=DTYPE)
    grafted, _ = graft_direction(direction, direction, "rms", None, {})
    assert grafted.square().mean().sqrt().item() == pytest.approx(1.0, rel=1e-12)
    assert rms_target(direction) == pytest.approx(54**0.5)


def test_factored_moment_matches_a_direct_computation() -> None:
    """Row and column averages of squared gradients, bias-corrected, outer product / mean."""
    generator = torch.Generator().manual_seed(1)
    grads = [torch.randn(4, 6, generator=generator, dtype=DTYPE) for _ in range(3)]
    beta, eps = 0.9, 1e-8
    moment = FactoredMoment.zeros(grads[0])
    rows, columns = torch.zeros(4, dtype=DTYPE), torch.zeros(6, dtype=DTYPE)
    for grad in grads:
        moment = moment.update(grad, beta)
        rows = beta * rows + (1 - beta) * (grad**2).mean(dim=1)
        columns = beta * columns + (1 - beta) * (grad**2).mean(dim=0)
    assert moment.updates == 3
    torch.testing.assert_close(moment.rows, rows, rtol=1e-12, atol=0)
    torch.testing.assert_close(moment.columns, columns, rtol=1e-12, atol=0)
    correction = 1 - beta**3
    second = torch.outer(rows, columns) / correction**2 / (rows.mean() / correction)
    expected = torch.linalg.vector_norm(grads[-1] / (second.sqrt() + eps))
    got = moment.norm_of_direction(grads[-1], beta, eps)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_factored_moment_of_a_rank_one_square_is_exact() -> None:
    """For G**2 = r c^T the factored moment is exact: |G / sqrt(V)| is all ones."""
    r = torch.tensor([1.0, 4.0, 9.0], dtype=DTYPE)
    c = torch.tensor([0.25, 1.0], dtype=DTYPE)
    grad = torch.outer(r, c).sqrt()
    moment = FactoredMoment.zeros(grad).update(grad, 0.5)
    norm = moment.norm_of_direction(grad, 0.5, 0.0)
    assert norm.item() == pytest.approx(6**0.5, rel=1e-12)


@pytest.mark.parametrize("rule", ["rms", "adafactor"])
def test_optimizer_steps_by_the_grafted_size(rule: str) -> None:
    """Without momentum the first step of a Kronecker block has the rule's norm times lr."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    optimizer = SINGD(layer, lr=0.1, momentum=0.0, graft=rule, elementwise_below=0)
    before = torch.cat([layer.weight.detach().clone(), layer.bias.detach().clone()[:, None]], 1)
    x = torch.randn(8, 5)
    layer(x).square().mean().backward()
    grad = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1)
    optimizer.step()
    after = torch.cat([layer.weight.detach(), layer.bias.detach()[:, None]], 1)
    step_norm = torch.linalg.vector_norm(before - after) / 0.1
    if rule == "rms":
        expected = grad.numel() ** 0.5
    else:
        moment = FactoredMoment.zeros(grad).update(grad, 0.999)
        expected = float(moment.norm_of_direction(grad, 0.999, 1e-8))
    assert step_norm.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("dampening", [False, True])
def test_momentum_dampening_matches_torch_sgd(dampening: bool) -> None:
    """Summed (reference) or averaged momentum: torch SGD with dampening 0 or mu."""
    generator = torch.Generator().manual_seed(0)
    ours = nn.Parameter(torch.randn(3, 4, generator=generator, dtype=DTYPE))
    theirs = nn.Parameter(ours.detach().clone())
    holder = SimpleNamespace(state=defaultdict(dict))
    group = {"momentum": 0.9, "weight_decay": 0.01, "momentum_dampening": dampening}
    sgd = torch.optim.SGD(
        [theirs], lr=0.1, momentum=0.9, dampening=0.9 if dampening else 0.0, weight_decay=0.01
    )
    for _ in range(4):
        direction = torch.randn(3, 4, generator=generator, dtype=DTYPE)
        with torch.no_grad():
            apply_update(holder, ours, direction.clone(), group, 0.1)
        theirs.grad = direction
        sgd.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-14)


def test_bias_corrected_momentum_is_adams_first_moment() -> None:
    """Adam's recursion: m = mu m + (1 - mu)(N + wd theta) from 0, theta -= lr m / (1 - mu^t)."""
    generator = torch.Generator().manual_seed(1)
    ours = nn.Parameter(torch.randn(3, 4, generator=generator, dtype=DTYPE))
    expected = ours.detach().clone()
    moment = torch.zeros_like(expected)
    holder = SimpleNamespace(state=defaultdict(dict))
    group = {"momentum": 0.9, "weight_decay": 0.01, "momentum_dampening": "bias_corrected"}
    for step in range(1, 5):
        direction = torch.randn(3, 4, generator=generator, dtype=DTYPE)
        with torch.no_grad():
            apply_update(holder, ours, direction.clone(), group, 0.1)
        moment = 0.9 * moment + 0.1 * (direction + 0.01 * expected)
        expected = expected - 0.1 * moment / (1 - 0.9**step)
    torch.testing.assert_close(ours.detach(), expected, rtol=1e-12, atol=1e-14)


def test_bias_corrected_first_step_has_the_directions_size() -> None:
    """Whole optimizer: the first step equals the step without momentum, the second not."""

    def train(steps: int, **options: object) -> list[torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3)).double()
        # fixed structures: "auto" would give the factors more memory without momentum
        optimizer = SINGD(
            model, lr=0.05, **options, elementwise_below=0, structures=("dense", "dense")
        )
        generator = torch.Generator().manual_seed(2)
        for _ in range(steps):
            x = torch.randn(8, 5, generator=generator, dtype=DTYPE)
            y = torch.randint(3, (8,), generator=generator)
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        return [p.detach().clone() for p in model.parameters()]

    corrected = train(1, momentum=0.9, momentum_dampening="bias_corrected")
    plain = train(1, momentum=0.0)
    for a, b in zip(corrected, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    corrected = train(2, momentum=0.9, momentum_dampening="bias_corrected")
    plain = train(2, momentum=0.0)
    assert any(not torch.allclose(a, b) for a, b in zip(corrected, plain, strict=True))


@pytest.mark.parametrize("value", ["zero", 1, None])
def test_invalid_momentum_dampening_names_the_choices(value: object) -> None:
    with pytest.raises(ValueError, match=r"momentum_dampening must be one of .*'bias_corrected'"):
        SINGD(nn.Linear(3, 2), momentum_dampening=value)


@pytest.mark.parametrize("dampening", [False, True, "bias_corrected"])
def test_updates_of_several_parameters_match_one_by_one(dampening: bool | str) -> None:
    """``apply_updates`` (foreach over a group's parameters) equals one call per parameter."""
    generator = torch.Generator().manual_seed(1)
    shapes = [(3, 4), (5,), (2, 2, 2)]
    together = [nn.Parameter(torch.randn(s, generator=generator, dtype=DTYPE)) for s in shapes]
    alone = [nn.Parameter(p.detach().clone()) for p in together]
    initial = [p.detach().clone() for p in together]
    holders = [SimpleNamespace(state=defaultdict(dict)) for _ in range(2)]
    group = {"momentum": 0.8, "weight_decay": 0.05, "momentum_dampening": dampening}
    for _ in range(3):
        directions = [torch.randn(s, generator=generator, dtype=DTYPE) for s in shapes]
        with torch.no_grad():
            apply_updates(holders[0], together, [d.clone() for d in directions], group, 0.1)
            for param, direction in zip(alone, directions, strict=True):
                apply_update(holders[1], param, direction.clone(), group, 0.1)
    for ours, theirs, start in zip(together, alone, initial, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(
            holders[0].state[ours]["momentum_buffer"], holders[1].state[theirs]["momentum_buffer"]
        )
        assert not torch.allclose(ours, start)  # the steps moved it


def test_bias_corrected_parameters_with_different_step_counts() -> None:
    """A parameter that missed steps keeps its own count t in the foreach update."""
    generator = torch.Generator().manual_seed(4)
    together = [nn.Parameter(torch.randn(3, generator=generator, dtype=DTYPE)) for _ in range(2)]
    alone = [nn.Parameter(p.detach().clone()) for p in together]
    holders = [SimpleNamespace(state=defaultdict(dict)) for _ in range(2)]
    group = {"momentum": 0.9, "weight_decay": 0.0, "momentum_dampening": "bias_corrected"}
    for step in range(3):
        directions = [torch.randn(3, generator=generator, dtype=DTYPE) for _ in range(2)]
        active = [0, 1] if step else [0]  # the second parameter had no gradient at first
        with torch.no_grad():
            params = [together[i] for i in active]
            apply_updates(holders[0], params, [directions[i] for i in active], group, 0.1)
            for i in active:
                apply_update(holders[1], alone[i], directions[i].clone(), group, 0.1)
    counts = [holders[0].state[p]["momentum_steps"] for p in together]
    assert counts == [3, 2]
    for ours, theirs in zip(together, alone, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-14, atol=1e-15)
