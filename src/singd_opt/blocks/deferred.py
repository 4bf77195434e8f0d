r"""A parameter whose block is chosen by how the model uses it.

A parameter with two or more dimensions of a module that is not a known linear map
(a custom module's own weight, a position embedding, Hugging Face's ``Conv1D``) may be
the matrix of a linear map (``linear``, ``addmm``, ``matmul``, ``@``, ``conv*d``,
``embedding``; see :mod:`singd_opt.map_calls`) or not. Its :class:`DeferredBlock`
watches the recording forward passes; the first call with the whole parameter as the
matrix of a map makes it a :class:`~singd_opt.blocks.KroneckerBlock` of that map (with
the parameter as :math:`W^\top` for ``x @ P``). A parameter first used otherwise, or
not used by the time of its first update, gets an
:class:`~singd_opt.blocks.ElementwiseBlock`, with a warning naming it. The choice is
final and saved with the state.

A deferred block may hold a *bias*: the module's own 1-D ``bias`` parameter. A call
that adds it to the map (``addmm(bias, x, P)``, ``linear(x, W, bias)``) makes it the
bias column of the Kronecker block; otherwise it keeps an element-wise block of its
own.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from singd_opt.blocks.base import PreconditionerBlock, Proposal, StepContext
from singd_opt.blocks.elementwise import ElementwiseBlock
from singd_opt.blocks.kronecker import KroneckerBlock
from singd_opt.layers import (
    ConvGeometry,
    ConvLayer,
    EmbeddingLayer,
    Layer,
    LinearLayer,
    ParameterRows,
    TransposedLinearLayer,
)
from singd_opt.map_calls import MapCall

_CONVS = {"conv1d": 3, "conv2d": 4, "conv3d": 5}


def layer_of_call(
    param: ParameterRows,
    function: str,
    options: Mapping[str, Any],
    transposed: bool = False,
    bias: ParameterRows | None = None,
) -> Layer | None:
    r"""Return the map of a call with weight ``param``, or ``None`` if unfit.

    Args:
        param: The weight.
        function: ``"linear"``, ``"conv1d"``, ``"conv2d"``, ``"conv3d"`` or ``"embedding"``.
        options: The convolution's ``stride``, ``padding``, ``dilation``, ``groups``.
        transposed: Whether the parameter is used as :math:`W^\top` (``x @ P``).
        bias: The map's trained bias (linear maps and convolutions), or ``None``.
    """
    value = param.value
    if function == "linear" and value.ndim == 2:
        out = value.shape[1] if transposed else value.shape[0]
        if bias is not None and bias.value.shape != (out,):
            return None
        if transposed:
            return TransposedLinearLayer(param, bias, value)
        return LinearLayer(param, bias, value)
    if function == "embedding" and value.ndim == 2:
        return EmbeddingLayer(param)
    if _CONVS.get(function) == value.ndim and not transposed:
        if bias is not None and bias.value.shape != (value.shape[0],):
            return None
        return ConvLayer(param, bias, value, ConvGeometry.of_call(value, **options))
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
            "bias": layer.bias is not None,
        }
    if isinstance(layer, EmbeddingLayer):
        return {"function": "embedding"}
    return {
        "function": "linear",
        "transposed": isinstance(layer, TransposedLinearLayer),
        "bias": layer.bias is not None,
    }


def _layer_from_spec(
    param: ParameterRows, bias: ParameterRows | None, spec: object, what: str
) -> Layer:
    if not isinstance(spec, dict) or not isinstance(spec.get("function"), str):
        raise ValueError(f"{what} has no valid 'layer' entry")
    options = {k: v for k, v in spec.items() if k not in ("function", "transposed", "bias")}
    if "padding" in options:
        options["padding"] = [int(p[0]) for p in options["padding"]]
    if spec.get("bias") and bias is None:
        raise ValueError(f"{what}: the saved map has a bias but the block holds none")
    try:
        layer = layer_of_call(
            param,
            spec["function"],
            options,
            bool(spec.get("transposed", False)),
            bias if spec.get("bias") else None,
        )
    except (TypeError, ValueError):
        layer = None
    if layer is None:
        raise ValueError(f"{what}: a {spec['function']!r} map does not fit the parameter")
    return layer


class DeferredBlock(PreconditionerBlock):
    """A parameter whose block (Kronecker or element-wise) is chosen by its first use.

    Attributes:
        resolved: The chosen block, ``None`` until the choice is made.
        bias_block: The element-wise block of the bias when the chosen block does not
            hold it (``None`` otherwise).
    """

    kind = "deferred"

    def __init__(
        self,
        name: str,
        param: ParameterRows,
        group_index: int,
        group: Mapping[str, Any],
        bias: ParameterRows | None = None,
    ) -> None:
        super().__init__(name, (param,) if bias is None else (param, bias), group_index)
        self._group = group
        self.resolved: PreconditionerBlock | None = None
        self.bias_block: ElementwiseBlock | None = None
        self.reason: str | None = None  # why the element-wise rule was chosen

    @property
    def effective(self) -> PreconditionerBlock:
        """The chosen block, or this one while the choice is open."""
        return self.resolved if self.resolved is not None else self

    @property
    def bias(self) -> ParameterRows | None:
        """The module's bias the block may hold, or ``None``."""
        return self.params[1] if len(self.params) > 1 else None

    def _resolve(self, block: PreconditionerBlock) -> None:
        self.resolved = block
        holds_bias = any(rows is self.bias for rows in block.params)
        if self.bias is not None and not holds_bias:
            self.bias_block = ElementwiseBlock(f"{self.name}:bias", self.bias, self.group_index)

    # ---------------------------------------------------------------- capture
    def accepts(self, call: MapCall) -> bool:
        """Whether ``call`` is a use of the Kronecker block (choosing it on a first use).

        The first call whose weight is the whole parameter and fits a linear map,
        convolution or embedding chooses a Kronecker block of that map; the bias
        joins it when the call adds it.
        """
        param, bias = self.params[0], self.bias
        if self.resolved is None:
            if call.rows != (0, param.value.shape[0]):
                return False
            used_bias = bias if bias is not None and call.bias is bias.param else None
            layer = layer_of_call(param, call.function, call.options, call.transposed, used_bias)
            if layer is None:
                return False
            self._resolve(KroneckerBlock(self.name, layer, self.group_index, self._group))
        return isinstance(self.resolved, KroneckerBlock)

    def fall_back(self, reason: str) -> bool:
        """Choose the element-wise rule (if nothing is chosen yet) because of ``reason``.

        Returns:
            Whether this call made the choice.
        """
        if self.resolved is not None:
            return False
        self.reason = reason
        self._resolve(ElementwiseBlock(self.name, self.params[0], self.group_index))
        return True

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
        """Choose the element-wise block if no call chose a Kronecker one; return the choice.

        The choice is reported with a warning naming the parameter.
        """
        if self.fall_back("it was not used as the matrix of a linear map"):
            warnings.warn(
                f"parameter {self.name!r} was not used as the matrix of a linear map in a "
                "recording forward pass; it is trained with the element-wise rule",
                stacklevel=4,
            )
        assert self.resolved is not None
        return self.resolved

    def propose(self, group: Mapping[str, Any], context: StepContext) -> Proposal:
        """See :meth:`PreconditionerBlock.propose`."""
        proposal = self.resolve_unused().propose(group, context)
        if self.bias_block is None:
            return proposal
        extra = self.bias_block.propose(group, context)
        first, second = proposal.commit, extra.commit

        def commit() -> None:
            first()
            second()

        return Proposal(
            proposal.directions + extra.directions,
            proposal.checked + extra.checked,
            commit,
            proposal.matrices,
        )

    def state_dict(self) -> dict[str, Any]:
        """See :meth:`PreconditionerBlock.state_dict`; the chosen map is saved as ``layer``."""
        if self.resolved is None:
            return {"kind": self.kind}
        state = self.resolved.state_dict()
        if isinstance(self.resolved, KroneckerBlock):
            state["layer"] = _layer_spec(self.resolved.layer)
        if self.bias_block is not None:
            state["bias_block"] = self.bias_block.state_dict()
        return state

    def load_state_dict(
        self, state: Mapping[str, Any], group: Mapping[str, Any]
    ) -> Callable[[], None]:
        """See :meth:`PreconditionerBlock.load_state_dict`."""
        what = f"state_dict: block {self.name!r}"
        kind = state.get("kind")
        param = self.params[0]
        block: PreconditionerBlock | None
        if kind == self.kind:
            block = None
        elif kind == KroneckerBlock.kind:
            layer = _layer_from_spec(param, self.bias, state.get("layer"), what)
            block = KroneckerBlock(self.name, layer, self.group_index, group)
        elif kind == ElementwiseBlock.kind:
            block = ElementwiseBlock(self.name, param, self.group_index)
        else:
            raise ValueError(f"{what} has an unknown kind {kind!r}")
        load_block = block.load_state_dict(state, group) if block is not None else None
        bias_block: ElementwiseBlock | None = None
        load_bias = None
        holds_bias = block is not None and any(rows is self.bias for rows in block.params)
        if block is not None and self.bias is not None and not holds_bias:
            bias_state = state.get("bias_block")
            if not isinstance(bias_state, Mapping):
                raise ValueError(f"{what} has no valid 'bias_block' entry")
            bias_block = ElementwiseBlock(f"{self.name}:bias", self.bias, self.group_index)
            load_bias = bias_block.load_state_dict(bias_state, group)

        def load() -> None:
            if load_block is not None and block is not None:
                load_block()
                self.resolved = block
                self.bias_block = bias_block
                if load_bias is not None:
                    load_bias()
            else:
                self.resolved = None
                self.bias_block = None

        return load

    def state_tensors(self) -> list[Tensor]:
        """See :meth:`PreconditionerBlock.state_tensors`."""
        tensors = self.resolved.state_tensors() if self.resolved is not None else []
        if self.bias_block is not None:
            tensors = tensors + self.bias_block.state_tensors()
        return tensors

    def describe(self) -> dict[str, Any]:
        """See :meth:`PreconditionerBlock.describe`."""
        if self.resolved is None:
            return {"kind": self.kind, "shape": tuple(self.params[0].value.shape)}
        return self.resolved.describe()
