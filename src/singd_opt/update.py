r"""What every block's directions go through: clipping, momentum, weight decay, step.

For a direction :math:`N` of parameter :math:`\theta` in a group with momentum
:math:`\mu`, weight decay :math:`\gamma` and learning rate :math:`\beta_2` (the
group's ``elementwise_lr`` for element-wise blocks, when set):

.. math::
    b \leftarrow \mu b + N + \gamma \theta, \qquad \theta \leftarrow \theta - \beta_2 b,

with :math:`b` the parameter's ``momentum_buffer`` (none for :math:`\mu = 0`). With
``momentum_dampening`` the buffer is an average instead of a sum, :math:`b \leftarrow
\mu b + (1 - \mu)(N + \gamma \theta)` after the first step (which sets :math:`b`
to its update, as ``torch.optim.SGD`` with ``dampening`` :math:`= \mu` does), so
that the step has the size of its direction, like Adam's first moment. With
``momentum_dampening="bias_corrected"`` the average starts from :math:`b = 0` and the
step divides it by :math:`1 - \mu^t` after :math:`t` updates, as Adam's first moment
does: :math:`\theta \leftarrow \theta - \beta_2\, b / (1 - \mu^t)`, so every step,
the first included, has the size of its directions. With
``max_update_rms`` :math:`= \rho`, a block's directions are first scaled by
:math:`\min(1, \rho / \operatorname{rms}(N))`, the root mean square taken over all of
the block's directions together (no synchronisation: the factor stays on the device).
A parameter split over several blocks (the packed attention projections) receives
its directions assembled into one tensor first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from singd_opt.blocks import PreconditionerBlock, Proposal

#: ``momentum_dampening``'s value for Adam's bias-corrected average.
BIAS_CORRECTED = "bias_corrected"

#: The valid values of ``momentum_dampening``.
MOMENTUM_DAMPENINGS: tuple[bool | str, ...] = (False, True, BIAS_CORRECTED)


def all_finite(tensors: Sequence[Tensor]) -> Tensor:
    """Return a 0-dim boolean tensor: are all entries of all tensors finite.

    A fused Euclidean norm per dtype (``torch._foreach_norm``, one pass over the data)
    decides: a NaN or an infinity makes a norm non-finite, so finite norms prove every
    entry finite. Only when a norm is not finite (a non-finite entry, or finite
    entries so huge that their squares overflow) does a second, exact pass decide.
    """
    by_dtype: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for tensor in tensors:
        if tensor.numel():
            by_dtype.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    if not by_dtype:
        return torch.tensor(True)
    norms = torch.cat(
        [torch.stack(torch._foreach_norm(group, 2.0)).float().cpu() for group in by_dtype.values()]
    )
    if bool(norms.isfinite().all()):
        return torch.tensor(True)
    return torch.stack(
        [t.isfinite().all().cpu() for group in by_dtype.values() for t in group]
    ).all()


def clip_directions(directions: list[Tensor], max_rms: float) -> None:
    """Scale ``directions`` in place so their joint root mean square is at most ``max_rms``."""
    count = sum(d.numel() for d in directions)
    if count == 0:
        return
    squares = torch.stack([d.float().square().sum() for d in directions]).sum()
    factor = torch.clamp(max_rms / torch.sqrt(squares / count), max=1.0)
    for direction in directions:
        direction.mul_(factor.to(direction.dtype))


#: ``fit(param, update)``: ``update`` in the layout of ``param`` (e.g. cut to a shard).
FitFn = Callable[[nn.Parameter, Tensor], Tensor]


def apply_update(
    optimizer: Optimizer,
    param: nn.Parameter,
    update: Tensor,
    group: Mapping[str, Any],
    lr: float,
    fit: FitFn | None = None,
) -> None:
    """Apply weight decay, momentum and the learning rate to one parameter (in place).

    Args:
        optimizer: The optimizer (its per-parameter state holds the momentum buffer).
        param: The parameter.
        update: Its direction (changed in place with weight decay).
        group: Its parameter group.
        lr: The learning rate.
        fit: Brings ``update`` to the layout of ``param`` first (a whole-tensor update
            of a sharded parameter is cut to the rows the process holds), if given.
    """
    apply_updates(optimizer, [param], [update], group, lr, fit)


def apply_updates(
    optimizer: Optimizer,
    params: list[nn.Parameter],
    updates: list[Tensor],
    group: Mapping[str, Any],
    lr: float,
    fit: FitFn | None = None,
) -> None:
    """:func:`apply_update` for several parameters of one group and learning rate.

    Each of weight decay, momentum and the parameter step is one ``torch._foreach_*``
    call over the parameters (the same arithmetic per entry as separate calls).

    Args:
        optimizer: The optimizer (its per-parameter state holds the momentum buffers).
        params: Distinct parameters.
        updates: Their directions, in the same order (changed in place with weight
            decay).
        group: Their parameter group.
        lr: The learning rate.
        fit: See :func:`apply_update`.
    """
    if fit is not None:
        updates = [fit(param, update) for param, update in zip(params, updates, strict=True)]
    momentum, weight_decay = group["momentum"], group["weight_decay"]
    if weight_decay != 0.0:
        torch._foreach_add_(updates, params, alpha=weight_decay)
    if momentum != 0.0:
        dampening = group.get("momentum_dampening", False)
        if dampening == BIAS_CORRECTED:
            _bias_corrected_steps(optimizer, params, updates, momentum, lr)
            return
        buffers, continued, directions = [], [], []
        for param, update in zip(params, updates, strict=True):
            state = optimizer.state[param]
            buffer = state.get("momentum_buffer")
            if buffer is None:  # the first step sets the buffer to the update
                buffer = state["momentum_buffer"] = update.clone()
            else:
                continued.append(buffer)
                directions.append(update)
            buffers.append(buffer)
        if continued:
            if dampening:
                torch._foreach_lerp_(continued, directions, 1.0 - momentum)
            else:
                torch._foreach_mul_(continued, momentum)
                torch._foreach_add_(continued, directions)
        updates = buffers
    torch._foreach_add_(params, updates, alpha=-lr)


def _bias_corrected_steps(
    optimizer: Optimizer,
    params: list[nn.Parameter],
    updates: list[Tensor],
    momentum: float,
    lr: float,
) -> None:
    r"""Average ``updates`` into zero-started buffers; step by :math:`b / (1 - \mu^t)`.

    :math:`t` counts each parameter's steps (``momentum_steps`` in its state); the
    parameters with the same count take one ``torch._foreach_add_``.
    """
    buffers = []
    by_count: dict[int, tuple[list[nn.Parameter], list[Tensor]]] = {}
    for param, update in zip(params, updates, strict=True):
        state = optimizer.state[param]
        buffer = state.get("momentum_buffer")
        if buffer is None:
            buffer = state["momentum_buffer"] = torch.zeros_like(update)
        buffers.append(buffer)
        count = state["momentum_steps"] = state.get("momentum_steps", 0) + 1
        stepped, averages = by_count.setdefault(count, ([], []))
        stepped.append(param)
        averages.append(buffer)
    torch._foreach_lerp_(buffers, updates, 1.0 - momentum)
    for count, (stepped, averages) in by_count.items():
        torch._foreach_add_(stepped, averages, alpha=-lr / (1.0 - momentum**count))


def apply_directions(
    optimizer: Optimizer,
    proposals: list[tuple[PreconditionerBlock, Proposal]],
    fit: FitFn | None = None,
) -> None:
    """Apply every committed proposal's directions to its parameters (see :func:`apply_update`).

    The parameters of one group and learning rate are updated together
    (:func:`apply_updates`).
    """
    assembled: dict[nn.Parameter, tuple[Tensor, int, float]] = {}
    batches: dict[tuple[int, float], tuple[list[nn.Parameter], list[Tensor]]] = {}
    for block, proposal in proposals:
        if not proposal.directions:
            continue
        group = optimizer.param_groups[block.group_index]
        max_rms = group.get("max_update_rms")
        if max_rms is not None:
            clip_directions([d for _, d in proposal.directions], max_rms)
        lr = block.learning_rate(group)
        for rows, direction in proposal.directions:
            if rows.row_slice is None:
                params, updates = batches.setdefault((block.group_index, lr), ([], []))
                params.append(rows.param)
                updates.append(direction)
                continue
            entry = assembled.get(rows.param)
            if entry is None:
                param = rows.param
                whole = torch.zeros(param.shape, dtype=param.dtype, device=direction.device)
                entry = assembled[param] = (whole, block.group_index, lr)
            entry[0][rows.index] = direction
    for param, (update, index, lr) in assembled.items():
        params, updates = batches.setdefault((index, lr), ([], []))
        params.append(param)
        updates.append(update)
    for (index, lr), (params, updates) in batches.items():
        apply_updates(optimizer, params, updates, optimizer.param_groups[index], lr, fit)
