"""Receivers of the linear-map calls found by :mod:`singd_opt.map_calls`.

A :class:`KroneckerTarget` feeds a block chosen when the optimizer is created (the
weight of a ``Linear``, convolution or ``Embedding`` module, or an embedding tied to
output projections); a :class:`DeferredTarget` feeds a parameter whose block its
first use chooses; a :class:`PackedTarget` feeds the blocks of the projections a
packed map computes together (:mod:`singd_opt.packed`). Each checks that a call is
the map its block models (:func:`call_role`): a call of another map, or a use that
is no linear map at all, is reported once with a warning naming the parameter and the
function (for a deferred parameter not yet decided, that use makes it element-wise).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from singd_opt.blocks import KroneckerBlock
from singd_opt.blocks.deferred import DeferredBlock
from singd_opt.capture import hook_output
from singd_opt.layers import (
    ConvGeometry,
    ConvLayer,
    EmbeddingLayer,
    Layer,
    LinearLayer,
    TransposedLinearLayer,
)
from singd_opt.map_calls import MapCall
from singd_opt.user_warnings import warn_user

#: ``record(block, input, grad_output)``: hands a call to the optimizer.
BlockRecordFn = Callable[[KroneckerBlock, Tensor, Tensor], None]


def call_role(layer: Layer, call: MapCall) -> str | None:
    """How ``call`` feeds ``layer``'s curvature: ``"direct"``, ``"swapped"`` or ``None``.

    ``"swapped"`` is the output projection of a tied embedding: its output gradient
    gives vocabulary-side rows and its input hidden-side rows
    (:mod:`singd_opt.layers.tied`). ``None``: the call is not the layer's map.
    """
    weight = layer.weight
    if weight is not None and (weight.row_slice is not None or call.row_range[0] != 0):
        return None
    if weight is not None and call.row_range[1] != weight.param.shape[0]:
        return None
    if isinstance(layer, EmbeddingLayer):  # a projection with the matrix: tied embeddings
        if call.function == "embedding":
            return "direct"
        return "swapped" if call.function == "linear" and not call.transposed else None
    if isinstance(layer, TransposedLinearLayer):
        return "direct" if call.function == "linear" and call.transposed else None
    if isinstance(layer, LinearLayer):
        return "direct" if call.function == "linear" and not call.transposed else None
    if isinstance(layer, ConvLayer) and call.function == f"conv{len(layer.geometry.kernel)}d":
        kernel = layer.geometry.kernel
        geometry = ConvGeometry.of_call(_Shape(2 + len(kernel), kernel), **call.options)
        return "direct" if geometry == layer.geometry else None
    return None


def _warn_once(reported: set[str], name: str, message: str) -> None:
    """Warn with ``message`` unless the function ``name`` was reported already."""
    if name not in reported:
        reported.add(name)
        warn_user(message)


class _Shape:
    """What :meth:`ConvGeometry.of_call` reads of a weight: ``ndim`` and ``shape[2:]``."""

    def __init__(self, ndim: int, kernel: tuple[int, ...]) -> None:
        self.ndim = ndim
        self.shape = (0, 0, *kernel)


def _hook(call: MapCall, block: KroneckerBlock, role: str, record: BlockRecordFn) -> None:
    layout = call.layout

    def record_call(x: Tensor, grad_output: Tensor) -> None:
        if layout is not None:
            grad_output = layout(grad_output)
        if role == "swapped":
            record(block, grad_output, x)
        else:
            record(block, x, grad_output)

    hook_output(call.output, call.x, record_call)


class KroneckerTarget:
    """The calls of a parameter whose Kronecker block was chosen at construction."""

    def __init__(self, block: KroneckerBlock, param_name: str, record: BlockRecordFn) -> None:
        self.block = block
        self.param_name = param_name
        self.record = record
        self.reported: set[str] = set()

    def capture(self, call: MapCall) -> None:
        """See :meth:`singd_opt.map_calls.MapTarget.capture`."""
        if not self.block.recording:
            return
        role = call_role(self.block.layer, call)
        if role is None:
            self.other_use(call.name)
        else:
            _hook(call, self.block, role, self.record)

    def other_use(self, name: str) -> None:
        """See :meth:`singd_opt.map_calls.MapTarget.other_use`: warn once per function."""
        _warn_once(
            self.reported,
            name,
            f"parameter {self.param_name!r} is also used by {name}, which is not the map "
            f"of its Kronecker block {self.block.name!r}; that use adds no curvature",
        )

    def active(self) -> bool:
        """Whether the parameter still needs its calls (always)."""
        return True


class DeferredTarget:
    """The calls of a parameter whose block is chosen by its first use."""

    def __init__(self, block: DeferredBlock, record: BlockRecordFn) -> None:
        self.block = block
        self.record = record
        self.reported: set[str] = set()

    def capture(self, call: MapCall) -> None:
        """See :meth:`singd_opt.map_calls.MapTarget.capture`."""
        block = self.block
        if not block.recording:
            return
        recipient = block.recipient(call)  # chooses a Kronecker block on a first fitting use
        role = call_role(recipient.layer, call) if recipient is not None else None
        if recipient is None or role is None:
            self.other_use(call.name)
            return
        _hook(call, recipient, role, self.record)

    def other_use(self, name: str) -> None:
        """See :meth:`singd_opt.map_calls.MapTarget.other_use`.

        Before the choice this makes the parameter element-wise (with a warning);
        after a Kronecker choice the use is reported once.
        """
        block = self.block
        if block.fall_back():
            warn_user(
                f"parameter {block.name!r} is used by {name}, which SINGD does not model as "
                "a linear map; it is trained with the element-wise rule"
            )
            return
        if block.takes_calls():
            _warn_once(
                self.reported,
                name,
                f"parameter {block.name!r} is also used by {name}, which is not the map of "
                "its Kronecker block; that use adds no curvature",
            )

    def active(self) -> bool:
        """Whether the parameter still needs its calls (not once it is element-wise)."""
        return self.block.takes_calls()


class PackedTarget:
    """The calls of a packed map's weight: each projection's block gets its outputs."""

    def __init__(
        self,
        parts: list[tuple[KroneckerBlock, slice | tuple[int, ...]]],
        transposed: bool,
        param_name: str,
        record: BlockRecordFn,
    ) -> None:
        r"""Describe the map.

        Args:
            parts: The projections' blocks and their output features (a slice, or the
                indices of features interleaved with the other projections').
            transposed: Whether the weight is used as :math:`W^\top` (``x @ weight``).
            param_name: The weight's name (for messages).
            record: Hands each block's part of a call to the optimizer.
        """
        # interleaved features as an index tensor, made once
        self.parts = [
            (block, rows if isinstance(rows, slice) else torch.tensor(rows))
            for block, rows in parts
        ]
        self.transposed = transposed
        self.param_name = param_name
        self.record = record
        self.reported: set[str] = set()

    def capture(self, call: MapCall) -> None:
        """See :meth:`singd_opt.map_calls.MapTarget.capture`."""
        parts = [(block, rows) for block, rows in self.parts if block.recording]
        if not parts:
            return
        weight = parts[0][0].layer.weight
        whole = weight is None or call.row_range == (0, weight.param.shape[0])
        if call.function != "linear" or call.transposed != self.transposed or not whole:
            self.other_use(call.name)
            return
        record, layout = self.record, call.layout

        def record_parts(x: Tensor, grad_output: Tensor) -> None:
            if layout is not None:
                grad_output = layout(grad_output)
            for block, rows in parts:
                if isinstance(rows, slice):
                    record(block, x, grad_output[..., rows])
                else:
                    index = rows.to(grad_output.device)
                    record(block, x, grad_output.index_select(-1, index))

        hook_output(call.output, call.x, record_parts)

    def other_use(self, name: str) -> None:
        """See :meth:`singd_opt.map_calls.MapTarget.other_use`: warn once per function."""
        _warn_once(
            self.reported,
            name,
            f"parameter {self.param_name!r} is also used by {name}, which is not its packed "
            "map; that use adds no curvature",
        )

    def active(self) -> bool:
        """Whether the parameter still needs its calls (always)."""
        return True
