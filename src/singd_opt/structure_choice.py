r"""A structure for each factor that fits its layer's memory: ``structures=("auto", "auto")``.

A Kronecker block of a ``d_C x d_K`` gradient matrix keeps, per side, the factor
(``K``: ``d_K x d_K``), its Riemannian momentum when :math:`\alpha_1 \neq 0` and, when
the factors are updated every ``T > 1`` steps, the cached product :math:`K K^\top` (see
:func:`singd_opt.preconditioner.cached_square`): :math:`c = 1 + [T > 1] + [\alpha_1
\neq 0]` matrices (:func:`copies_per_side`). Dense factors cost :math:`c\, d_K^2`
numbers against the weight's :math:`n = d_C d_K`, so a square ``4608 x 512`` convolution
(``512 -> 512``, 3x3) would keep :math:`3 \cdot 4609^2 \approx 64\,\text{M}` numbers
for its 2.4 M weights.

``auto_budget="adamw"`` (the recommended default) gives a block's factors what keeps
its whole state within AdamW's two numbers per weight: besides the factors the block
keeps the parameter's momentum buffer (:math:`n` numbers when ``momentum`` is not 0)
and the grafting moment (:math:`d_C + d_K` with ``graft="adafactor"``), so the factors
of both sides may keep

.. math::
    B = (2 - [\mu \neq 0])\, n - [\text{adafactor}]\,(d_C + d_K)

numbers (:func:`adamw_factor_budget`; numbers in the weight's dtype, so factors kept
in a wider ``preconditioner_dtype`` take more bytes). The narrower side chooses first, within
:math:`B / 2`; the wider side takes what the narrower one left
(:func:`choose_within_budget`). Layers are often far from square (a convolution's
``K`` side is its input channels times the kernel's positions), and a narrow side that
is dense within half the budget then leaves the wide side larger blocks than an even
split would. A side of dimension :math:`d` with :math:`a` numbers allowed is

.. math::
    \text{dense if } c\, d^2 \le a \text{ and } d \le b_\text{max}, \quad\text{else}\quad
    \text{block-diagonal with blocks of } b \le b_a = \min\!\left(\left\lfloor
    \tfrac{a}{c\, d} \right\rfloor, b_\text{max}\right) \ (b \ge 2),
    \quad\text{else diagonal,}

where :math:`b` is the largest size in :math:`(b_a / 2, b_a]` that divides the side's
width without a bias column (:math:`d - 1` for a ``K`` side with one), and :math:`b_a`
when none does: blocks that split attention heads or a convolution's input channels
across blocks precondition worse (measured on BERT, ``benchmarks/defaults_study.py``),
and the bias column then sits alone in the last block.

A number :math:`f > 0` (``auto_budget=0.25`` was the default before) instead gives
each side the same allowance, :math:`a = f\, n` (:func:`choose_structure`): both sides
together keep at most :math:`2 f` times the weight, and with the parameter's momentum
buffer (and the grafting moment) a block's state stays near :math:`(1 + 2 f)` times
the weight, below AdamW's 2 for :math:`f \le 1/2`.

:math:`b_\text{max}` = :data:`MAX_BLOCK`, above which a block's updates, cubic in its
size, cost far more than an AdamW step (measured in ``benchmarks/defaults_study.py
--timing``).

:func:`large_factor_warning` reports explicitly requested structures whose state
exceeds :data:`WARN_MULTIPLE` times the weight (and :data:`WARN_MIN_BYTES`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from singd_opt.user_warnings import warn_user
from structmat import get_structure


class PreconditionerBlockLike(Protocol):
    """What the warning needs of a block (see :class:`~singd_opt.blocks.PreconditionerBlock`)."""

    def oversized(self, multiple: float, min_bytes: int) -> str | None:
        """A line about the block if its preconditioner exceeds ``multiple`` x its weight."""


#: The structure name that asks for a choice (:func:`choose_within_budget`).
AUTO = "auto"
#: ``auto_budget``'s value that keeps every block's state within AdamW's (the default).
ADAMW_BUDGET = "adamw"
#: :math:`f`: with a number as ``auto_budget``, each side's factors may keep this
#: fraction of the weight's numbers (the default before ``"adamw"``).
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


def auto_structures(
    names: tuple[str, str],
    dims: tuple[int, int],
    copies: int,
    budget: str | float,
    momentum: bool,
    moment_numbers: int,
    bias_column: bool,
) -> tuple[str, str]:
    """Return ``names`` (of ``(K, C)``) with every ``"auto"`` side chosen within ``budget``.

    With :data:`ADAMW_BUDGET` the sides share :func:`adamw_factor_budget`
    (:func:`choose_within_budget`); with a number each side keeps that fraction of the
    weight (:func:`choose_structure`).

    Args:
        names: The structure names of ``(K, C)``, validated; ``"auto"`` asks for a choice.
        dims: :math:`(d_K, d_C)`.
        copies: :math:`c`, matrices kept per side (:func:`copies_per_side`).
        budget: The group's ``auto_budget``.
        momentum: Whether the parameters keep a momentum buffer.
        moment_numbers: The grafting rule's state (:func:`adamw_factor_budget`).
        bias_column: Whether the ``K`` side's last column is a bias.
    """
    if AUTO not in names:
        return names
    numel = dims[0] * dims[1]
    if budget != ADAMW_BUDGET:
        name_K, name_C = (
            choose_structure(dim, numel, copies, float(budget)) if name == AUTO else name
            for name, dim in zip(names, dims, strict=True)
        )
        return name_K, name_C
    fixed_K, fixed_C = (
        None if name == AUTO else copies * get_structure(name).stored_numbers(dim)
        for name, dim in zip(names, dims, strict=True)
    )
    factor_budget = adamw_factor_budget(numel, momentum, moment_numbers)
    chosen_K, chosen_C = choose_within_budget(
        dims, (fixed_K, fixed_C), factor_budget, copies, bias_column
    )
    return chosen_K or names[0], chosen_C or names[1]


def choose_structure(dim: int, weight_numel: int, copies: int, budget: float | None = None) -> str:
    r"""Return the structure name for one side with a fractional budget :math:`f`.

    Each side may keep :math:`f\, n` numbers (module docstring); the block size is
    :math:`b_a`, whether or not it divides the side.

    Args:
        dim: :math:`d`, the side's dimension.
        weight_numel: :math:`n = d_C d_K`, the numbers of the block's gradient matrix.
        copies: :math:`c`, matrices kept per side.
        budget: :math:`f`; ``None`` means :data:`AUTO_BUDGET`.

    Returns:
        ``"dense"``, ``"block{b}diagonal"`` or ``"diagonal"``.
    """
    budget = AUTO_BUDGET if budget is None else budget
    return _side_within(dim, budget * weight_numel / copies, prefer_divisors=False)


def adamw_factor_budget(weight_numel: int, momentum: bool, moment_numbers: int) -> int:
    r"""Return :math:`B`, the numbers a block's factors may keep within AdamW's state.

    AdamW keeps two numbers per weight; the block keeps the parameter's momentum
    buffer (``momentum``: :math:`n` numbers) and ``moment_numbers`` for its grafting
    rule besides its factors.

    Args:
        weight_numel: :math:`n = d_C d_K`, the numbers of the block's gradient matrix
            (weight and bias).
        momentum: Whether the parameters keep a momentum buffer.
        moment_numbers: The grafting rule's state (:math:`d_C + d_K` for
            ``"adafactor"``, 0 without one).
    """
    return (1 if momentum else 2) * weight_numel - moment_numbers


def choose_within_budget(
    dims: tuple[int, int],
    fixed: tuple[int | None, int | None],
    budget: int,
    copies: int,
    bias_column: bool,
) -> tuple[str | None, str | None]:
    r"""Return the structures of the ``"auto"`` sides of a block within ``budget`` numbers.

    The narrower ``"auto"`` side chooses within half the budget (less, if the wider
    side would not keep even a diagonal factor), the other within what is left
    (module docstring). A side that is not ``"auto"`` keeps its structure and its
    numbers are taken from the budget first. The result stays within ``budget``
    whenever diagonal factors do; otherwise the sides that do not fit are diagonal
    (a map with very few outputs or inputs, which ``elementwise_below`` usually trains
    element-wise).

    Args:
        dims: :math:`(d_K, d_C)`.
        fixed: Per side, the numbers (all copies) its given structure keeps, or
            ``None`` for an ``"auto"`` side.
        budget: :math:`B` (:func:`adamw_factor_budget`).
        copies: :math:`c`, matrices kept per side.
        bias_column: Whether the ``K`` side's last column is a bias (blocks then
            preferably divide :math:`d_K - 1`).

    Returns:
        Per side, the chosen structure name, or ``None`` for a side that was given.
    """
    left = budget - sum(numbers for numbers in fixed if numbers is not None)
    extra = (int(bias_column), 0)
    auto = sorted((dims[i], i) for i in (0, 1) if fixed[i] is None)
    names: list[str | None] = [None, None]
    for order, (dim, side) in enumerate(auto):
        share = left
        if order == 0 and len(auto) == 2:  # leave the wider side at least a diagonal
            share = min(left / 2, left - copies * auto[1][0])
        name = _side_within(dim, share / copies, extra[side])
        names[side] = name
        left -= copies * get_structure(name).stored_numbers(dim)
    return names[0], names[1]


def _side_within(dim: int, allowed: float, extra: int = 0, prefer_divisors: bool = True) -> str:
    """One side's structure whose matrix keeps at most ``allowed`` numbers.

    Dense, else blocks of :math:`b_a` (with ``prefer_divisors``, the largest size in
    :math:`(b_a / 2, b_a]` that divides ``dim - extra``, if any), else diagonal.
    """
    if dim * dim <= allowed and dim <= MAX_BLOCK:
        return "dense"
    widest = min(int(allowed // dim), MAX_BLOCK, dim)
    block = widest
    if prefer_divisors:
        block = next((b for b in range(widest, widest // 2, -1) if (dim - extra) % b == 0), widest)
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
