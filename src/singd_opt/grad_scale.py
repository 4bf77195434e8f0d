r"""Bookkeeping of the gradient (loss) scale of mixed-precision training.

With a gradient scaler the loss of step :math:`t` is multiplied by :math:`s_t`, so
the output gradients the hooks see, and the ``.grad`` tensors, carry :math:`s_t`.
The scale of the current step is known only at :meth:`~singd_opt.SINGD.step` (a
:class:`torch.amp.GradScaler` hands it over then), after the backward pass. The
hooks therefore divide the output-gradient matrix by :math:`\sqrt{s_{t-1}}` (the
previous step's scale, the best guess and usually exact), which divides the
recorded :math:`H_C` by :math:`s_{t-1}`; the update multiplies it by
:math:`u = s_{t-1} / s_t^2`, leaving :math:`H_C / s_t^2` as required. Dividing early
keeps :math:`H_C` in range in low precision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from singd_opt.user_warnings import warn_user
from singd_opt.validation import check_init_grad_scale


class GradScales:
    """The gradient scale of each step (only the last two are kept).

    Attributes:
        scales: Scale by step number; ``-1`` holds the initial guess.
    """

    def __init__(self, init_grad_scale: float) -> None:
        self.scales: dict[int, float] = {-1: float(init_grad_scale)}
        self._warned_unscaled = False

    def set(self, step: int, grad_scale: float) -> None:
        """Set the scale of ``step``'s backward passes (see ``set_current_grad_scale``)."""
        check_init_grad_scale(grad_scale)
        self.scales[step] = float(grad_scale)
        if step == 0 and self.scales[-1] == 1.0 and grad_scale != 1.0:
            warn_user(
                f"gradient scale {grad_scale} at step 0 but init_grad_scale=1.0; passing "
                f"init_grad_scale={grad_scale} makes the first preconditioner update "
                "numerically safer"
            )

    def prescale(self, step: int) -> float:
        """The scale the hooks divide the recorded :math:`H_C` of ``step`` by."""
        return self.scales.get(step - 1, 1.0)

    def resolve(self, step: int, scaler_state: Mapping[str, Any]) -> float:
        """Record ``step``'s gradient scale; return the scale the ``.grad`` tensors carry.

        Args:
            step: The step number.
            scaler_state: The optimizer's ``__dict__``, where a
                :class:`torch.amp.GradScaler` puts ``grad_scale`` (``None`` once the
                gradients were un-scaled).
        """
        if "grad_scale" in scaler_state:
            scaler_scale = scaler_state["grad_scale"]
            if scaler_scale is None:  # the scaler already un-scaled the gradients
                if step not in self.scales:
                    if not self._warned_unscaled:
                        warn_user(
                            "the gradients were un-scaled before step(); call "
                            "optimizer.set_current_grad_scale(scaler.get_scale()) before "
                            "step() so the preconditioner is un-scaled exactly (assuming "
                            "the previous step's scale)"
                        )
                        self._warned_unscaled = True
                    self.scales[step] = self.scales.get(step - 1, 1.0)
                return 1.0
            scale = float(scaler_scale)
            if step not in self.scales:
                self.set(step, scale)
            return scale
        if step not in self.scales:
            self.scales[step] = 1.0
        return self.scales[step]

    def unscaling(self, step: int) -> float:
        """Factor :math:`u = s_{t-1} / s_t^2` that finishes un-scaling ``step``'s :math:`H_C`."""
        prev_scale = self.scales.get(step - 1, 1.0)
        scale = self.scales[step]
        if prev_scale == 1.0 and scale == 1.0:
            return 1.0
        return prev_scale / scale**2

    def forget_before(self, step: int) -> None:
        """Drop the scales of steps before ``step - 1``."""
        for t in [t for t in self.scales if t < step - 1]:
            del self.scales[t]

    def state(self) -> dict[int, float]:
        """The scales, for a checkpoint."""
        return dict(self.scales)

    @staticmethod
    def validated(scales: object) -> dict[int, float]:
        """Return checkpointed scales as a fresh dict.

        Raises:
            ValueError: If ``scales`` does not map ints to numbers.
        """
        if not isinstance(scales, dict) or not all(
            isinstance(k, int) and isinstance(v, int | float) for k, v in scales.items()
        ):
            raise ValueError("state_dict: _grad_scales must map ints to numbers")
        return {int(k): float(v) for k, v in scales.items()}
