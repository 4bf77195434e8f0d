"""Shared kernels for structures whose stored tensors enter the matrix linearly."""

from __future__ import annotations

import functools
import math
from typing import Any, TypeVar

import torch
from torch import Tensor

from structmat._layout import transformed
from structmat._numerics import stable_norm
from structmat.base import Scalar, StructuredMatrix
from structmat.numerics import trailing_dims

L = TypeVar("L", bound="LinearStructure")


class LinearStructure(StructuredMatrix):
    r"""A structure whose ``to_dense`` is linear in its stored tensors.

    Then :math:`A + \alpha B`, :math:`c A` and their in-place forms act tensor by
    tensor in :math:`O(\text{storage})`, and the zero matrix is all stored tensors
    zero. Every built-in structure derives from this class. It declares no structural
    fact: each structure states its own (:attr:`~StructuredMatrix.closed_under_inverse`
    and the transpose facts default to ``False``).

    By default each stored number is one matrix entry (and every other entry is zero),
    so :math:`\|A\|_F` is the 2-norm of the storage and :math:`\max_{ij} |A_{ij}|` its
    largest magnitude; structures that repeat stored numbers (Toeplitz) override
    :meth:`_frobenius_norm`.

    On a stack (:meth:`~StructuredMatrix.stack`) a scalar may be a tensor of the batch
    shape, one value per member: :meth:`per_member` lines it up with a stored tensor.
    """

    def per_member(self, value: Scalar, tensor: Tensor) -> Scalar:
        """``value`` shaped to scale ``tensor`` member by member.

        A number or a one-element tensor is returned as it is; on a stack, a tensor of
        the batch shape gets a trailing singleton dimension per dimension of a member's
        ``tensor``.
        """
        if not isinstance(value, Tensor) or value.ndim == 0:
            return value
        if value.numel() == 1 and not self._batch_shape:
            return value.reshape(())
        return value.reshape(value.shape + (1,) * (tensor.ndim - value.ndim))

    def member_dims(self, tensor: Tensor) -> tuple[int, ...]:
        """The dimensions of ``tensor`` that index one member's entries (not the batch)."""
        return trailing_dims(tensor, len(self._batch_shape))

    # A linear combination of members is a member of the same layout, dtype and device:
    # built without the constructor's check (the tensors are new, see ``_like``).
    # An empty stored tensor (a block-diagonal's last block when the block size divides
    # d) is shared by the result instead of computed: one kernel call less per operation.
    def _add(self: L, other: L, alpha: Scalar) -> L:
        return self._like(
            **{
                name: scaled_sum(t, getattr(other, name), self.per_member(alpha, t))
                if t.numel()
                else t
                for name, t in self.named_tensors()
            }
        )

    def _scale(self: L, value: Scalar) -> L:
        scaled = {
            name: t * self.per_member(value, t) if t.numel() else t
            for name, t in self.named_tensors()
        }
        return self._like(**scaled)

    def _add_(self, other: StructuredMatrix, alpha: Scalar) -> None:
        # a tensor alpha multiplies on the device (no conversion to a number, no sync)
        scaled = isinstance(alpha, Tensor)
        for name, tensor in self.named_tensors():
            if not tensor.numel():  # an empty tensor (a block-diagonal's last block)
                continue
            if scaled and transformed(tensor, alpha):  # type: ignore[arg-type]
                tensor.add_(getattr(other, name) * alpha)  # vmap has no addcmul_ rule
            elif scaled:
                tensor.addcmul_(getattr(other, name), self.per_member(alpha, tensor))  # type: ignore[arg-type]
            else:
                tensor.add_(getattr(other, name), alpha=alpha)

    def _mul_(self, value: Scalar) -> None:
        for _, tensor in self.named_tensors():
            if tensor.numel():
                tensor.mul_(self.per_member(value, tensor))

    def _frobenius_norm(self) -> Tensor:
        stored = [t for _, t in self.named_tensors()]
        nonempty = [t for t in stored if t.numel()] or stored[:1]
        return stable_norm(nonempty, keep=len(self._batch_shape))

    def _infinity_vector_norm(self) -> Tensor:
        # one fused reduction per stored tensor (the largest magnitude), then their maximum
        maxima = [
            torch.linalg.vector_norm(t, math.inf, self.member_dims(t))
            for _, t in self.named_tensors()
            if t.numel() > 0
        ]
        return functools.reduce(torch.maximum, maxima)

    @classmethod
    def _zeros(cls: type[L], dim: int, dtype: torch.dtype | None, device: Any) -> L:
        return cls(
            **{
                name: torch.zeros(shape, dtype=dtype, device=device)
                for name, shape in cls.tensor_shapes(dim).items()
            }
        )


def scaled_sum(tensor: Tensor, other: Tensor, alpha: Scalar) -> Tensor:
    """``tensor + alpha * other`` in one kernel (``alpha`` a number, or a tensor lined up).

    ``torch.add`` with ``alpha`` for a number, ``torch.addcmul`` for a tensor (no
    conversion to a number, no synchronisation).
    """
    if isinstance(alpha, Tensor):
        return torch.addcmul(tensor, other, alpha)
    return torch.add(tensor, other, alpha=alpha)
