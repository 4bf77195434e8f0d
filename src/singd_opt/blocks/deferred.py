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

import torch
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


_FUNCTIONS = ("linear", "embedding", "conv1d", "conv2d", "conv3d")
_PAD_MODES = ("constant", "reflect", "replicate", "circular")
#: Length of a map's numeric description: seen, function, then for convolutions
#: stride (3), dilation (3), padding (3 pairs), groups and padding mode.
_CODE_LENGTH = 15


def encode_layer(layer: Layer | None) -> Tensor:
    """The map a call chose as a float64 vector (all zeros for no map).

    The entries are small integers, exact in float64: ``1``, the index of the
    function in ``("linear", "embedding", "conv1d", "conv2d", "conv3d")`` and, for a
    convolution, its stride, dilation, padding, groups and padding mode (see
    :func:`decode_layer`).
    """
    code = torch.zeros(_CODE_LENGTH, dtype=torch.float64)
    if layer is None:
        return code
    function = _layer_spec(layer)["function"]
    code[0], code[1] = 1.0, float(_FUNCTIONS.index(function))
    if isinstance(layer, ConvLayer):
        g = layer.geometry
        spatial = len(g.kernel)
        code[2 : 2 + spatial] = torch.tensor(g.stride, dtype=torch.float64)
        code[5 : 5 + spatial] = torch.tensor(g.dilation, dtype=torch.float64)
        pads = [p for pair in g.padding for p in pair]
        code[8 : 8 + 2 * spatial] = torch.tensor(pads, dtype=torch.float64)
        code[14] = float(g.groups * len(_PAD_MODES) + _PAD_MODES.index(g.pad_mode))
    return code


def decode_layer(param: ParameterRows, code: Tensor) -> Layer:
    """The map of a vector of :func:`encode_layer` for the weight ``param``.

    Raises:
        ValueError: If the map does not fit the parameter.
    """
    values = [int(v) for v in code.tolist()]
    function = _FUNCTIONS[values[1]]
    if not function.startswith("conv"):
        layer = layer_of_call(param, function, {})
    else:
        spatial = int(function[4])
        groups, pad_mode = divmod(values[14], len(_PAD_MODES))
        pads = values[8 : 8 + 2 * spatial]
        geometry = ConvGeometry(
            kernel=tuple(param.value.shape[2:]),
            stride=tuple(values[2 : 2 + spatial]),
            dilation=tuple(values[5 : 5 + spatial]),
            padding=tuple((pads[2 * i], pads[2 * i + 1]) for i in range(spatial)),
            groups=groups,
            pad_mode=_PAD_MODES[pad_mode],
        )
        layer = (
            ConvLayer(param, None, param.value, geometry)
            if param.value.ndim == spatial + 2
            else None
        )
    if layer is None:
        raise ValueError(
            f"a {function!r} map does not fit a parameter of shape {tuple(param.value.shape)}"
        )
    return layer


class DeferredBlock(PreconditionerBlock):
    """A parameter whose block (Kronecker or element-wise) is chosen by its first use.

    The first recorded functional call that fits a linear map chooses a
    :class:`KroneckerBlock` of that map, which records the call. At the block's first
    step (:meth:`for_step`) a parameter no call has used gets an
    :class:`ElementwiseBlock`. The choice does the step's work and takes this block's
    place in the optimizer once the step is taken; a skipped step forgets it
    (:meth:`drop_curvature`), so the next step chooses again. This block stays the
    :attr:`~PreconditionerBlock.origin` of its choice: it saves and loads the choice's
    state with the chosen map.
    """

    kind = "deferred"
    splittable = True  # its choice may be a Kronecker block

    def __init__(
        self, name: str, param: ParameterRows, group_index: int, group: Mapping[str, Any]
    ) -> None:
        super().__init__(name, (param,), group_index)
        self._group = group
        self._choice: PreconditionerBlock | None = None

    def _adopt(self, block: PreconditionerBlock) -> PreconditionerBlock:
        block.origin = self
        block.recording = self.recording
        self._choice = block
        return block

    # ---------------------------------------------------------------- capture
    def recipient(self, call: FunctionalCall) -> PreconditionerBlock | None:
        """The block that records ``call`` now, choosing a Kronecker block on a first use.

        The first call on a recording step whose weight is the whole parameter and
        fits a linear map, convolution or embedding chooses a Kronecker block of that
        map. ``None`` when the call is not recorded (no fitting map, not recording, or
        the parameter went to the element-wise rule).
        """
        (param,) = self.params
        choice = self._choice
        if choice is None:
            if not self.recording or call.row_range != (0, param.value.shape[0]):
                return None
            layer = layer_of_call(param, call.function, call.options)
            if layer is None:
                return None
            choice = self._adopt(KroneckerBlock(self.name, layer, self.group_index, self._group))
        if isinstance(choice, KroneckerBlock) and choice.recording:
            return choice
        return None

    # -------------------------------------------------------------- decision
    def decision(self) -> Tensor:
        """The map this process's calls chose (:func:`encode_layer`; zeros for none).

        See :meth:`PreconditionerBlock.decision`: a parameter used on some processes
        only must become the same block on every process.
        """
        choice = self._choice
        return encode_layer(choice.layer if isinstance(choice, KroneckerBlock) else None)

    def decide(self, seen: list[Tensor]) -> None:
        """Choose the map the processes' calls chose (a Kronecker block), if any did.

        A process whose calls chose nothing builds the Kronecker block of the others'
        map (it contributes no curvature); with no map anywhere the step's choice
        stays open (:meth:`for_step` then chooses the element-wise block).

        Raises:
            ValueError: If processes chose different maps.
        """
        chosen = [(rank, code) for rank, code in enumerate(seen) if code[0] > 0]
        if not chosen:
            return
        first_rank, first = chosen[0]
        for rank, code in chosen[1:]:
            if not torch.equal(code, first):
                raise ValueError(
                    f"parameter {self.name!r} is the weight of different maps on process "
                    f"{first_rank} ({_FUNCTIONS[int(first[1])]}) and process {rank} "
                    f"({_FUNCTIONS[int(code[1])]}, or other convolution arguments); every "
                    "process must use it alike"
                )
        if self._choice is None:
            (param,) = self.params
            choice = KroneckerBlock(
                self.name, decode_layer(param, first), self.group_index, self._group
            )
            choice.recorded_somewhere = True
            self._adopt(choice)
        elif isinstance(self._choice, KroneckerBlock):
            self._choice.recorded_somewhere = True

    # ------------------------------------------------------------------ step
    def for_step(self) -> PreconditionerBlock:
        """The chosen block; the element-wise one if no call has chosen a Kronecker block."""
        if self._choice is None:
            return self._adopt(ElementwiseBlock(self.name, self.params[0], self.group_index))
        return self._choice

    def has_curvature(self) -> bool:
        """See :meth:`PreconditionerBlock.has_curvature`."""
        return self._choice is not None and self._choice.has_curvature()

    def drop_curvature(self) -> None:
        """Forget this step's choice with its curvature (the choice stays open)."""
        self._choice = None

    def propose(self, group: Mapping[str, Any], context: StepContext) -> Proposal:
        """The proposal of :meth:`for_step`'s block, which replaces this one once taken."""
        choice = self.for_step()
        proposal = choice.propose(group, context)
        proposal.replacement = choice
        return proposal

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """See :meth:`PreconditionerBlock.state_dict`; the chosen map is saved as ``layer``."""
        choice = self._choice
        if choice is None:
            return {"kind": self.kind}
        state = choice.state_dict()
        if isinstance(choice, KroneckerBlock):
            state["layer"] = _layer_spec(choice.layer)
        return state

    def load_state_dict(
        self, state: Mapping[str, Any], group: Mapping[str, Any]
    ) -> Callable[[], PreconditionerBlock]:
        """See :meth:`PreconditionerBlock.load_state_dict`.

        The returned function gives the loaded choice (or this block, undecided).
        """
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

        def load() -> PreconditionerBlock:
            if load_block is None:
                self._choice = None
                return self
            return self._adopt(load_block())

        return load

    def settled_state_dict(self) -> dict[str, Any]:
        """Undecided: in the optimizer's list, this block's choice is not yet taken."""
        return {"kind": self.kind}

    def state_tensors(self) -> list[Tensor]:
        """See :meth:`PreconditionerBlock.state_tensors`."""
        return self._choice.state_tensors() if self._choice is not None else []

    def cost(self) -> float:
        """The cost of a dense Kronecker block of the parameter's rows and columns."""
        rows = self.params[0].value
        dim_C, dim_K = rows.shape[0], rows[0].numel()
        return 2.0 * (dim_K**3 + dim_C**3) + 2.0 * dim_C * dim_K * (dim_K + dim_C)

    def describe(self) -> dict[str, Any]:
        """See :meth:`PreconditionerBlock.describe`."""
        return {
            "kind": self.kind,
            "preconditioner": "undecided",
            "shape": tuple(self.params[0].value.shape),
        }
