"""Whether a step is skipped, and what skipping it forgets.

A mixin of :class:`~singd_opt.SINGD`. Each process votes ``(proposals not finite,
scaler found non-finite)``: with ``skip_nonfinite`` every proposed tensor (and a
gradient scaler's ``found_inf``) is checked at once (:func:`~singd_opt.update.all_finite`,
one synchronisation). The votes, summed over the processes, skip the step on all of
them; a skipped step drops its curvature, choices and gradient scale, is counted in
``skipped_steps`` and reported (the 1st, 2nd, 4th, ... time).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from singd_opt.blocks import PreconditionerBlock, Proposal
from singd_opt.diagnostics import report_skipped_step, scaler_disagreement
from singd_opt.distributed.data_parallel import DataParallelSync
from singd_opt.grad_scale import GradScales
from singd_opt.update import all_finite


class StepSkipping:
    """The skip decision of an optimizer over preconditioner blocks.

    The optimizer provides the attributes below.
    """

    blocks: list[PreconditionerBlock]
    steps: int
    skipped_steps: int
    skip_nonfinite: bool
    _grad_scales: GradScales
    _sync: DataParallelSync | None

    def _local_votes(
        self, proposals: Mapping[str, Proposal], found_inf: Tensor | None
    ) -> Tensor | None:
        """This process's votes ``(proposals not finite, scaler found non-finite)``.

        ``None`` without ``skip_nonfinite`` (the scaler's finding is then voted on
        before the step, see :meth:`~singd_opt.SINGD.step`).
        """
        if not self.skip_nonfinite:
            return None
        sync = self._sync
        checked = [t for p in proposals.values() for t in p.checked]
        if found_inf is not None:  # infinite where the scaler found non-finite values
            checked.append(torch.where(found_inf > 0, torch.inf, 0.0).reshape(1))
        finite = bool(all_finite(sync.local_tensors(checked) if sync is not None else checked))
        found = found_inf is not None and (sync is not None or not finite)
        return torch.tensor([float(not finite), float(found and bool(found_inf > 0))])

    def _scaler_decision(self) -> tuple[bool, Tensor | None]:
        """Whether a gradient scaler's finding skips the step before it is computed.

        Returns ``(skipped, found_inf)``: without ``skip_nonfinite`` the finding alone
        decides now (:meth:`_scaler_skips`) and nothing is left to vote on; with it (or
        without a scaler) the step is computed and ``found_inf`` (or ``None``) joins its
        votes (:meth:`_local_votes`).
        """
        found_inf = self.__dict__.get("found_inf")
        if found_inf is None or self.skip_nonfinite:
            return False, found_inf
        return self._scaler_skips(found_inf), None

    def _scaler_skips(self, found_inf: Tensor) -> bool:
        """Without ``skip_nonfinite``: skip the step if a gradient scaler found non-finite.

        The scaler's finding alone decides, agreed over the processes; a skipped step is
        dropped, counted and reported here.
        """
        votes = torch.tensor([0.0, float(bool(found_inf > 0))])
        if self._sync is not None:
            votes = self._sync.agree(votes)
        if not self._skips(votes, []):
            return False
        self._skip(scaler=True)
        return True

    def _skips(self, votes: Tensor, working: list[PreconditionerBlock]) -> bool:
        """Whether the votes (summed over the processes) skip the step.

        Raises:
            RuntimeError: On every process, when the gradient scalers of some processes
                found non-finite gradients and others did not (their scales would
                drift apart); the step is dropped first.
        """
        processes = self._sync.collectives.world_size if self._sync is not None else 1
        disagreement = scaler_disagreement(votes, processes)
        if disagreement is not None:
            self._drop_step(working)
            raise RuntimeError(disagreement)
        return bool(votes.sum() > 0)

    def _drop_step(self, working: list[PreconditionerBlock]) -> None:
        """Forget this step's curvature, choices and gradient scale."""
        for block in [*self.blocks, *working]:
            block.drop_curvature()
        self._grad_scales.scales.pop(self.steps, None)

    def _skip(self, scaler: bool, working: list[PreconditionerBlock] | None = None) -> None:
        """Drop this step (its curvature, choices and gradient scale); count and report it."""
        self._drop_step(working or [])
        self.skipped_steps += 1
        report_skipped_step(self.steps, self.skipped_steps, scaler)
