"""The abstract :class:`StructuredMatrix` and its generic (dense-fallback) defaults.

A structure is a set of square ``d x d`` matrices, stored through a few named
tensors. A new structure only needs :meth:`StructuredMatrix.from_dense`,
:meth:`StructuredMatrix.to_dense` and :meth:`StructuredMatrix.register_tensor` calls
in its constructor; every other operation then works through a dense ``d x d``
matrix and emits a :class:`~structmat.DenseFallbackWarning`. Built-in structures
override the private hooks (``_add``, ``_matmat``, ...) with kernels that exploit
their structure. Public methods validate their arguments once, here, so a bad
call raises before any operand is touched.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from structmat.exceptions import DenseFallbackWarning, SingularMatrixError

Scalar = float | int | Tensor
S = TypeVar("S", bound="StructuredMatrix")


class StructuredMatrix(ABC):
    r"""A square matrix :math:`A \in \mathbb{R}^{d \times d}` stored through structure.

    Class attributes:
        name: The registry name of the structure (e.g. ``"triltoeplitz"``).
        closed_under_inverse: Whether the invertible members form a group, so that
            :meth:`inv` returns a member of the same structure.
    """

    name: ClassVar[str | None] = None
    closed_under_inverse: ClassVar[bool] = False

    def __init__(self) -> None:
        self._tensor_names: list[str] = []

    # ------------------------------------------------------------------ storage
    def register_tensor(self, name: str, tensor: Tensor) -> None:
        """Store ``tensor`` as attribute ``name`` and list it in :meth:`named_tensors`.

        Args:
            name: Attribute name; also the constructor keyword that takes it back.
            tensor: The tensor to store.

        Raises:
            ValueError: If ``name`` is already registered.
            TypeError: If ``tensor`` is not a tensor.
        """
        if name in self._tensor_names:
            raise ValueError(f"tensor name {name!r} is already registered")
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        setattr(self, name, tensor)
        self._tensor_names.append(name)

    def named_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """Iterate over ``(name, tensor)`` pairs of the stored tensors.

        ``type(A)(**dict(A.named_tensors()))`` rebuilds ``A`` exactly.
        """
        for name in self._tensor_names:
            yield name, getattr(self, name)

    def tensors(self) -> dict[str, Tensor]:
        """Return the stored tensors as a ``{name: tensor}`` dictionary."""
        return dict(self.named_tensors())

    @classmethod
    def from_tensors(cls: type[S], tensors: Mapping[str, Tensor]) -> S:
        """Rebuild a matrix from the dictionary returned by :meth:`tensors`."""
        return cls(**tensors)

    def _map_tensors(self: S, fn: Any) -> S:
        return type(self)(**{name: fn(t) for name, t in self.named_tensors()})

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored tensors."""
        return next(self.named_tensors())[1].dtype

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        return next(self.named_tensors())[1].device

    @property
    def shape(self) -> torch.Size:
        """``torch.Size([d, d])``."""
        self._warn_fallback("shape")
        return self.to_dense().shape

    def to(self: S, *args: Any, **kwargs: Any) -> S:
        """Return a copy with every stored tensor moved by ``Tensor.to(*args, **kwargs)``."""
        return self._map_tensors(lambda t: t.to(*args, **kwargs))

    def clone(self: S) -> S:
        """Return a deep copy (every stored tensor cloned)."""
        return self._map_tensors(torch.clone)

    def detach(self: S) -> S:
        """Return a copy whose stored tensors are detached from the autograd graph."""
        return self._map_tensors(torch.Tensor.detach)

    def __repr__(self) -> str:
        d = self.shape[0]
        return f"{type(self).__name__}(d={d}, dtype={self.dtype}, device={self.device})"

    # ------------------------------------------------------- the two essentials
    @classmethod
    @abstractmethod
    def from_dense(cls: type[S], sym_mat: Tensor) -> S:
        """Project a dense (symmetric) ``d x d`` matrix onto the structure.

        The projection is linear and is the identity on members of the structure.
        """

    @abstractmethod
    def to_dense(self) -> Tensor:
        """Return the represented matrix as a dense ``d x d`` tensor."""

    # --------------------------------------------------------- validated API
    def _check_same_structure(self, other: object, op: str) -> None:
        if not isinstance(other, StructuredMatrix):
            raise TypeError(
                f"cannot {op} {type(self).__name__} and {type(other).__name__}: "
                "the other operand must be a StructuredMatrix of the same structure"
            )
        if type(other) is not type(self):
            raise TypeError(
                f"cannot {op} {type(self).__name__} and {type(other).__name__}: "
                "both operands must have the same structure"
            )
        if self.shape != other.shape:
            raise ValueError(
                f"cannot {op} matrices of shapes {tuple(self.shape)} and {tuple(other.shape)}"
            )

    @staticmethod
    def _check_scalar(value: object, op: str) -> None:
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"{op} takes a scalar, got a tensor of shape {tuple(value.shape)}")
        elif not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"{op} takes a scalar (int, float or 1-element tensor), got {value!r}")

    def _check_operand(self, X: object, op: str, dim: int = 0) -> Tensor:
        if not isinstance(X, Tensor):
            raise TypeError(f"{op}: expected a torch.Tensor, got {type(X).__name__}")
        if X.ndim not in (1, 2) or X.shape[dim] != self.shape[0]:
            raise ValueError(
                f"{op}: shapes {tuple(self.shape)} and {tuple(X.shape)} are not aligned "
                f"(need a 1-d or 2-d tensor with size {self.shape[0]} in dimension {dim})"
            )
        return X

    def __add__(self: S, other: S) -> S:
        """Return ``A + B`` for ``B`` of the same structure and shape."""
        self._check_same_structure(other, "add")
        return self._add(other, 1.0)

    def __sub__(self: S, other: S) -> S:
        """Return ``A - B`` for ``B`` of the same structure and shape."""
        self._check_same_structure(other, "subtract")
        return self._add(other, -1.0)

    def __neg__(self: S) -> S:
        return self._scale(-1.0)

    def __mul__(self: S, value: Scalar) -> S:
        """Return ``c * A`` for a scalar ``c``."""
        if isinstance(value, StructuredMatrix):
            raise TypeError("'*' is scalar multiplication; use '@' for the matrix product")
        self._check_scalar(value, "scalar multiplication")
        return self._scale(value)

    __rmul__ = __mul__

    def __truediv__(self: S, value: Scalar) -> S:
        """Return ``A / c`` for a scalar ``c``."""
        self._check_scalar(value, "division")
        return self._scale(1.0 / value)

    def add_(self: S, other: S, alpha: Scalar = 1.0) -> S:
        """In place: ``A <- A + alpha * B``. Returns ``self``."""
        self._check_same_structure(other, "add")
        self._check_scalar(alpha, "add_(alpha)")
        self._add_(other, alpha)
        return self

    def mul_(self: S, value: Scalar) -> S:
        """In place: ``A <- c * A``. Returns ``self``."""
        self._check_scalar(value, "mul_")
        self._mul_(value)
        return self

    def diag_add_(self: S, value: Scalar) -> S:
        """In place: ``A <- A + c * I``. Returns ``self``."""
        self._check_scalar(value, "diag_add_")
        self._diag_add_(value)
        return self

    def __matmul__(self, other: Any) -> Any:
        """``A @ B`` (same structure, returns a structure) or ``A @ X`` (tensor, returns tensor).

        ``X`` may be a vector of size ``d`` or a matrix of shape ``(d, n)``.
        """
        if isinstance(other, StructuredMatrix):
            self._check_same_structure(other, "multiply")
            return self._matmul(other)
        if isinstance(other, Tensor):
            X = self._check_operand(other, "A @ X")
            if X.ndim == 1:
                return self._matmat(X.unsqueeze(1)).squeeze(1)
            return self._matmat(X)
        return NotImplemented

    def __rmatmul__(self, other: Any) -> Any:
        """``X @ A`` for a tensor ``X`` of shape ``(n, d)`` (or a vector of size ``d``)."""
        if not isinstance(other, Tensor):
            return NotImplemented
        X = self._check_operand(other, "X @ A", dim=other.ndim - 1)
        if X.ndim == 1:
            return self._rmatmat(X.unsqueeze(1)).squeeze(1)
        return self._rmatmat(X.mT).mT

    def rmatmat(self, X: Tensor) -> Tensor:
        """Return ``A^T @ X`` for ``X`` of shape ``(d, n)`` (or a vector of size ``d``)."""
        X = self._check_operand(X, "A.T @ X")
        if X.ndim == 1:
            return self._rmatmat(X.unsqueeze(1)).squeeze(1)
        return self._rmatmat(X)

    def transpose(self) -> StructuredMatrix:
        """Return ``A^T`` as a member of the transposed structure."""
        return self._transpose()

    @property
    def T(self) -> StructuredMatrix:
        """``A^T``; see :meth:`transpose`."""
        return self._transpose()

    def diag(self) -> Tensor:
        """Return the diagonal of ``A`` as a 1-d tensor of size ``d``."""
        return self._diag()

    def trace(self) -> Tensor:
        r"""Return :math:`\operatorname{tr}(A)`."""
        return self.diag().sum()

    def average_trace(self) -> Tensor:
        r"""Return :math:`\operatorname{tr}(A) / d`."""
        return self.diag().mean()

    def frobenius_norm(self) -> Tensor:
        r"""Return :math:`\|A\|_F = (\sum_{ij} A_{ij}^2)^{1/2}`."""
        return self._frobenius_norm()

    def infinity_vector_norm(self) -> Tensor:
        r"""Return :math:`\max_{ij} |A_{ij}|`, the largest absolute stored entry."""
        norms = [t.abs().max() for _, t in self.named_tensors() if t.numel() > 0]
        return torch.stack(norms).max()

    def inv(self: S) -> S:
        """Return ``A^{-1}`` in the same structure.

        Raises:
            TypeError: If the structure is not closed under inversion.
            SingularMatrixError: If ``A`` is singular.
        """
        if not type(self).closed_under_inverse:
            raise TypeError(f"{type(self).__name__} is not closed under inversion")
        return self._inv()

    @classmethod
    def from_mat_inner(cls: type[S], X: Tensor) -> S:
        """Return ``from_dense(X @ X^T)`` for ``X`` of shape ``(d, n)``."""
        if not isinstance(X, Tensor) or X.ndim != 2:
            raise ValueError(
                f"from_mat_inner: X must be a 2-d tensor of shape (d, n), got "
                f"{tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__}"
            )
        return cls._from_mat_inner(X)

    def from_inner(self: S, X: Tensor | None = None) -> S:
        """Return ``from_dense((A^T X)(A^T X)^T)``; ``X = None`` means the identity.

        With ``X = None`` this is ``from_dense(A^T A)``.
        """
        if X is None:
            return self._from_inner_identity()
        X = self._check_operand(X, "from_inner(X)")
        if X.ndim == 1:
            X = X.unsqueeze(1)
        return self._from_inner(X)

    @classmethod
    def zeros(cls: type[S], dim: int, dtype: torch.dtype | None = None, device: Any = None) -> S:
        """Return the ``dim x dim`` zero matrix of this structure."""
        cls._check_dim(dim)
        return cls._zeros(dim, dtype=dtype, device=device)

    @classmethod
    def eye(cls: type[S], dim: int, dtype: torch.dtype | None = None, device: Any = None) -> S:
        """Return the ``dim x dim`` identity matrix of this structure."""
        return cls.zeros(dim, dtype=dtype, device=device).diag_add_(1.0)

    @staticmethod
    def _check_dim(dim: object) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")

    @staticmethod
    def _check_square(mat: object, name: str = "sym_mat") -> Tensor:
        if not isinstance(mat, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(mat).__name__}")
        if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] == 0:
            raise ValueError(
                f"{name} must be a non-empty square 2-d tensor, got shape {tuple(mat.shape)}"
            )
        return mat

    # ------------------------------------------- generic (dense) default kernels
    @classmethod
    def _warn_fallback(cls, op: str) -> None:
        warnings.warn(
            f"{cls.__name__}.{op} has no structured kernel and computes through a dense "
            "d x d matrix",
            DenseFallbackWarning,
            stacklevel=3,
        )

    def _assign(self, other: StructuredMatrix) -> None:
        for name, tensor in self.named_tensors():
            tensor.copy_(getattr(other, name))

    def _add(self: S, other: S, alpha: Scalar) -> S:
        self._warn_fallback("__add__")
        return self.from_dense(self.to_dense() + alpha * other.to_dense())

    def _scale(self: S, value: Scalar) -> S:
        self._warn_fallback("__mul__")
        return self.from_dense(value * self.to_dense())

    def _add_(self, other: StructuredMatrix, alpha: Scalar) -> None:
        self._warn_fallback("add_")
        self._assign(self.from_dense(self.to_dense() + alpha * other.to_dense()))

    def _mul_(self, value: Scalar) -> None:
        self._warn_fallback("mul_")
        self._assign(self.from_dense(value * self.to_dense()))

    def _diag_add_(self, value: Scalar) -> None:
        self._warn_fallback("diag_add_")
        dense = self.to_dense()
        eye = torch.eye(dense.shape[0], dtype=dense.dtype, device=dense.device)
        self._assign(self.from_dense(dense + value * eye))

    def _matmul(self: S, other: S) -> S:
        self._warn_fallback("__matmul__")
        return self.from_dense(self.to_dense() @ other.to_dense())

    def _matmat(self, X: Tensor) -> Tensor:
        self._warn_fallback("__matmul__")
        return self.to_dense() @ X

    def _rmatmat(self, X: Tensor) -> Tensor:
        self._warn_fallback("rmatmat")
        return self.to_dense().mT @ X

    def _transpose(self) -> StructuredMatrix:
        from structmat.dense import Dense

        self._warn_fallback("transpose")
        return Dense(self.to_dense().mT.contiguous())

    def _diag(self) -> Tensor:
        self._warn_fallback("diag")
        return self.to_dense().diagonal()

    def _frobenius_norm(self) -> Tensor:
        self._warn_fallback("frobenius_norm")
        return torch.linalg.matrix_norm(self.to_dense())

    def _inv(self: S) -> S:
        self._warn_fallback("inv")
        from structmat._numerics import dense_inverse

        return self.from_dense(dense_inverse(self.to_dense(), type(self).__name__))

    @classmethod
    def _from_mat_inner(cls: type[S], X: Tensor) -> S:
        cls._warn_fallback("from_mat_inner")
        return cls.from_dense(X @ X.mT)

    def _from_inner(self: S, X: Tensor) -> S:
        return self.from_mat_inner(self._rmatmat(X))

    def _from_inner_identity(self: S) -> S:
        self._warn_fallback("from_inner")
        dense = self.to_dense()
        return self.from_dense(dense.mT @ dense)

    @classmethod
    def _zeros(cls: type[S], dim: int, dtype: torch.dtype | None, device: Any) -> S:
        cls._warn_fallback("zeros")
        return cls.from_dense(torch.zeros(dim, dim, dtype=dtype, device=device))


__all__ = ["DenseFallbackWarning", "Scalar", "SingularMatrixError", "StructuredMatrix"]
