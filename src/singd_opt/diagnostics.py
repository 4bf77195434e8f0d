"""Warnings about what silently goes wrong: foreign updates, unrecorded layers.

**Foreign updates.** With the reference optimizer, code commonly pairs SINGD with a
second optimizer for the parameters the reference does not train. Since SINGD trains
every parameter by default, such code would update those parameters twice. Every
in-place change of a tensor increments its version counter; :class:`ForeignUpdateWatch`
remembers the versions after each step and warns (once) when parameters changed
between two steps in two consecutive steps, which a second optimizer does and a
one-off change (loading a checkpoint into the model) does not.

**Skipped steps.** :func:`report_skipped_step` reports the steps the optimizer
skips, sparsely.

**Unrecorded layers.** A Kronecker block whose weight no forward pass of the
optimizer's model uses as a linear map (a layer called outside that model's forward
pass) records no curvature, so its ``K`` and ``C``
would silently stay the identity. :func:`warn_unrecorded` names such blocks (once)
at their first update step; with several processes a block counts as recorded when
any process recorded it (see :meth:`~singd_opt.blocks.PreconditionerBlock.decide`).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import Tensor, nn

from singd_opt.blocks import PreconditionerBlock
from singd_opt.user_warnings import warn_user


class ForeignUpdateWatch:
    """Warns when parameters are changed in place outside the optimizer, step after step."""

    def __init__(self, blocks: Iterable[PreconditionerBlock]) -> None:
        named: dict[nn.Parameter, str] = {}
        for block in blocks:
            for rows in block.params:
                named.setdefault(rows.param, block.name)
        self._names = named
        self._versions: dict[nn.Parameter, int] | None = None
        self._changed_before = False
        self._warned = False

    def remember(self) -> None:
        """Note the parameters' versions (after a step)."""
        if not self._warned:
            self._versions = {param: param._version for param in self._names}

    def check(self) -> None:
        """Compare with the versions noted after the previous step (before a step)."""
        if self._warned or self._versions is None:
            return
        changed = sorted(
            {name for param, name in self._names.items() if param._version != self._versions[param]}
        )
        if changed and self._changed_before:
            self._warned = True
            warn_user(
                f"parameters of {changed[:5]}{' ...' if len(changed) > 5 else ''} were changed "
                "in place outside SINGD.step in two consecutive steps; if another optimizer "
                "also trains them they are updated twice (SINGD trains every parameter it is "
                "given; pass train_all_parameters=False to train only Linear and Conv layers, "
                "or give SINGD only its parameters)"
            )
        self._changed_before = bool(changed)


def warn_unrecorded(blocks: Iterable[PreconditionerBlock], warned: set[str]) -> None:
    """Warn once about blocks that have a gradient but never recorded curvature.

    Args:
        blocks: The blocks doing this step's work, their ``recording`` flags set.
        warned: Names already reported (updated in place).
    """
    missing = [b.name for b in blocks if b.name not in warned and b.lacks_curvature()]
    if missing:
        warned.update(missing)
        warn_user(
            f"no curvature was recorded for {missing} before their first preconditioner "
            "update (their K and C stay the identity until it is); no forward pass of the "
            "optimizer's model used the weight as a linear map"
        )


def report_skipped_step(step: int, skipped: int, scaler: bool) -> None:
    """Warn about a skipped step: the 1st, 2nd, 4th, 8th, ... of a run.

    Args:
        step: The number of the skipped step (steps taken before it).
        skipped: Steps skipped so far, this one included.
        scaler: Whether a gradient scaler found the gradients non-finite (else the
            optimizer's own check did).
    """
    if skipped & (skipped - 1):
        return
    reason = (
        "the gradient scaler found non-finite gradients"
        if scaler
        else "a preconditioned gradient or a new preconditioner is not finite"
    )
    warn_user(
        f"{reason}; skipping step {step} (the state is unchanged; {skipped} step(s) "
        "skipped so far, see optimizer.skipped_steps)"
    )


def scaler_disagreement(votes: Tensor, processes: int) -> str | None:
    """The error message when only some processes' gradient scalers found non-finite values.

    Their scales would drift apart: a scaler checks its own process's gradients before
    ``step()``.

    Args:
        votes: The summed votes ``(proposals not finite, scaler found non-finite)``.
        processes: The number of processes that voted.

    Returns:
        The message, or ``None`` when the scalers agree.
    """
    scalers = int(votes[1])
    if not 0 < scalers < processes:
        return None
    return (
        f"the gradient scalers of {scalers} of {processes} processes found "
        "non-finite gradients (found_inf) and the others did not, so their scales "
        "would drift apart: a scaler checks this process's own gradients before "
        "step(); when SINGD averages the gradients (a model not wrapped in "
        "DistributedDataParallel or FSDP2), call optimizer.synchronize_gradients() "
        "before scaler.unscale_(optimizer) and scaler.step(optimizer)"
    )
