"""The switch that runs a model's forward pass under :class:`~singd_opt.map_calls.MapCallMode`.

On a recording step the model's forward pass runs eagerly, excluded from
``torch.compile`` tracing, with the torch function mode that finds its linear maps
(:mod:`singd_opt.map_calls`); on other steps the model's own ``forward`` runs. A
tensor hook that hands an output gradient to the optimizer has side effects Dynamo
cannot trace without compiled autograd, so tracing the recording would split the
model's graph at every linear map; the switch costs one graph break instead.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from singd_opt.map_calls import MapCallMode, MapTarget, UntrackedParameters


class MapCapture:
    """Runs a model's forward pass under :class:`MapCallMode` on recording steps.

    The model's ``forward`` is replaced (as an instance attribute) by a switch that
    reads the recording flag: on other steps it calls the original ``forward``; on a
    recording step (with gradients enabled) it runs the original ``forward`` eagerly,
    excluded from ``torch.compile`` tracing, under the mode. A compiled model thus
    keeps its graphs (the switch reads one flag inside them) and the recording step
    costs one graph break on the first trace, never a split of the model's graph.
    A copy of the model (``copy.deepcopy``) calls its own ``forward`` and records
    nothing.

    Attributes:
        targets: ``(module, attribute, target)``: the tracked tensor is
            ``getattr(module, attribute)``, read when the forward pass starts (so a
            parameter replaced by another tensor for the pass, as FSDP2 does, is found).
    """

    _count = 0

    def __init__(
        self,
        model: nn.Module,
        targets: list[tuple[nn.Module, str, MapTarget]],
        is_recording: Callable[[], bool],
    ) -> None:
        self.model = model
        self.targets = targets
        self.is_recording = is_recording
        self.handles: list[_ForwardSwitch] = []
        self.untracked = UntrackedParameters()

    def install(self) -> list[_ForwardSwitch]:
        """Replace the model's ``forward`` by the recording switch; return its handle."""
        if not self.targets:
            return []
        MapCapture._count += 1
        handle = _ForwardSwitch(self, MapCapture._count)
        self.handles = [handle]
        return [handle]

    def drop(self, keep: Callable[[MapTarget], bool]) -> None:
        """Stop tracking the targets ``keep`` rejects; restore ``forward`` when none is left."""
        self.targets = [t for t in self.targets if keep(t[2])]
        if not self.targets:
            for handle in self.handles:
                handle.remove()
            self.handles = []

    def records_now(self) -> bool:
        """Whether the coming forward pass records (gradients on, a recording step)."""
        return torch.is_grad_enabled() and self.is_recording()

    def _tracked(self) -> list[tuple[Tensor, MapTarget]]:
        tracked = [(getattr(m, a, None), t) for m, a, t in self.targets]
        return [(w, t) for w, t in tracked if isinstance(w, Tensor)]

    def batch_of(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int | None:
        """The leading size of the model's first tensor argument, ``None`` without one."""
        first = next(
            (v for v in (*args, *kwargs.values()) if isinstance(v, Tensor) and v.ndim > 0), None
        )
        return first.shape[0] if first is not None else None


class _ForwardSwitch:
    """The replaced ``forward`` of a model; :meth:`remove` restores the original."""

    def __init__(self, capture: MapCapture, number: int) -> None:
        model = capture.model
        self.model = model
        self.inner_name = f"_singd_forward_{number}"
        self.capture_name = f"_singd_capture_{number}"
        self.had_forward = "forward" in model.__dict__
        self.previous = model.__dict__.get("forward")
        object.__setattr__(model, self.inner_name, model.forward)
        object.__setattr__(model, self.capture_name, weakref.ref(capture))
        object.__setattr__(
            model, "forward", types.MethodType(_switch(self.inner_name, self.capture_name), model)
        )

    def remove(self) -> None:
        """Restore the model's ``forward`` (if this switch is still the outermost one)."""
        model = self.model
        current = model.__dict__.get("forward")
        if (
            getattr(current, "__func__", None) is not None
            and getattr(current.__func__, "inner_name", None) == self.inner_name
        ):
            if self.had_forward:
                object.__setattr__(model, "forward", self.previous)
            else:
                model.__dict__.pop("forward", None)
        model.__dict__.pop(self.capture_name, None)


def _switch(inner_name: str, capture_name: str) -> Callable[..., Any]:
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        inner = getattr(self, inner_name)
        reference = self.__dict__.get(capture_name)
        capture = reference() if reference is not None else None
        if capture is not None and capture.model is self and capture.records_now():
            return _recording_forward(capture, inner, args, kwargs)
        return inner(*args, **kwargs)

    forward.inner_name = inner_name  # type: ignore[attr-defined]
    return forward


@torch._dynamo.disable
def _recording_forward(
    capture: MapCapture, inner: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run ``inner`` eagerly under :class:`MapCallMode`."""
    mode = MapCallMode(capture._tracked, capture.batch_of(args, kwargs), capture.untracked)
    try:
        with mode:
            return inner(*args, **kwargs)
    finally:
        mode.known.clear()
        mode.keep.clear()
        mode.storages.clear()
