"""Which steps record curvature, and handing the recorded calls to the blocks.

A mixin of :class:`~singd_opt.SINGD`: every ``T``-th step of a block's group records
(the step count modulo ``T``); the recording forward pass hands each call's input and
output gradient to the block (:meth:`CurvatureRecording._record`), with the part of the
gradient scale that is divided out at once (:mod:`singd_opt.grad_scale`).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from singd_opt.blocks import PreconditionerBlock
from singd_opt.grad_scale import GradScales


class CurvatureRecording:
    """The recording switch and receiver of an optimizer over preconditioner blocks.

    The optimizer provides the attributes below.
    """

    blocks: list[PreconditionerBlock]
    steps: int
    param_groups: list[dict[str, Any]]
    _grad_scales: GradScales
    _recording_any: bool
    hook_handles: list[Any]

    def remove_hooks(self) -> None:
        """Detach the optimizer's hooks from the model (no more curvature is recorded)."""
        for handle in self.hook_handles:
            handle.remove()
        self.hook_handles = []

    def _set_recording(self) -> None:
        """Tell every block whether the coming step records curvature.

        A step that records runs the model's forward pass eagerly, also under
        ``torch.compile`` (see :class:`~singd_opt.forward_switch.MapCapture`).
        """
        for block in self.blocks:
            block.recording = self.steps % self.param_groups[block.group_index]["T"] == 0
        self._recording_any = any(block.recording for block in self.blocks)

    def _is_recording(self) -> bool:
        return self._recording_any

    def _record(self, block: PreconditionerBlock, x: Tensor, grad_output: Tensor) -> None:
        """Hand one call's input and output gradient to ``block``."""
        group = self.param_groups[block.group_index]
        block.record(x, grad_output, group, self._grad_scales.prescale(self.steps))

    def set_current_grad_scale(self, grad_scale: float) -> None:
        """Set the gradient (loss) scale of the current step's backward passes.

        Needed only when the loss is scaled without handing the scale to
        :meth:`step` through :class:`torch.amp.GradScaler` (which does so itself),
        for example after ``scaler.unscale_(optimizer)``.

        Args:
            grad_scale: The factor the loss was multiplied with.
        """
        self._grad_scales.set(self.steps, grad_scale)
