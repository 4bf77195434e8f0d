r"""One step of a Kronecker block as a function of its state, for one block or a batch.

:func:`advance` is the whole of a Kronecker block's step: the preconditioner update
(on update steps, :mod:`singd_opt.preconditioner`), the natural gradient and the
grafting (:mod:`singd_opt.grafting`). It reads only its arguments, so the blocks of one
step that share a :class:`StepSignature` (same structures, sizes, dtypes and
settings: the attention projections of every layer of a transformer, for example)
are advanced together by :func:`advance_batch`, which stacks their states
(:meth:`structmat.StructuredMatrix.stack`: the structmat kernels act on every member of
a stack at once) and runs :func:`advance` once on the stacks. Each operation then runs
once for the batch instead of once per block: on small layers, where a step costs the
per-operation overhead rather than arithmetic, that is most of the time of the
optimizer step. The results are those of :func:`advance` for each block.
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

#: Blocks whose gradient matrix has more entries than this step alone. Stacking saves
#: per-operation overhead, which only small blocks are dominated by; a large block's
#: operations are bound by memory, and a stack's tensors are larger than the cache that
#: one block's fit in. Measured on pairs of equal ``w x w`` layers of the recommended
#: defaults (one CPU thread), the stacked step against two steps alone: 0.68 at
#: ``w = 64``, 0.82 at 128, 1.07 at 192, 1.19 at 256, 1.95 at 512.
STACK_MAX_ENTRIES = 2**15


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
            KKT = cached_square(K, grad.shape[-2], settings.uses)
            CCT = cached_square(C, grad.shape[-1], settings.uses)
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


def _stacked(states: list[BlockState]) -> BlockState:
    """One state whose matrices and tensors are the stacks of those of ``states``."""

    def stack(name: str) -> StructuredMatrix | None:
        members = [getattr(state, name) for state in states]
        return None if members[0] is None else type(members[0]).stack(members)

    first = states[0]
    moment = first.moment
    if moment is not None:
        rows = torch.stack([state.moment.rows for state in states])  # type: ignore[union-attr]
        columns = torch.stack([state.moment.columns for state in states])  # type: ignore[union-attr]
        moment = FactoredMoment(rows, columns, moment.updates)
    grad = None if first.grad is None else torch.stack([state.grad for state in states])  # type: ignore[misc]
    return BlockState(**{name: stack(name) for name in _MATRICES}, grad=grad, moment=moment)


def _members(stacked: BlockState, count: int) -> list[BlockState]:
    """The states of the members of ``stacked`` (views of its tensors)."""

    def unbind(matrix: StructuredMatrix | None) -> list[Any]:
        return [None] * count if matrix is None else matrix.unbind()

    def split(tensor: Tensor | None) -> list[Any]:
        return [None] * count if tensor is None else list(tensor.unbind(0))

    matrices = {name: unbind(getattr(stacked, name)) for name in _MATRICES}
    shared = (
        [None] * count
        if stacked.shared is None
        else list(zip(unbind(stacked.shared[0]), unbind(stacked.shared[1]), strict=True))
    )
    moment = stacked.moment
    moments: list[FactoredMoment | None] = [None] * count
    if moment is not None:
        pairs = zip(moment.rows.unbind(0), moment.columns.unbind(0), strict=True)
        moments = [FactoredMoment(rows, columns, moment.updates) for rows, columns in pairs]
    grads, directions = split(stacked.grad), split(stacked.direction)
    return [
        BlockState(
            **{name: matrices[name][i] for name in _MATRICES},
            grad=grads[i],
            moment=moments[i],
            direction=directions[i],
            shared=shared[i],
        )
        for i in range(count)
    ]


def advance_batch(states: list[BlockState], settings: StepSettings) -> list[BlockState]:
    """:func:`advance` of every state, computed once on the stacked states.

    The states must share a :class:`StepSignature` whose structures batch natively
    (:attr:`~structmat.StructuredMatrix.batches_natively`): their matrices are stacked
    (:meth:`~structmat.StructuredMatrix.stack`), :func:`advance` runs once on the
    stacks, and the results are unbound. The returned states hold views of the batch's
    results (one storage per tensor of the batch).
    """
    return _members(advance(_stacked(states), settings), len(states))
