"""Shared kernels for structures whose stored tensors enter the matrix linearly."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from structmat.base import Scalar, StructuredMatrix

L = TypeVar("L", bound="LinearStructure")


class LinearStructure(StructuredMatrix):
    r"""A structure whose ``to_dense`` is linear in its stored tensors.

    Then :math:`A + \alpha B`, :math:`c A` and their in-place forms act tensor by
    tensor in :math:`O(\text{storage})`, and the zero matrix is all stored tensors
    zero. Every built-in structure derives from this class.

    Subclasses define :meth:`tensor_shapes` and :attr:`shape`. By default each
    stored number is one matrix entry (so :math:`\|A\|_F` is the 2-norm of the
    storage); structures that repeat stored numbers (Toeplitz) override
    :meth:`_frobenius_norm`.
    """

    closed_under_inverse: ClassVar[bool] = True

    @classmethod
    @abstractmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        """Return ``{name: shape}`` of the stored tensors of a ``dim x dim`` member."""

    @property
    @abstractmethod
    def shape(self) -> torch.Size:
        """``torch.Size([d, d])``."""

    def _add(self: L, other: L, alpha: Scalar) -> L:
        return type(self)(
            **{name: t + alpha * getattr(other, name) for name, t in self.named_tensors()}
        )

    def _scale(self: L, value: Scalar) -> L:
        return self._map_tensors(lambda t: t * value)

    def _add_(self, other: StructuredMatrix, alpha: Scalar) -> None:
        for name, tensor in self.named_tensors():
            tensor.add_(getattr(other, name), alpha=alpha)

    def _mul_(self, value: Scalar) -> None:
        for _, tensor in self.named_tensors():
            tensor.mul_(value)

    def _frobenius_norm(self) -> Tensor:
        squares = [t.square().sum() for _, t in self.named_tensors()]
        return torch.stack(squares).sum().sqrt()

    @classmethod
    def _zeros(cls: type[L], dim: int, dtype: torch.dtype | None, device: Any) -> L:
        return cls(
            **{
                name: torch.zeros(shape, dtype=dtype, device=device)
                for name, shape in cls.tensor_shapes(dim).items()
            }
        )
