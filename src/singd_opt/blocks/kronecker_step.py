r"""One step of a Kronecker block as a function of its state, for one block or a batch.

:func:`advance` is the whole of a Kronecker block's step: the preconditioner update
(on update steps, :mod:`singd_opt.preconditioner`), the natural gradient and the
grafting (:mod:`singd_opt.grafting`). It reads only its arguments, so the blocks of one
step that share a :class:`StepSignature` (same structures, sizes, dtypes and
settings: the attention projections of every layer of a transformer, for example)
are advanced together by :func:`advance_batch`, which stacks their states and runs
:func:`advance` once under :func:`torch.vmap`. Each operation then runs once for the
batch instead of once per block: on small layers, where a step costs the per-operation
overhead rather than arithmetic, that is most of the time of the optimizer step. The
results are those of :func:`advance` for each block.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from singd_opt.grafting import FactoredMoment, graft_direction
from singd_opt.preconditioner import (
    UpdateConfig,
    cached_square,
    natural_gradient,
    update_preconditioner,
)
from singd_opt.warm_start import warm_start_factors
from structmat import StructuredMatrix


@dataclass(frozen=True)
class StepSignature:
    """What must agree for Kronecker blocks to be advanced together.

    Attributes:
        structures: Structure names of ``(K, C)``.
        dims: ``(d_K, d_C)``.
        dtypes: Dtypes of ``K``, ``C`` and the gradient matrix.
        device: The device of the state.
        updating: Whether the step updates ``K, C`` (curvature was recorded).
        momenta: Whether the momenta ``m_K, m_C`` are kept.
        squares: Which of the cached ``K K^T``, ``C C^T`` are at hand.
        moment_updates: The grafting moment's update count (``None``: no moment yet).
    """

    structures: tuple[str, str]
    dims: tuple[int, int]
    dtypes: tuple[torch.dtype, torch.dtype, torch.dtype]
    device: torch.device
    updating: bool
    momenta: bool
    squares: tuple[bool, bool]
    moment_updates: int | None


@dataclass(frozen=True)
class StepSettings:
    """The step's hyper-parameters, the same for every block of a batch.

    Attributes:
        config: The preconditioner update's (``None`` without update).
        warm_start: Whether the update jumps to the curvature's fixed point.
        uses: ``T``, the natural gradients a cached ``K K^T`` serves.
        grad_factor: The factor the gradients carry (divided out first).
        graft: The grafting rule (``None``, ``"rms"``, ``"adafactor"``).
        group: The parameter group (the grafting rule's ``elementwise_beta2`` and
            ``elementwise_eps``).
    """

    config: UpdateConfig | None
    warm_start: bool
    uses: int
    grad_factor: float
    graft: str | None
    group: Mapping[str, Any]


@dataclass
class BlockState:
    """A Kronecker block's state as :func:`advance` reads and returns it.

    Attributes:
        K, C: The factors.
        m_K, m_C: Their momenta (``None`` when not kept).
        H_K, H_C: The curvature of an update step (consumed), else ``None``.
        grad: The gradient matrix :math:`G` (``None`` without gradients).
        KKT, CCT: The cached ``K K^T``, ``C C^T`` (``None`` where not at hand).
        moment: The grafting moment (``None`` before the first).
        direction: The grafted natural gradient (set by :func:`advance`).
        shared: What other processes need to follow the update (set by
            :func:`advance`): the new momenta, or the factors of a warm start.
    """

    K: StructuredMatrix
    C: StructuredMatrix
    m_K: StructuredMatrix | None = None  # noqa: N815 (the paper's names)
    m_C: StructuredMatrix | None = None  # noqa: N815
    H_K: StructuredMatrix | None = None
    H_C: StructuredMatrix | None = None
    grad: Tensor | None = None
    KKT: StructuredMatrix | None = None
    CCT: StructuredMatrix | None = None
    moment: FactoredMoment | None = None
    direction: Tensor | None = None
    shared: tuple[StructuredMatrix, StructuredMatrix] | None = None


def advance(state: BlockState, settings: StepSettings) -> BlockState:
    r"""Return the state after one step: new factors (on update steps) and the direction.

    The direction is :math:`C C^\top G K K^\top` with the new factors, grafted. The
    input's ``H_K, H_C`` are consumed; nothing else of it is changed. Without an
    update the cached squares are kept (and formed when caching pays,
    :func:`~singd_opt.preconditioner.cached_square`); with ``T = 1`` they are dropped.
    """
    K, C, m_K, m_C = state.K, state.C, state.m_K, state.m_C
    KKT, CCT = state.KKT, state.CCT
    shared = None
    config = settings.config
    if config is not None and state.H_K is not None and state.H_C is not None:
        H_K, H_C = state.H_K, state.H_C
        if settings.warm_start:
            if config.grad_unscaling != 1.0:
                H_C = H_C.mul_(config.grad_unscaling)
            K, C = warm_start_factors(H_K, H_C, config)
            shared = (K, C)
        else:
            K, C, new_m_K, new_m_C = update_preconditioner(K, C, m_K, m_C, H_K, H_C, config)
            if config.alpha1 != 0.0:
                m_K, m_C = new_m_K, new_m_C
            shared = (new_m_K, new_m_C)
        KKT = CCT = None
    direction, moment, grad = None, state.moment, state.grad
    if grad is not None:
        if settings.grad_factor != 1.0:
            grad = grad / settings.grad_factor
        if KKT is None and CCT is None:
            KKT = cached_square(K, grad.shape[0], settings.uses)
            CCT = cached_square(C, grad.shape[1], settings.uses)
        direction = natural_gradient(K, C, grad, KKT, CCT)
        if settings.uses == 1:  # the factors change every step: nothing to cache
            KKT = CCT = None
        if settings.graft is not None:
            direction, moment = graft_direction(
                direction, grad, settings.graft, moment, settings.group
            )
    return BlockState(
        K,
        C,
        m_K,
        m_C,
        grad=grad,
        KKT=KKT,
        CCT=CCT,
        moment=moment,
        direction=direction,
        shared=shared,
    )


# ------------------------------------------------------------------- batches
_MATRICES = ("K", "C", "m_K", "m_C", "H_K", "H_C", "KKT", "CCT")
#: The fields (of :data:`_MATRICES` and the shared pair) with the structure of ``C``.
_C_SIDE = frozenset({"C", "m_C", "H_C", "CCT", "shared_C"})


def _flat_tensors(state: BlockState) -> dict[str, Tensor]:
    """The tensors of ``state`` by ``"<field>.<tensor name>"`` (absent fields left out)."""
    flat: dict[str, Tensor] = {}
    matrices = [(name, getattr(state, name)) for name in _MATRICES]
    if state.shared is not None:
        matrices += [("shared_K", state.shared[0]), ("shared_C", state.shared[1])]
    for field_name, matrix in matrices:
        if matrix is not None:
            for key, tensor in matrix.tensors().items():
                flat[f"{field_name}.{key}"] = tensor
    for field_name in ("grad", "direction"):
        if getattr(state, field_name) is not None:
            flat[field_name] = getattr(state, field_name)
    if state.moment is not None:
        flat["moment.rows"], flat["moment.columns"] = state.moment.rows, state.moment.columns
    return flat


def _state_from(
    flat: Mapping[str, Tensor],
    K_cls: type[StructuredMatrix],
    C_cls: type[StructuredMatrix],
    moment_updates: int,
) -> BlockState:
    """Inverse of :func:`_flat_tensors` (``K_cls``, ``C_cls``: the structures of the sides)."""
    parts: dict[str, dict[str, Tensor]] = {}
    for name, tensor in flat.items():
        field_name, _, key = name.partition(".")
        parts.setdefault(field_name, {})[key] = tensor

    def matrix(field_name: str) -> StructuredMatrix | None:
        found = parts.get(field_name)
        if found is None:
            return None
        return (C_cls if field_name in _C_SIDE else K_cls).from_tensors(found)

    moment = parts.get("moment")
    shared_K, shared_C = matrix("shared_K"), matrix("shared_C")
    return BlockState(
        **{name: matrix(name) for name in _MATRICES},  # type: ignore[arg-type]
        grad=parts.get("grad", {}).get(""),
        direction=parts.get("direction", {}).get(""),
        moment=None
        if moment is None
        else FactoredMoment(moment["rows"], moment["columns"], moment_updates),
        shared=None if shared_K is None or shared_C is None else (shared_K, shared_C),
    )


def advance_batch(states: list[BlockState], settings: StepSettings) -> list[BlockState]:
    """:func:`advance` of every state, computed once on the stacked states (``torch.vmap``).

    The states must share a :class:`StepSignature`. The returned states hold views of
    the batch's results (one storage per tensor of the batch).
    """
    first = states[0]
    K_cls, C_cls = type(first.K), type(first.C)
    moment_updates = [first.moment.updates if first.moment is not None else 0]
    flats = [_flat_tensors(state) for state in states]
    stacked = {name: torch.stack([flat[name] for flat in flats]) for name in flats[0]}

    def one(flat: dict[str, Tensor]) -> dict[str, Tensor]:
        result = advance(_state_from(flat, K_cls, C_cls, moment_updates[0]), settings)
        if result.moment is not None:
            moment_updates[0] = result.moment.updates
        return _flat_tensors(result)

    batched = torch.vmap(one)(stacked)
    members = {name: tensor.unbind(0) for name, tensor in batched.items()}
    return [
        _state_from(
            {name: views[i] for name, views in members.items()}, K_cls, C_cls, moment_updates[0]
        )
        for i in range(len(states))
    ]
