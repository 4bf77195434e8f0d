"""A parameter whose block is chosen by how the model uses it.

A parameter with two or more dimensions of a module that is not a known linear map
(a custom module's own weight, a position embedding) may be the weight of a
functional linear map (``functional.linear``, ``conv*d`` or ``embedding``) or not.
Its :class:`DeferredBlock` watches the owner's forward passes on recording steps; the
first functional call with the parameter as its weight makes it a
:class:`~singd_opt.blocks.KroneckerBlock` of that call's map. A parameter that no call
has used by the time of its first update gets an
:class:`~singd_opt.blocks.ElementwiseBlock`. The choice is final and saved with the
state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from singd_opt.blocks.base import PreconditionerBlock, Proposal, StepContext
from singd_opt.blocks.elementwise import ElementwiseBlock
from singd_opt.blocks.kronecker import KroneckerBlock
from singd_opt.capture import FunctionalCall
from singd_opt.layers import (
    ConvGeometry,
    ConvLayer,
    EmbeddingLayer,
    Layer,
    LinearLayer,
    ParameterRows,
)

_CONVS = {"conv1d": 3, "conv2d": 4, "conv3d": 5}


def layer_of_call(param: ParameterRows, function: str, options: Mapping[str, Any]) -> Layer | None:
    """Return the map of a functional call with weight ``param``, or ``None`` if unfit.

    Args:
        param: The weight.
        function: ``"linear"``, ``"conv1d"``, ``"conv2d"``, ``"conv3d"`` or ``"embedding"``.
        options: The convolution's ``stride``, ``padding``, ``dilation``, ``groups``.
    """
    value = param.value
    if function == "linear" and value.ndim == 2:
        return LinearLayer(param, None, value)
    if function == "embedding" and value.ndim == 2:
        return EmbeddingLayer(param)
    if _CONVS.get(function) == value.ndim:
        return ConvLayer(param, None, value, ConvGeometry.of_call(value, **options))
    return None


def _layer_spec(layer: Layer) -> dict[str, Any]:
    if isinstance(layer, ConvLayer):
        g = layer.geometry
        return {
            "function": f"conv{len(g.kernel)}d",
            "stride": list(g.stride),
            "padding": [list(p) for p in g.padding],
            "dilation": list(g.dilation),
            "groups": g.groups,
        }
    return {"function": "embedding" if isinstance(layer, EmbeddingLayer) else "linear"}


def _layer_from_spec(param: ParameterRows, spec: object, what: str) -> Layer:
    if not isinstance(spec, dict) or not isinstance(spec.get("function"), str):
        raise ValueError(f"{what} has no valid 'layer' entry")
    options = {k: v for k, v in spec.items() if k != "function"}
    if "padding" in options:
        options["padding"] = [int(p[0]) for p in options["padding"]]
    try:
        layer = layer_of_call(param, spec["function"], options)
    except (TypeError, ValueError):
        layer = None
    if layer is None:
        raise ValueError(f"{what}: a {spec['function']!r} map does not fit the parameter")
    return layer


class DeferredBlock(PreconditionerBlock):
    """A parameter whose block (Kronecker or element-wise) is chosen by its first use.

    Attributes:
        resolved: The chosen block, ``None`` until the choice is made.
    """

    kind = "deferred"

    def __init__(
        self, name: str, param: ParameterRows, group_index: int, group: Mapping[str, Any]
    ) -> None:
        super().__init__(name, (param,), group_index)
        self._group = group
        self.resolved: PreconditionerBlock | None = None

    @property
    def effective(self) -> PreconditionerBlock:
        """The chosen block, or this one while the choice is open."""
        return self.resolved if self.resolved is not None else self

    def _resolve(self, block: PreconditionerBlock) -> None:
        self.resolved = block

    # ---------------------------------------------------------------- capture
    def accepts(self, call: FunctionalCall) -> bool:
        """Whether ``call`` is a use of the Kronecker block (choosing it on a first use).

        The first call whose weight is the whole parameter and fits a linear map,
        convolution or embedding chooses a Kronecker block of that map.
        """
        (param,) = self.params
        if self.resolved is None:
            if call.rows != (0, param.value.shape[0]):
                return False
            layer = layer_of_call(param, call.function, call.options)
            if layer is None:
                return False
            self._resolve(KroneckerBlock(self.name, layer, self.group_index, self._group))
        return isinstance(self.resolved, KroneckerBlock)

    # ------------------------------------------------------------- delegation
    def has_curvature(self) -> bool:
        """See :meth:`PreconditionerBlock.has_curvature`."""
        return self.resolved is not None and self.resolved.has_curvature()

    def curvature_tensors(self) -> list[Tensor]:
        """See :meth:`PreconditionerBlock.curvature_tensors`."""
        return self.resolved.curvature_tensors() if self.resolved is not None else []

    def drop_curvature(self) -> None:
        """See :meth:`PreconditionerBlock.drop_curvature`."""
        if self.resolved is not None:
            self.resolved.drop_curvature()

    def resolve_unused(self) -> PreconditionerBlock:
        """Choose the element-wise block if no call chose a Kronecker one; return the choice."""
        if self.resolved is None:
            self._resolve(ElementwiseBlock(self.name, self.params[0], self.group_index))
        assert self.resolved is not None
        return self.resolved

    def propose(self, group: Mapping[str, Any], context: StepContext) -> Proposal:
        """See :meth:`PreconditionerBlock.propose`."""
        return self.resolve_unused().propose(group, context)

    def state_dict(self) -> dict[str, Any]:
        """See :meth:`PreconditionerBlock.state_dict`; the chosen map is saved as ``layer``."""
        if self.resolved is None:
            return {"kind": self.kind}
        state = self.resolved.state_dict()
        if isinstance(self.resolved, KroneckerBlock):
            state["layer"] = _layer_spec(self.resolved.layer)
        return state

    def load_state_dict(
        self, state: Mapping[str, Any], group: Mapping[str, Any]
    ) -> Callable[[], None]:
        """See :meth:`PreconditionerBlock.load_state_dict`."""
        what = f"state_dict: block {self.name!r}"
        kind = state.get("kind")
        (param,) = self.params
        block: PreconditionerBlock | None
        if kind == self.kind:
            block = None
        elif kind == KroneckerBlock.kind:
            layer = _layer_from_spec(param, state.get("layer"), what)
            block = KroneckerBlock(self.name, layer, self.group_index, group)
        elif kind == ElementwiseBlock.kind:
            block = ElementwiseBlock(self.name, param, self.group_index)
        else:
            raise ValueError(f"{what} has an unknown kind {kind!r}")
        load_block = block.load_state_dict(state, group) if block is not None else None

        def load() -> None:
            if load_block is not None and block is not None:
                load_block()
                self._resolve(block)
            else:
                self.resolved = None

        return load

    def state_tensors(self) -> list[Tensor]:
        """See :meth:`PreconditionerBlock.state_tensors`."""
        return self.resolved.state_tensors() if self.resolved is not None else []

    def describe(self) -> dict[str, Any]:
        """See :meth:`PreconditionerBlock.describe`."""
        if self.resolved is None:
            return {"kind": self.kind, "shape": tuple(self.params[0].value.shape)}
        return self.resolved.describe()
