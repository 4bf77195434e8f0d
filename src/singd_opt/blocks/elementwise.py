r"""The element-wise block: a diagonal second-moment preconditioner for one parameter.

For parameters that are not the weight of a linear map (normalisation scales and
shifts, free parameters such as position embeddings, scalars) the block keeps an
exponential average :math:`v` of the squared gradient and returns the direction

.. math::
    v \leftarrow \beta v + (1 - \beta) g^2, \qquad
    N = \frac{g}{\sqrt{v / (1 - \beta^t)} + \epsilon},

the diagonal preconditioner of Adam and RMSprop (with bias correction; :math:`t` counts
the block's updates). The optimizer then applies momentum, weight decay and the
group's ``elementwise_lr`` (``lr`` when unset) like for every block. Hyper-parameters:
``elementwise_beta2`` (:math:`\beta`) and ``elementwise_eps`` (:math:`\epsilon`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch
from torch import Tensor

from singd_opt.blocks.base import PreconditionerBlock, Proposal, StepContext
from singd_opt.layers import ParameterRows
from singd_opt.sharding import is_sharded, shard_like
from structmat.numerics import HALF_TYPES


def moment_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype of :math:`v` for a parameter dtype: float32 for 16-bit floats."""
    return torch.float32 if dtype in HALF_TYPES else dtype


class ElementwiseBlock(PreconditionerBlock):
    """Diagonal second-moment preconditioner of one parameter.

    Attributes:
        second_moment: :math:`v`, ``None`` before the first update.
        updates: :math:`t`, the number of updates of :math:`v`.
    """

    kind = "elementwise"

    def __init__(
        self, name: str, param: ParameterRows, group_index: int, reason: str | None = None
    ) -> None:
        """Create the block of ``param``; ``reason`` says in :meth:`describe` why it is one."""
        super().__init__(name, (param,), group_index)
        self.second_moment: Tensor | None = None
        self.updates: int = 0
        self.reason = reason

    def batch_key(self, group: Mapping[str, Any], context: StepContext) -> Hashable | None:
        """See :meth:`PreconditionerBlock.batch_key`: gradients of one dtype and device.

        Blocks without a gradient or with a sharded parameter go alone; the first
        update (no :math:`v` yet) and later ones are batched apart.
        """
        grad = self.params[0].grad
        if grad is None or is_sharded(grad):
            return None
        return ("elementwise", grad.dtype, grad.device, self.second_moment is None)

    def propose(self, group: Mapping[str, Any], context: StepContext) -> Proposal:
        """Return :math:`N` and the new :math:`v` (see the module docstring)."""
        if self.params[0].grad is None:
            return Proposal([])
        return self.propose_batch([self], group, context)[0]

    def propose_batch(
        self, blocks: list[PreconditionerBlock], group: Mapping[str, Any], context: StepContext
    ) -> list[Proposal]:
        """See :meth:`PreconditionerBlock.propose_batch`: the rule as ``torch._foreach_*`` ops.

        Each operation of the module docstring's rule is one call over all the blocks'
        gradients.
        """
        members = [block for block in blocks if isinstance(block, ElementwiseBlock)]
        if len(members) != len(blocks):
            raise TypeError("propose_batch: every block must be an ElementwiseBlock")
        beta, eps = group["elementwise_beta2"], group["elementwise_eps"]
        grads = []
        for block in members:
            grad = block.params[0].grad
            assert grad is not None  # see batch_key
            grads.append(grad.to(moment_dtype(grad.dtype)))
        if context.grad_factor != 1.0:
            grads = torch._foreach_div(grads, context.grad_factor)
        squares = torch._foreach_mul(grads, grads)
        if members[0].second_moment is None:
            second_moments = torch._foreach_mul(squares, 1.0 - beta)
        else:
            previous = [block.second_moment for block in members]
            second_moments = torch._foreach_lerp(previous, squares, 1.0 - beta)  # type: ignore[arg-type]
        updates = [block.updates + 1 for block in members]
        denominators = torch._foreach_div(second_moments, [1.0 - beta**t for t in updates])
        torch._foreach_sqrt_(denominators)
        torch._foreach_add_(denominators, eps)
        directions = torch._foreach_div(grads, denominators)
        return [
            block._proposal(direction, second_moment, count)
            for block, direction, second_moment, count in zip(
                members, directions, second_moments, updates, strict=True
            )
        ]

    def _proposal(self, direction: Tensor, second_moment: Tensor, updates: int) -> Proposal:
        """The proposal of ``direction`` that commits the new :math:`v` and :math:`t`."""
        (rows,) = self.params
        assert rows.grad is not None
        direction = direction.to(rows.grad.dtype)

        def commit() -> None:
            self.second_moment = second_moment
            self.updates = updates

        return Proposal([(rows, direction)], [direction], commit)

    def state_dict(self) -> dict[str, Any]:
        """See :meth:`PreconditionerBlock.state_dict`."""
        state: dict[str, Any] = {"kind": self.kind, "updates": self.updates}
        if self.second_moment is not None:
            state["second_moment"] = self.second_moment
        return state

    def load_state_dict(
        self, state: Mapping[str, Any], group: Mapping[str, Any]
    ) -> Callable[[], PreconditionerBlock]:
        """See :meth:`PreconditionerBlock.load_state_dict`."""
        what = f"state_dict: block {self.name!r}"
        if state.get("kind") != self.kind:
            raise ValueError(f"{what} is a {state.get('kind')!r} block, expected {self.kind!r}")
        updates = state.get("updates")
        if isinstance(updates, bool) or not isinstance(updates, int) or updates < 0:
            raise ValueError(f"{what} updates must be a non-negative int, got {updates!r}")
        value = self.params[0].value
        second_moment = state.get("second_moment")
        if second_moment is not None:
            if not isinstance(second_moment, Tensor) or second_moment.shape != value.shape:
                raise ValueError(
                    f"{what} second_moment must be a tensor of shape {tuple(value.shape)}"
                )
            second_moment = second_moment.to(
                device=value.device, dtype=moment_dtype(value.dtype), copy=True
            )
            if is_sharded(value) and not is_sharded(second_moment):
                second_moment = shard_like(value, second_moment)
        elif updates:
            raise ValueError(f"{what} has {updates} updates but no second_moment")

        def load() -> PreconditionerBlock:
            self.second_moment = second_moment
            self.updates = updates
            return self

        return load

    def state_tensors(self) -> list[Tensor]:
        """See :meth:`PreconditionerBlock.state_tensors`."""
        return [self.second_moment] if self.second_moment is not None else []

    def learning_rate(self, group: Mapping[str, Any]) -> float:
        """The group's ``elementwise_lr``, else its ``lr``."""
        elementwise_lr = group.get("elementwise_lr")
        return float(group["lr"] if elementwise_lr is None else elementwise_lr)

    def describe(self) -> dict[str, Any]:
        """See :meth:`PreconditionerBlock.describe`."""
        return {
            "kind": self.kind,
            "preconditioner": "diagonal second moment"
            + (f" ({self.reason})" if self.reason else ""),
            "shape": tuple(self.params[0].value.shape),
        }
