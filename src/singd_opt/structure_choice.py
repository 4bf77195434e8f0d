r"""A structure for each factor that fits its layer's memory: ``structures=("auto", "auto")``.

A Kronecker block of a ``d_C x d_K`` gradient matrix keeps, per side, the factor
(``K``: ``d_K x d_K``), its Riemannian momentum when :math:`\alpha_1 \neq 0` and, when
the factors are updated every ``T > 1`` steps, the cached product :math:`K K^\top` (see
:func:`singd_opt.preconditioner.cached_square`): :math:`c = 1 + [T > 1] + [\alpha_1
\neq 0]` matrices (:func:`copies_per_side`). Dense factors cost :math:`c\, d_K^2`
numbers against the weight's :math:`d_C d_K`, so a square ``4608 x 512`` convolution
(``512 -> 512``, 3x3) would keep :math:`3 \cdot 4609^2 \approx 64\,\text{M}` numbers
for its 2.4 M weights.

With ``"auto"`` a side of dimension :math:`d` gets the richest structure within a
budget of :math:`f` times the weight's numbers (the group option ``auto_budget``,
:data:`AUTO_BUDGET` by default):

.. math::
    \text{dense if } c\, d^2 \le f\, d_C d_K, \quad\text{else}\quad
    \text{block-diagonal with blocks of } b = \min\!\left(\left\lfloor
    \tfrac{f\, d_C d_K}{c\, d} \right\rfloor, b_\text{max}\right) \ (b \ge 2),
    \quad\text{else diagonal,}

with :math:`b_\text{max}` = :data:`MAX_BLOCK`, above which a block's updates, cubic in
its size, cost far more than an AdamW step (measured in
``benchmarks/defaults_study.py --timing``). Both
sides together then keep at most :math:`2 f` times the weight, so with the parameter's
momentum buffer (and the :math:`d_C + d_K` numbers of a grafting moment) a block's
state stays near :math:`(1 + 2 f)` times the weight, below AdamW's 2 for
:math:`f \le 1/2`.

:func:`large_factor_warning` reports explicitly requested structures whose state
exceeds :data:`WARN_MULTIPLE` times the weight (and :data:`WARN_MIN_BYTES`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from singd_opt.user_warnings import warn_user


class PreconditionerBlockLike(Protocol):
    """What the warning needs of a block (see :class:`~singd_opt.blocks.PreconditionerBlock`)."""

    def oversized(self, multiple: float, min_bytes: int) -> str | None:
        """A line about the block if its preconditioner exceeds ``multiple`` x its weight."""


#: The structure name that asks for :func:`choose_structure`.
AUTO = "auto"
#: :math:`f`: each side's factors may keep this fraction of the weight's numbers.
AUTO_BUDGET = 0.25
#: :math:`b_\text{max}`: the largest dense side or diagonal block chosen (one update and
#: natural gradient of a dense side cost 46 ms at 256 and 320 ms at 512 on one CPU
#: thread, against 1.2 ms and 51 ms for blocks of 64; ``defaults_study.py --timing``).
MAX_BLOCK = 128
#: Explicit structures whose state exceeds this multiple of the weight get a warning...
WARN_MULTIPLE = 4.0
#: ... when the block's factors also exceed this many bytes (small layers never warn).
WARN_MIN_BYTES = 2**20


def copies_per_side(alpha1: float, T: int = 1) -> int:
    r"""Return :math:`c`: matrices kept per side between steps.

    The factor; the cached product :math:`K K^\top` when it serves the steps until the
    next update (``T > 1``; with ``T = 1`` it is formed in the step and dropped); the
    Riemannian momentum when :math:`\alpha_1 \neq 0`.
    """
    return 1 + (T > 1) + (alpha1 != 0.0)


def choose_structure(dim: int, weight_numel: int, copies: int, budget: float | None = None) -> str:
    r"""Return the structure name for one side (see the module docstring).

    Args:
        dim: :math:`d`, the side's dimension.
        weight_numel: :math:`d_C d_K`, the numbers of the block's gradient matrix.
        copies: :math:`c`, matrices kept per side.
        budget: :math:`f`; ``None`` means :data:`AUTO_BUDGET`.

    Returns:
        ``"dense"``, ``"block{b}diagonal"`` or ``"diagonal"``.
    """
    budget = AUTO_BUDGET if budget is None else budget
    allowed = budget * weight_numel / copies  # numbers per matrix
    if dim * dim <= allowed and dim <= MAX_BLOCK:
        return "dense"
    block = min(int(allowed // dim), MAX_BLOCK, dim)
    return f"block{block}diagonal" if block >= 2 else "diagonal"


def byte_size(count: int) -> str:
    """Return a byte count in KiB or MiB."""
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 2**10:.1f} KiB"


def large_factor_warning(
    blocks: Iterable[PreconditionerBlockLike], multiple: float = WARN_MULTIPLE
) -> str | None:
    r"""Return a warning naming the blocks whose preconditioner exceeds ``multiple`` x the weight.

    Each block says itself whether it does
    (:meth:`~singd_opt.blocks.PreconditionerBlock.oversized`; a Kronecker block counts
    ``K``, ``C`` and their momenta against its gradient matrix, and leaves out factors
    of at most :data:`WARN_MIN_BYTES`). ``None`` when no block exceeds it.

    Args:
        blocks: The optimizer's blocks.
        multiple: The stated multiple.
    """
    lines = [line for b in blocks if (line := b.oversized(multiple, WARN_MIN_BYTES)) is not None]
    if not lines:
        return None
    return (
        f"SINGD factors keep more than {multiple:g}x their layer's weight in memory; "
        f"structures=('auto', 'auto') picks structures that fit:\n  " + "\n  ".join(lines)
    )


def warn_large_factors(blocks: Iterable[PreconditionerBlockLike]) -> None:
    """Warn (:class:`UserWarning`, at the user's line) about :func:`large_factor_warning`.

    ``"auto"`` sides stay within their budget by construction, so a warning always
    names explicitly requested structures.
    """
    message = large_factor_warning(blocks)
    if message is not None:
        warn_user(message)
