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

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from singd_opt.blocks.base import PreconditionerBlock, Proposal, StepContext
from singd_opt.layers import ParameterRows
from singd_opt.sharding import is_sharded, shard_like


def moment_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype of :math:`v` for a parameter dtype: float32 for 16-bit floats."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class ElementwiseBlock(PreconditionerBlock):
    """Diagonal second-moment preconditioner of one parameter.

    Attributes:
        second_moment: :math:`v`, ``None`` before the first update.
        updates: :math:`t`, the number of updates of :math:`v`.
    """

    kind = "elementwise"

    def __init__(self, name: str, param: ParameterRows, group_index: int) -> None:
        super().__init__(name, (param,), group_index)
        self.second_moment: Tensor | None = None
        self.updates: int = 0

    def propose(self, group: Mapping[str, Any], context: StepContext) -> Proposal:
        """Return :math:`N` and the new :math:`v` (see the module docstring)."""
        (rows,) = self.params
        grad = rows.grad
        if grad is None:
            return Proposal([])
        if context.grad_factor != 1.0:
            grad = grad / context.grad_factor
        beta, eps = group["elementwise_beta2"], group["elementwise_eps"]
        dtype = moment_dtype(grad.dtype)
        square = grad.to(dtype).square()
        if self.second_moment is None:
            second_moment = square.mul_(1.0 - beta)
        else:
            second_moment = torch.lerp(self.second_moment, square, 1.0 - beta)
        updates = self.updates + 1
        correction = 1.0 - beta**updates
        denominator = (second_moment / correction).sqrt_().add_(eps)
        direction = (grad.to(dtype) / denominator).to(grad.dtype)

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
            "preconditioner": "diagonal second moment",
            "shape": tuple(self.params[0].value.shape),
        }
