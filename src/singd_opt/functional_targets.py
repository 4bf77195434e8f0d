"""Receivers of functional calls: attention projections and parameters of custom modules.

See :mod:`singd_opt.capture` for how functional calls are intercepted.
:class:`~torch.nn.MultiheadAttention` projects query, key and value with the rows
``[0, E)``, ``[E, 2E)`` and ``[2E, 3E)`` of ``in_proj_weight`` (one call for
self-attention, two or three calls with row blocks of it otherwise, or separate
``q_proj_weight``, ``k_proj_weight``, ``v_proj_weight``), and its output with
``out_proj.weight``. Each projection is one Kronecker block; its calls are brought
into the layout ``(batch, positions, features)`` of :mod:`singd_opt.layers` first
(inside the attention function the layout is ``(positions, batch, features)``, and
``(positions * batch, features)`` for the output projection).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from singd_opt.blocks import PreconditionerBlock
from singd_opt.blocks.deferred import DeferredBlock
from singd_opt.capture import FunctionalCall, hook_output

#: ``record(block, input, grad_output)``: hands a call to the optimizer.
BlockRecordFn = Callable[[PreconditionerBlock, Tensor, Tensor], None]


@dataclass(frozen=True)
class ProjectionPart:
    """The rows ``[start, stop)`` of a weight that form one Kronecker block."""

    start: int
    stop: int
    block: PreconditionerBlock


class AttentionLayout:
    """Batch size of the current :class:`~torch.nn.MultiheadAttention` call.

    Attributes:
        batch: Number of sequences in the current call (1 for unbatched inputs).
    """

    def __init__(self, batch_first: bool) -> None:
        self.batch_first = batch_first
        self.batch = 1

    def note_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Read the batch size from the attention's ``query`` argument."""
        query = args[0] if args else kwargs.get("query")
        if isinstance(query, Tensor):
            self.batch = query.shape[0 if self.batch_first else 1] if query.ndim == 3 else 1

    @staticmethod
    def input_projection(t: Tensor) -> Tensor:
        """``(positions, batch, features)`` to ``(batch, positions, features)``."""
        return t.transpose(0, 1)

    def output_projection(self, t: Tensor) -> Tensor:
        """``(positions * batch, features)`` to ``(batch, positions, features)``."""
        return t.view(-1, self.batch, t.shape[-1]).transpose(0, 1)


class ProjectionTarget:
    """A tracked weight whose rows are split among Kronecker blocks."""

    def __init__(
        self,
        parts: list[ProjectionPart],
        record: BlockRecordFn,
        layout: Callable[[Tensor], Tensor],
    ) -> None:
        """Describe the weight.

        Args:
            parts: The blocks and their rows.
            record: Hands each block's part of a call to the optimizer.
            layout: Brings inputs and output gradients to ``(batch, ..., features)``.
        """
        self.parts = parts
        self.record = record
        self.layout = layout

    def capture(self, call: FunctionalCall) -> None:
        """Record the blocks whose rows the call's weight covers."""
        first, last = call.row_range
        parts = [p for p in self.parts if first <= p.start and p.stop <= last and p.block.recording]
        if not parts:
            return
        record, layout = self.record, self.layout

        def record_parts(x: Tensor, grad_output: Tensor) -> None:
            x, grad_output = layout(x), layout(grad_output)
            for part in parts:
                record(part.block, x, grad_output[..., part.start - first : part.stop - first])

        hook_output(call.output, call.x, record_parts)


class DeferredTarget:
    """The functional calls of a parameter whose block is chosen by its first use."""

    def __init__(self, block: DeferredBlock, record: BlockRecordFn) -> None:
        self.block = block
        self.record = record

    def capture(self, call: FunctionalCall) -> None:
        """Record the call if it is (or makes the parameter) a Kronecker block's map."""
        recipient = self.block.recipient(call)
        if recipient is None:
            return
        record = self.record
        hook_output(call.output, call.x, lambda x, g: record(recipient, x, g))
