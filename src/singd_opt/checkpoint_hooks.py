"""The optimizer's checkpoint methods: the state-dict hooks over :mod:`singd_opt.checkpoint`.

:class:`CheckpointHooks` is a mixin of :class:`~singd_opt.SINGD`: it adds the blocks'
state, the step counts and the gradient scales to ``state_dict()``, checks and loads
them in ``load_state_dict()`` (nothing changes when a check fails), and gathers
sharded parameters' state for :meth:`CheckpointHooks.full_state_dict`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from singd_opt import checkpoint
from singd_opt.blocks import PreconditionerBlock
from singd_opt.grad_scale import GradScales
from singd_opt.user_warnings import warn_user


class CheckpointHooks:
    """State-dict hooks of an optimizer that keeps its state in preconditioner blocks.

    The optimizer provides the attributes below and ``_set_recording()``; it calls
    :meth:`_install_checkpoint_hooks` once at the end of its construction.
    """

    blocks: list[PreconditionerBlock]
    steps: int
    skipped_steps: int
    state: Any
    param_groups: list[dict[str, Any]]
    _grad_scales: GradScales
    _sync: Any
    _prepared_load: checkpoint.PreparedLoad | None

    _set_recording: Callable[[], None]  # see :class:`singd_opt.recording.CurvatureRecording`

    def _install_checkpoint_hooks(self) -> None:
        """Register the state-dict hooks (the optimizer is a ``torch.optim.Optimizer``)."""
        self._prepared_load = None
        self.register_state_dict_post_hook(type(self)._add_checkpoint_entry)  # type: ignore[attr-defined]
        self.register_load_state_dict_pre_hook(type(self)._prepare_load)  # type: ignore[attr-defined]
        self.register_load_state_dict_post_hook(type(self)._finish_load)  # type: ignore[attr-defined]

    def full_state_dict(self) -> dict[str, Any]:
        """Return :meth:`state_dict` with the whole tensors of sharded (FSDP2) parameters.

        Loads into an optimizer on any number of processes, sharded or not. With FSDP2
        this gathers the shards: every process must call it. Without sharding it equals
        :meth:`state_dict`.
        """
        return checkpoint.full_tensors(self.state_dict())  # type: ignore[attr-defined]

    def _add_checkpoint_entry(self, state: dict[str, Any]) -> dict[str, Any]:
        """State-dict post hook: add the blocks' state, steps and gradient scales.

        With several processes the curvature recorded since the last step is this
        process's share only; it is left out (with a warning when there is some), so
        that every process saves the same state: the one after the last step.
        """
        settled = self._sync is not None
        if settled and any(block.has_curvature() for block in self.blocks):
            warn_user(checkpoint.pending_curvature_message(self.steps))
        saved = checkpoint.SavedState(
            self.steps, self.skipped_steps, self._grad_scales.state(), self.blocks, settled
        )
        return checkpoint.add_entry(state, saved)

    def _prepare_load(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Load-state-dict pre hook: check everything, prepare the blocks' loading."""
        state, self._prepared_load = checkpoint.prepare_load(
            state_dict, self.param_groups, self.blocks
        )
        return state

    def _finish_load(self) -> None:
        """Load-state-dict post hook: apply what :meth:`_prepare_load` prepared."""
        prepared, self._prepared_load = self._prepared_load, None
        if prepared is not None:
            self.blocks[:] = [load() for load in prepared.loaders]
            self.steps = prepared.steps
            self.skipped_steps = prepared.skipped_steps
            self._grad_scales.scales = prepared.grad_scales
        checkpoint.shard_parameter_state(self.state)
        self._set_recording()
