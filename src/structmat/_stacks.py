r"""Stacks of members: several members of one structure held along batch dimensions.

A structure that declares ``batches_natively`` writes its kernels over the trailing
dimensions of its stored tensors, so the tensors of several members stacked along
leading dimensions (a *stack*, :meth:`~structmat.StructuredMatrix.stack`) are processed
by the same kernels, once: each operation of :data:`STACK_OPERATIONS` then acts on every
member at once. For small matrices, whose operations cost dispatch rather than
arithmetic, one operation on a stack of :math:`B` members costs about what one operation
on one member does.

This module holds what :class:`~structmat.StructuredMatrix` needs to build and take
apart stacks and to refuse the other operations on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from structmat.base import StructuredMatrix

#: The public operations defined on a stack of members (:meth:`~structmat.StructuredMatrix.stack`)
#: of a structure that declares ``batches_natively``.
STACK_OPERATIONS: tuple[str, ...] = (
    "+",
    "-",
    "add",
    "*",
    "/",
    "@",
    "rmatmat",
    "add_",
    "mul_",
    "diag_add_",
    "transpose",
    "diag",
    "trace",
    "average_trace",
    "infinity_vector_norm",
    "frobenius_norm",
    "from_inner()",
    "clone",
    "detach",
    "to",
    "to_dense",
    "unbind",
)


def stacked_tensors(
    cls: type[StructuredMatrix], members: Sequence[StructuredMatrix]
) -> tuple[dict[str, Tensor], torch.Size]:
    """The stored tensors of ``members`` stacked along a new first dimension, and the batch shape.

    Raises:
        TypeError: If ``cls`` does not batch natively, or a member is not of ``cls``.
        ValueError: If there are no members, or their stored tensors differ in shape
            (dimension or batch shape), dtype or device.
    """
    if not cls.batches_natively:
        raise TypeError(f"{cls.__name__} does not declare batches_natively: it does not stack")
    if not members:
        raise ValueError("stack needs at least one member")
    first = members[0]
    names = first._tensor_names
    reference = [(t.shape, t.dtype, t.device) for t in (getattr(first, n) for n in names)]
    for member in members:
        if type(member) is not cls:
            raise TypeError(
                f"stack: every member must be a {cls.__name__}, got {type(member).__name__}"
            )
        found = [(t.shape, t.dtype, t.device) for t in (getattr(member, n) for n in names)]
        if found != reference:  # the stored shapes fix d and the batch shape
            raise ValueError(
                "stack: the members must share shape, dtype, device and batch shape; got "
                f"{tuple(first.shape)} {first.dtype} {first.device} "
                f"{tuple(first.batch_shape)} and {tuple(member.shape)} {member.dtype} "
                f"{member.device} {tuple(member.batch_shape)}"
            )
    tensors = {name: torch.stack([getattr(member, name) for member in members]) for name in names}
    return tensors, torch.Size((len(members), *first.batch_shape))


def unbound_tensors(stack: StructuredMatrix) -> list[dict[str, Tensor]]:
    """The stored tensors of each member along the first batch dimension (views).

    Raises:
        ValueError: If ``stack`` is a member, not a stack.
    """
    if not stack.batch_shape:
        raise ValueError(f"unbind: this {type(stack).__name__} is a member, not a stack")
    views = {name: tensor.unbind(0) for name, tensor in stack.named_tensors()}
    count = stack.batch_shape[0]
    return [{name: parts[i] for name, parts in views.items()} for i in range(count)]


def raise_stack_error(stack: StructuredMatrix, op: str) -> None:
    """Raise the ``ValueError`` of an operation ``op`` that is not defined on a stack."""
    raise ValueError(
        f"{op} is not defined on a stack of {type(stack).__name__} members (batch shape "
        f"{tuple(stack.batch_shape)}); the stack operations are "
        f"{', '.join(STACK_OPERATIONS)}; unbind() the stack first"
    )
