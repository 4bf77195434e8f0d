r"""A parameter whose block is chosen by how the model uses it.

A parameter with two or more dimensions of a module that is not a known linear map
(a custom module's own weight, a position embedding, Hugging Face's ``Conv1D``) may be
the matrix of a linear map (``linear``, ``addmm``, ``matmul``, ``@``, ``conv*d``,
``embedding``; see :mod:`singd_opt.map_calls`) or not. Its :class:`DeferredBlock`
watches the recording forward passes; the first call with the whole parameter as the
matrix of a map makes it a :class:`~singd_opt.blocks.KroneckerBlock` of that map (with
the parameter as :math:`W^\top` for ``x @ P``). A parameter first used otherwise, or
not used by the time of its first update, gets an
:class:`~singd_opt.blocks.ElementwiseBlock`. The choice is final and saved with the
state.

A deferred block may hold a *bias*: the module's own 1-D ``bias`` parameter with as
many entries as the map has outputs (Hugging Face's ``Conv1D`` adds it through
``addmm(bias, x, P)``; a module computing ``x @ W.T + bias`` adds it to the map's
output as well). It is the bias column of the Kronecker block, or has its own
element-wise rule when the weight has one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
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
from singd_opt.user_warnings import warn_user

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
    if function == "embedding" and value.ndim == 2 and not transposed and bias is None:
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
    if bool(spec.get("bias")) != (bias is not None):
        raise ValueError(f"{what}: the saved map's bias does not fit the block's parameters")
    try:
        layer = layer_of_call(
            param, spec["function"], options, bool(spec.get("transposed", False)), bias
        )
    except (TypeError, ValueError):
        layer = None
    if layer is None:
        raise ValueError(f"{what}: a {spec['function']!r} map does not fit the parameter")
    return layer


def warn_unused(name: str) -> None:
    """Report a deferred parameter that goes to the element-wise rule unused."""
    warn_user(
        f"parameter {name!r} was not used as the matrix of a linear map in a recording "
        "forward pass; it is trained with the element-wise rule"
    )


class _ElementwiseParts(PreconditionerBlock):
    """The element-wise rule for a weight and its bias: one :class:`ElementwiseBlock` each."""

    kind = ElementwiseBlock.kind

    def __init__(self, parts: list[ElementwiseBlock]) -> None:
        super().__init__(parts[0].name, tuple(p.params[0] for p in parts), parts[0].group_index)
        self.parts = parts

    def propose(self, group: Mapping[str, Any], context: StepContext) -> Proposal:
        """The parts' directions and states together."""
        proposals = [part.propose(group, context) for part in self.parts]

        def commit() -> None:
            for proposal in proposals:
                proposal.commit()

        return Proposal(
            [d for p in proposals for d in p.directions],
            [t for p in proposals for t in p.checked],
            commit,
        )

    def state_dict(self) -> dict[str, Any]:
        """``{"kind": "elementwise", "parts": [each part's state]}``."""
        return {"kind": self.kind, "parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(
        self, state: Mapping[str, Any], group: Mapping[str, Any]
    ) -> Callable[[], PreconditionerBlock]:
        """See :meth:`PreconditionerBlock.load_state_dict`."""
        parts = state.get("parts")
        if not isinstance(parts, list) or len(parts) != len(self.parts):
            raise ValueError(
                f"state_dict: block {self.name!r} needs {len(self.parts)} element-wise parts"
            )
        pairs = zip(self.parts, parts, strict=True)
        loads = [part.load_state_dict(entry, group) for part, entry in pairs]

        def load() -> PreconditionerBlock:
            for load_part in loads:
                load_part()
            return self

        return load

    def state_tensors(self) -> list[Tensor]:
        """See :meth:`PreconditionerBlock.state_tensors`."""
        return [t for part in self.parts for t in part.state_tensors()]

    def learning_rate(self, group: Mapping[str, Any]) -> float:
        """See :meth:`ElementwiseBlock.learning_rate`."""
        return self.parts[0].learning_rate(group)

    def describe(self) -> dict[str, Any]:
        """See :meth:`PreconditionerBlock.describe`."""
        return {**self.parts[0].describe(), "parts": len(self.parts)}


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
    if isinstance(layer, TransposedLinearLayer):
        code[2] = 1.0  # the parameter is used as W^T (x @ P)
    if isinstance(layer, ConvLayer):
        g = layer.geometry
        spatial = len(g.kernel)
        code[2 : 2 + spatial] = torch.tensor(g.stride, dtype=torch.float64)
        code[5 : 5 + spatial] = torch.tensor(g.dilation, dtype=torch.float64)
        pads = [p for pair in g.padding for p in pair]
        code[8 : 8 + 2 * spatial] = torch.tensor(pads, dtype=torch.float64)
        code[14] = float(g.groups * len(_PAD_MODES) + _PAD_MODES.index(g.pad_mode))
    return code


def decode_layer(param: ParameterRows, code: Tensor, bias: ParameterRows | None = None) -> Layer:
    """The map of a vector of :func:`encode_layer` for the weight ``param`` (and ``bias``).

    Raises:
        ValueError: If the map does not fit the parameter.
    """
    values = [int(v) for v in code.tolist()]
    function = _FUNCTIONS[values[1]]
    if not function.startswith("conv"):
        layer = layer_of_call(param, function, {}, bool(values[2]), bias)
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
            ConvLayer(param, bias, param.value, geometry)
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
        self,
        name: str,
        param: ParameterRows,
        group_index: int,
        group: Mapping[str, Any],
        bias: ParameterRows | None = None,
    ) -> None:
        super().__init__(name, (param,) if bias is None else (param, bias), group_index)
        self._group = group
        self._choice: PreconditionerBlock | None = None

    @property
    def bias(self) -> ParameterRows | None:
        """The module's bias the block holds, or ``None``."""
        return self.params[1] if len(self.params) > 1 else None

    def _elementwise(self) -> PreconditionerBlock:
        parts = [ElementwiseBlock(self.name, self.params[0], self.group_index)]
        if self.bias is not None:
            parts.append(ElementwiseBlock(f"{self.name}:bias", self.bias, self.group_index))
            return _ElementwiseParts(parts)
        return parts[0]

    def _adopt(self, block: PreconditionerBlock) -> PreconditionerBlock:
        block.origin = self
        block.recording = self.recording
        self._choice = block
        return block

    # ---------------------------------------------------------------- capture
    def recipient(self, call: MapCall) -> KroneckerBlock | None:
        """The block that records ``call`` now, choosing a Kronecker block on a first use.

        The first call on a recording step whose weight is the whole parameter and
        fits a linear map, convolution or embedding (with the block's bias as the
        map's bias) chooses a Kronecker block of that map. ``None`` when the call is
        not recorded (no fitting map, not recording, or the parameter went to the
        element-wise rule).
        """
        param = self.params[0]
        choice = self._choice
        if choice is None:
            if not self.recording or call.row_range != (0, param.value.shape[0]):
                return None
            layer = layer_of_call(param, call.function, call.options, call.transposed, self.bias)
            if layer is None:
                return None
            choice = self._adopt(KroneckerBlock(self.name, layer, self.group_index, self._group))
        if isinstance(choice, KroneckerBlock) and choice.recording:
            return choice
        return None

    def fall_back(self) -> bool:
        """Choose the element-wise rule now, if nothing is chosen; return whether it was."""
        if self._choice is not None:
            return False
        self._adopt(self._elementwise())
        return True

    def takes_calls(self) -> bool:
        """Whether calls may still be recorded (not once the element-wise rule is chosen)."""
        return self._choice is None or isinstance(self._choice, KroneckerBlock)

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
            choice = KroneckerBlock(
                self.name,
                decode_layer(self.params[0], first, self.bias),
                self.group_index,
                self._group,
            )
            choice.recorded_somewhere = True
            self._adopt(choice)
        elif isinstance(self._choice, KroneckerBlock):
            self._choice.recorded_somewhere = True

    # ------------------------------------------------------------------ step
    def for_step(self) -> PreconditionerBlock:
        """The chosen block; the element-wise one if no call has chosen a Kronecker block."""
        if self._choice is None:
            warn_unused(self.name)
            return self._adopt(self._elementwise())
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
        param = self.params[0]
        block: PreconditionerBlock | None
        if kind == self.kind:
            block = None
        elif kind == KroneckerBlock.kind:
            layer = _layer_from_spec(param, self.bias, state.get("layer"), what)
            block = KroneckerBlock(self.name, layer, self.group_index, group)
        elif kind == ElementwiseBlock.kind:
            block = self._elementwise()
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
