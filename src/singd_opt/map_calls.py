r"""Finding the linear maps of a forward pass by what it computes.

On a step that records curvature, the forward pass of the model runs under a
:class:`~torch.overrides.TorchFunctionMode` (:class:`MapCallMode`). It sees every
call of a torch function, however the function is reached (``F.linear``, a
``linear`` imported by name, ``torch.addmm``, ``torch.mm``, ``torch.matmul``, the
``@`` operator, ``F.embedding``, ``F.conv1d/2d/3d``) and reads from the call which
tracked parameter is the matrix of a linear map and in which orientation:

=====================================  =========================================
call                                   map (weight :math:`W` of ``(d_out, d_in)``)
=====================================  =========================================
``linear(x, W, b)``, ``x @ W.T``       :math:`y = x W^\top + b`
``addmm(b, x, P)``, ``x @ P``, ``mm``  :math:`W = P^\top`: ``P`` is ``(d_in, d_out)``
``P @ x`` with ``x`` of ``(d_in, n)``  :math:`W = P`, inputs are the columns of ``x``
``embedding(ids, E)``                  an embedding (:mod:`singd_opt.layers.embedding`)
``conv{1,2,3}d(x, W, b, ...)``         a convolution with the call's geometry
=====================================  =========================================

Transposed views (``W.T``, ``W.t()``, ``W.mT``) and casts (``W.to(dtype)``) of a
tracked parameter are followed to the parameter, and a block of its rows (a view
into its storage) is recognised. Each such call is a :class:`MapCall` handed to the
parameter's :class:`MapTarget`, which installs the tensor hook that records the
output gradient. Any other function that uses a tracked parameter with gradients
enabled (``einsum``, an element-wise product, ...) is reported to the target as an
*other use* (:meth:`MapTarget.other_use`); reshaping views are passed over.

The mode is active only during the model's forward pass on recording steps
(:mod:`singd_opt.forward_switch` switches the model's ``forward``); on other steps the switch
reads one flag. The recording forward pass runs eagerly, also in a compiled model:
a tensor hook that hands the output gradient to the optimizer has side effects
Dynamo cannot trace without compiled autograd, so tracing the recording would split
the model's graph at every linear map. The mode does not see inside functions that
dispatch torch functions themselves after their own override check (such as
``F.multi_head_attention_forward``); :class:`~torch.nn.MultiheadAttention` is
therefore recorded by the functional scopes of :mod:`singd_opt.capture`.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.nn import functional
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class MapCall:
    r"""One call of a linear map whose matrix is (a view of) a tracked parameter.

    Attributes:
        function: ``"linear"``, ``"embedding"``, ``"conv1d"``, ``"conv2d"`` or ``"conv3d"``.
        transposed: Whether the parameter is used as :math:`W^\top` (``x @ P``: the
            parameter is ``(d_in, d_out)``).
        row_range: The rows ``(start, stop)`` of the parameter the call uses.
        x: The input, with features in the last dimension (linear) or second
            dimension (convolution); token indices for an embedding.
        output: The output (its gradient is the output gradient).
        bias: The bias operand of the call (``linear``, ``addmm``, convolutions), or ``None``.
        layout: Brings the output gradient to the layout of ``x`` (features last).
        options: A convolution's ``stride``, ``padding``, ``dilation``, ``groups``.
        name: The torch function's name (for messages).
    """

    function: str
    transposed: bool
    row_range: tuple[int, int]
    x: Tensor
    output: Tensor
    bias: Tensor | None = None
    layout: Callable[[Tensor], Tensor] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    name: str = ""


class MapTarget(Protocol):
    """The receiver of a tracked parameter's calls."""

    def capture(self, call: MapCall) -> None:
        """Record ``call`` (install hooks on its output) if its block records now."""

    def other_use(self, name: str) -> None:
        """Note a use of the parameter that is not a linear map (``name``: the function)."""


def _name(func: Any) -> str:
    name = getattr(func, "__name__", None) or getattr(func, "__qualname__", None) or repr(func)
    module = getattr(func, "__module__", None) or ""
    if module.startswith("torch.nn.functional") or module == "torch._C._nn":
        return f"torch.nn.functional.{name}"
    if module.startswith("torch"):
        return f"torch.{name}"
    return f"Tensor.{name}"


# calls of the form f(x, W): the second operand is the right factor
_MATMULS = {torch.matmul, torch.mm, Tensor.matmul, Tensor.mm, Tensor.__matmul__}
_ADDMMS = {torch.addmm, Tensor.addmm}
_CONVS = {torch.conv1d: "conv1d", torch.conv2d: "conv2d", torch.conv3d: "conv3d"}
_CONV_OPTIONS = ("stride", "padding", "dilation", "groups")
# followed to the parameter: transposes and casts
_TRANSPOSES = {Tensor.t, Tensor.T.__get__, Tensor.mT.__get__, Tensor.transpose}
_CASTS = {Tensor.to, Tensor.type_as, Tensor.float, Tensor.half, Tensor.bfloat16, Tensor.double}
# reshaping views and calls without a gradient path to the output: not uses
_PASSED = {
    Tensor.view,
    Tensor.reshape,
    Tensor.__getitem__,
    Tensor.chunk,
    Tensor.split,
    Tensor.unbind,
    Tensor.narrow,
    Tensor.contiguous,
    Tensor.detach,
    Tensor.permute,
    Tensor.unflatten,
    Tensor.flatten,
    torch.chunk,
    torch.split,
    torch.unbind,
    torch.narrow,
}


class UntrackedParameters:
    """The parameters a forward pass found to be no tracked tensor, kept across passes.

    The parameters of a model that are not tracked (a normalisation layer's, a bias)
    each cost the lookup of every tracked tensor on their first sight; remembered
    here, they cost it once, not once per pass. The entries hold while the tracked
    tensors stay the same objects: they are forgotten when a pass starts with other
    tracked tensors than the one before, or when the tracked tensors change during
    a pass (FSDP2 swaps in the gathered weights module by module).
    """

    def __init__(self) -> None:
        self.tracked: tuple[int, ...] = ()
        self.parameters: dict[int, weakref.ref[Tensor]] = {}

    def start(self, tracked: tuple[int, ...]) -> None:
        """Begin a pass whose tracked tensors are ``tracked`` (ids)."""
        if tracked != self.tracked:
            self.forget()
            self.tracked = tracked

    def forget(self) -> None:
        """Drop every entry."""
        self.parameters.clear()

    def remembers(self, param: Tensor) -> bool:
        """Whether ``param`` was found untracked (the same object, not a reused id)."""
        reference = self.parameters.get(id(param))
        return reference is not None and reference() is param

    def remember(self, param: Tensor) -> None:
        """Note that ``param`` is no tracked tensor."""
        self.parameters[id(param)] = weakref.ref(param)


@dataclass
class _Tracked:
    """A tensor of the forward pass that is a tracked parameter (or a view/cast of it)."""

    param: Tensor
    target: MapTarget
    transposed: bool


class MapCallMode(TorchFunctionMode):
    """Hands the linear-map calls of tracked parameters to their targets (module docstring).

    Args:
        lookup: Returns ``(tensor, target)`` for every tracked parameter, as the
            tensors are now; called at the start and again when a parameter that is
            not known appears (FSDP2 swaps in the gathered weights module by module).
        batch: The batch size of the model's input (its first tensor argument), or
            ``None``. A linear map applied to a flattened ``(batch * positions, d)``
            input is recorded as ``(batch, positions, d)``, so that its loss terms and
            ``"reduce"`` averages are those of the same map on the unflattened input.
        untracked: The parameters found to be no tracked tensor; the caller may keep
            it across passes, so that each such parameter (a normalisation layer's, a
            bias) costs one lookup in all instead of one per pass.
    """

    def __init__(
        self,
        lookup: Callable[[], list[tuple[Tensor, MapTarget]]],
        batch: int | None = None,
        untracked: UntrackedParameters | None = None,
    ) -> None:
        super().__init__()
        self.lookup = lookup
        self.batch = batch
        self.known: dict[int, _Tracked] = {}
        self.keep: list[Tensor] = []  # derived tensors stay alive while their ids are known
        self.storages: dict[int, list[_Tracked]] = {}
        self.untracked = UntrackedParameters() if untracked is None else untracked
        self._started = False
        self._refresh()
        self._started = True
        self.untracked.start(tuple(self.known))

    def _refresh(self) -> None:
        for tensor, target in self.lookup():
            if id(tensor) not in self.known:
                if self._started:  # the tracked tensors changed during the pass (FSDP2)
                    self.untracked.forget()
                entry = _Tracked(tensor, target, False)
                self.known[id(tensor)] = entry
                self.keep.append(tensor)
                key = _storage(tensor)
                if key is not None:
                    self.storages.setdefault(key, []).append(entry)

    def _is_untracked(self, param: Tensor) -> bool:
        """Whether the parameter ``param``, not known so far, is no tracked tensor.

        Answered by a lookup, or by :attr:`untracked` when an earlier one found it.
        """
        if self.untracked.remembers(param):
            return True
        self._refresh()
        if id(param) in self.known:
            return False
        self.untracked.remember(param)
        return True

    # ---------------------------------------------------------------- matching
    def match(self, t: Any) -> tuple[_Tracked, tuple[int, int]] | None:
        """Return the tracked parameter behind ``t`` and the rows it covers."""
        if not isinstance(t, Tensor):
            return None
        entry = self.known.get(id(t))
        parameter = entry is None and t.grad_fn is None and isinstance(t, nn.Parameter)
        if parameter and not self._is_untracked(t):
            entry = self.known[id(t)]
        if entry is not None:
            return entry, (0, entry.param.shape[0])
        if t._base is None or t.ndim == 0 or not self.storages:
            return None
        for entry in self.storages.get(_storage(t), ()):
            p = entry.param
            if p.ndim != t.ndim or p.ndim == 0:
                continue
            transposed = t.shape == p.shape[::-1] and t.stride() == p.stride()[::-1]
            if p.ndim == 2 and transposed and t.storage_offset() == p.storage_offset():
                return _Tracked(p, entry.target, not entry.transposed), (0, p.shape[0])
            if p.stride() == t.stride() and p.shape[1:] == t.shape[1:]:
                start, rest = divmod(t.storage_offset() - p.storage_offset(), p.stride(0))
                if rest == 0 and start >= 0 and start + t.shape[0] <= p.shape[0]:
                    return entry, (start, start + t.shape[0])
        return None

    def _derive(self, output: Any, entry: _Tracked, transposed: bool) -> None:
        if isinstance(output, Tensor):
            self.known[id(output)] = _Tracked(entry.param, entry.target, transposed)
            self.keep.append(output)

    # ------------------------------------------------------------------- calls
    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        output = func(*args, **kwargs)
        if not (isinstance(output, Tensor) and output.requires_grad):
            return output
        self._dispatch(func, args, kwargs, output)
        return output

    def _dispatch(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor
    ) -> None:
        if func is functional.linear:
            self._linear(args, kwargs, output)
        elif func in _ADDMMS:
            self._addmm(func, args, kwargs, output)
        elif func in _MATMULS or func is Tensor.__rmatmul__:
            left, right = args[0], args[1] if len(args) > 1 else kwargs.get("other")
            if func is Tensor.__rmatmul__:
                left, right = right, left
            self._product(func, left, right, None, output)
        elif func is functional.embedding:
            found = self.match(args[1] if len(args) > 1 else kwargs.get("weight"))
            if found is not None:
                entry, rows = found
                x = args[0] if args else kwargs["input"]
                if entry.transposed:
                    entry.target.other_use(_name(func))
                else:
                    entry.target.capture(
                        MapCall("embedding", False, rows, x, output, name=_name(func))
                    )
            self._others(func, args[2:], kwargs, skip=("input", "weight"))
        elif func in _CONVS:
            self._conv(func, args, kwargs, output)
        elif func in _TRANSPOSES:
            found = self.match(args[0])
            if found is not None and found[0].param.ndim == 2:
                self._derive(output, found[0], not found[0].transposed)
        elif func in _CASTS:
            found = self.match(args[0])
            if found is not None:
                self._derive(output, found[0], found[0].transposed)
        elif func not in _PASSED:
            self._others(func, args, kwargs)

    def _others(
        self, func: Any, args: Any, kwargs: dict[str, Any], skip: tuple[str, ...] = ()
    ) -> None:
        """Report every tracked parameter among the arguments as an other use."""
        values = [*args, *(v for k, v in kwargs.items() if k not in skip)] if kwargs else args
        for value in values:
            if isinstance(value, Tensor):
                found = self.match(value)
                if found is not None:
                    found[0].target.other_use(_name(func))
            elif isinstance(value, list | tuple):
                self._others(func, value, {})

    def _linear(self, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor) -> None:
        x = args[0] if args else kwargs.get("input")
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        found = self.match(weight)
        if found is not None and isinstance(x, Tensor):
            entry, rows = found
            x, layout = self._unflattened(x)
            entry.target.capture(
                MapCall("linear", entry.transposed, rows, x, output, bias, layout, name="linear")
            )
        self._others(functional.linear, (x, bias), {})

    def _unflattened(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor] | None]:
        """``x`` as ``(batch, positions, d)`` if it is a flattened ``(batch * positions, d)``."""
        batch = self.batch
        if batch is None or x.ndim != 2 or x.shape[0] == batch or x.shape[0] % batch:
            return x, None
        return x.unflatten(0, (batch, -1)), functools.partial(_unflatten_rows, batch=batch)

    def _addmm(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor
    ) -> None:
        names = ("input", "mat1", "mat2")
        bias, left, right = (
            args[i] if len(args) > i else kwargs.get(name) for i, name in enumerate(names)
        )
        if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
            self._others(func, args, kwargs)
            return
        self._product(func, left, right, bias, output)

    def _product(self, func: Any, left: Any, right: Any, bias: Any, output: Tensor) -> None:
        """``left @ right (+ bias)`` with a tracked parameter as one 2-D operand."""
        found_right, found_left = self.match(right), self.match(left)
        name = _name(func)
        if found_right is not None and found_left is None and right.ndim == 2:
            entry, rows = found_right
            if isinstance(left, Tensor) and left.ndim >= 1:
                # x @ P: the parameter P is (d_in, d_out), i.e. W = P^T
                x, layout = self._unflattened(left)
                transposed = not entry.transposed
                entry.target.capture(
                    MapCall("linear", transposed, rows, x, output, bias, layout, name=name)
                )
                self._others(func, (bias,), {})
                return
        elif found_left is not None and found_right is None and left.ndim == 2:
            entry, rows = found_left
            if isinstance(right, Tensor) and right.ndim >= 2 and bias is None:
                # P @ x: the inputs are the columns of x
                entry.target.capture(
                    MapCall(
                        "linear",
                        entry.transposed,
                        rows,
                        right.mT,
                        output,
                        None,
                        layout=_last_two_swapped,
                        name=name,
                    )
                )
                return
        self._others(func, (left, right, bias), {})

    def _conv(
        self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Tensor
    ) -> None:
        x = args[0] if args else kwargs.get("input")
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        bias = args[2] if len(args) > 2 else kwargs.get("bias")
        options = dict(zip(_CONV_OPTIONS, args[3:], strict=False))
        options.update({k: v for k, v in kwargs.items() if k in _CONV_OPTIONS})
        found = self.match(weight)
        if found is not None and isinstance(x, Tensor):
            entry, rows = found
            if entry.transposed:
                entry.target.other_use(_name(func))
            else:
                entry.target.capture(
                    MapCall(_CONVS[func], False, rows, x, output, bias, None, options, _name(func))
                )
        self._others(func, (bias,), {})


def _storage(t: Tensor) -> int | None:
    """The address of ``t``'s storage, ``None`` when it has none (a freed or sharded one)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


def _unflatten_rows(t: Tensor, batch: int) -> Tensor:
    return t.unflatten(0, (batch, -1))


def _last_two_swapped(t: Tensor) -> Tensor:
    return t.mT
