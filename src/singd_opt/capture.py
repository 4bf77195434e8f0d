r"""Recording the inputs and output gradients of linear maps during the backward pass.

Two mechanisms hand a call's input and output gradient to a Kronecker block, both
active only on steps that record curvature (a flag per block; nothing but that flag
is read on other steps):

- **Module hooks.** A forward hook on a :class:`~torch.nn.Linear`, convolution or
  :class:`~torch.nn.Embedding` module saves the input and installs a tensor hook on
  the output, which receives the output gradient. (A module backward hook would
  break when the output feeds an in-place activation.)
- **Functional scopes.** Some weights never pass through their module's ``forward``:
  :class:`~torch.nn.MultiheadAttention` hands ``in_proj_weight`` and
  ``out_proj.weight`` to ``torch.nn.functional.linear``, and custom modules call
  ``functional.linear`` or ``functional.conv2d`` on their own parameters. While the
  module that owns such weights runs its forward pass on a recording step, the
  functions ``linear``, ``conv1d``, ``conv2d``, ``conv3d`` and ``embedding`` of
  :mod:`torch.nn.functional` are replaced by wrappers that call the original and
  record the call when its weight (or a block of rows of it) is a tracked parameter.
  Calls through ``torch.nn.functional`` (as ``F.linear`` or from inside
  :mod:`torch.nn.functional` itself) are seen; a function imported by name before
  (``from torch.nn.functional import linear``) or a ``torch.*`` built-in is not, and
  such a weight is reported at its first preconditioner update.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional
from torch.utils.hooks import RemovableHandle

#: Called in the backward pass as ``record(input, grad_output)``.
RecordFn = Callable[[Tensor, Tensor], None]


class Recordable(Protocol):
    """What a recording site needs from the block it feeds."""

    recording: bool


def _should_record(block: Recordable, output: Any) -> bool:
    return (
        block.recording
        and torch.is_grad_enabled()
        and isinstance(output, Tensor)
        and output.requires_grad
    )


def _record_gradient(record: RecordFn, saved_input: Tensor, grad_output: Tensor) -> None:
    """The tensor hook: hand the input and output gradient over."""
    record(saved_input, grad_output.detach())


def hook_output(output: Tensor, x: Tensor, record: RecordFn) -> None:
    """Call ``record(x, grad_output)`` when the gradient of ``output`` is computed."""
    output.register_hook(functools.partial(_record_gradient, record, x.detach()))


def install_module_hook(module: nn.Module, block: Recordable, record: RecordFn) -> RemovableHandle:
    """Record every call of ``module`` (its first positional input or ``input=``).

    Args:
        module: A :class:`~torch.nn.Linear`, convolution or embedding module.
        block: Its block; calls are recorded while ``block.recording`` is true.
        record: Receives ``(input, grad_output)`` in the backward pass.

    Returns:
        The hook's handle.
    """

    @torch._dynamo.disable
    def forward_hook(
        called: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        # a copy of the module (``copy.deepcopy`` copies hooks) is not recorded
        if called is not module or not _should_record(block, output):
            return
        x = args[0] if args else kwargs.get("input")
        if isinstance(x, Tensor):
            hook_output(output, x, record)

    return module.register_forward_hook(forward_hook, with_kwargs=True)


# --------------------------------------------------------------- functional calls
@dataclass(frozen=True)
class FunctionalCall:
    """One call of a functional linear map with a tracked weight.

    Attributes:
        function: ``"linear"``, ``"conv1d"``, ``"conv2d"``, ``"conv3d"`` or ``"embedding"``.
        x: The input.
        weight: The weight passed (the parameter, or a view of rows of it).
        row_range: The rows of the parameter the weight covers, ``(start, stop)``.
        output: The call's output.
        options: The call's other arguments (stride, padding, ... of a convolution).
    """

    function: str
    x: Tensor
    weight: Tensor
    row_range: tuple[int, int]
    output: Tensor
    options: dict[str, Any]


class FunctionalTarget(Protocol):
    """A tracked parameter's receiver of functional calls."""

    def capture(self, call: FunctionalCall) -> None:
        """Record ``call`` (install hooks on its output) if the owning blocks record now."""


_CONV_OPTIONS = ("stride", "padding", "dilation", "groups")
_ORIGINALS: dict[str, Callable[..., Tensor]] = {
    name: getattr(functional, name)
    for name in ("linear", "conv1d", "conv2d", "conv3d", "embedding")
}
_state = threading.local()
_patch_lock = threading.Lock()
_patch_depth = 0


class Scope:
    """The tracked weights of one owner's forward pass, as they are during that pass.

    Weights are looked up when the forward pass starts (``getattr(module, name)``),
    so a parameter that is swapped for another tensor during the forward pass (FSDP2
    gathers the full weight into a new tensor) is still found. A call's weight matches
    when it is the tracked tensor or a block of its rows (a view into its storage).
    """

    def __init__(self, weights: list[tuple[Tensor, FunctionalTarget]]) -> None:
        self.by_id = {id(weight): (weight, target) for weight, target in weights}
        self.weights = weights

    def match(self, weight: Tensor) -> tuple[FunctionalTarget, tuple[int, int]] | None:
        """Return the target of ``weight`` and the rows of the tracked tensor it covers."""
        found = self.by_id.get(id(weight))
        if found is not None:
            return found[1], (0, weight.shape[0])
        if weight._base is None or weight.ndim == 0:
            return None
        storage = weight.untyped_storage().data_ptr()
        for tracked, target in self.weights:
            if (
                tracked.ndim == weight.ndim
                and tracked.untyped_storage().data_ptr() == storage
                and tracked.stride() == weight.stride()
                and tracked.shape[1:] == weight.shape[1:]
            ):
                offset = weight.storage_offset() - tracked.storage_offset()
                start, remainder = divmod(offset, tracked.stride(0))
                if remainder == 0 and start >= 0 and start + weight.shape[0] <= tracked.shape[0]:
                    return target, (start, start + weight.shape[0])
        return None


def _active_scopes() -> list[Scope]:
    scopes = getattr(_state, "scopes", None)
    if scopes is None:
        scopes = _state.scopes = []
    return scopes


def _dispatch(function: str, x: Any, weight: Any, output: Tensor, options: dict[str, Any]) -> None:
    if not isinstance(weight, Tensor) or not isinstance(x, Tensor):
        return
    if not (torch.is_grad_enabled() and output.requires_grad):
        return
    for scope in reversed(_active_scopes()):
        found = scope.match(weight)
        if found is not None:
            target, rows = found
            target.capture(FunctionalCall(function, x, weight, rows, output, options))
            return


def _recording_linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    output = _ORIGINALS["linear"](input, weight, bias)
    _dispatch("linear", input, weight, output, {})
    return output


def _make_recording_conv(name: str) -> Callable[..., Tensor]:
    original = _ORIGINALS[name]

    def recording_conv(
        input: Tensor, weight: Tensor, bias: Tensor | None = None, *args: Any, **kwargs: Any
    ) -> Tensor:
        output = original(input, weight, bias, *args, **kwargs)
        options = dict(zip(_CONV_OPTIONS, args, strict=False))
        options.update({k: v for k, v in kwargs.items() if k in _CONV_OPTIONS})
        _dispatch(name, input, weight, output, options)
        return output

    recording_conv.__name__ = name
    return recording_conv


def _recording_embedding(input: Tensor, weight: Tensor, *args: Any, **kwargs: Any) -> Tensor:
    output = _ORIGINALS["embedding"](input, weight, *args, **kwargs)
    _dispatch("embedding", input, weight, output, {})
    return output


_RECORDING: dict[str, Callable[..., Tensor]] = {
    "linear": _recording_linear,
    "conv1d": _make_recording_conv("conv1d"),
    "conv2d": _make_recording_conv("conv2d"),
    "conv3d": _make_recording_conv("conv3d"),
    "embedding": _recording_embedding,
}


@contextmanager
def recording_functionals(scope: Scope) -> Iterator[None]:
    """Record the functional calls whose weight ``scope`` tracks."""
    global _patch_depth
    scopes = _active_scopes()
    scopes.append(scope)
    with _patch_lock:
        if _patch_depth == 0:
            for name, wrapper in _RECORDING.items():
                setattr(functional, name, wrapper)
        _patch_depth += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_depth -= 1
            if _patch_depth == 0:
                for name, original in _ORIGINALS.items():
                    setattr(functional, name, original)
        scopes.pop()


def install_functional_scope(
    owner: nn.Module,
    targets: list[tuple[nn.Module, str, FunctionalTarget]],
    is_recording: Callable[[], bool],
    before: Callable[[tuple[Any, ...], dict[str, Any]], None] | None = None,
) -> list[RemovableHandle]:
    """Record the functional calls of ``targets`` made during ``owner``'s forward pass.

    Args:
        owner: The module whose forward pass uses the tracked weights.
        targets: ``(module, attribute, receiver)``: the weight ``getattr(module,
            attribute)`` (read when the forward pass starts) and its receiver.
        is_recording: Whether any target records now (read once per forward pass).
        before: Called with the forward's ``(args, kwargs)`` before it runs on a
            recording step (e.g. to note the batch layout).

    Returns:
        The handles of the two module hooks.
    """
    contexts: list[Any] = []

    @torch._dynamo.disable
    def pre_hook(called: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if called is owner and torch.is_grad_enabled() and is_recording():
            if before is not None:
                before(args, kwargs)
            weights = [(getattr(module, name), target) for module, name, target in targets]
            context = recording_functionals(Scope([(w, t) for w, t in weights if w is not None]))
            context.__enter__()
            contexts.append(context)
        else:
            contexts.append(None)

    @torch._dynamo.disable
    def post_hook(
        called: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        context = contexts.pop() if contexts else None
        if context is not None:
            context.__exit__(None, None, None)

    return [
        owner.register_forward_pre_hook(pre_hook, with_kwargs=True),
        owner.register_forward_hook(post_hook, with_kwargs=True, always_call=True),
    ]
