r"""The abstract :class:`StructuredMatrix` and its generic (dense-fallback) defaults.

A structure is a set of square ``d x d`` matrices, stored through a few named
tensors. A new structure defines

- :meth:`StructuredMatrix.tensor_shapes`, its storage layout,
- a constructor that takes those tensors as keywords and passes them on to
  ``super().__init__(**tensors)``, which checks them against the layout,
- :meth:`StructuredMatrix.from_dense` and :meth:`StructuredMatrix.to_dense`,

and declares its structural facts as class attributes (:attr:`~StructuredMatrix.name`,
:attr:`~StructuredMatrix.closed_under_inverse`,
:attr:`~StructuredMatrix.closed_under_transpose`,
:attr:`~StructuredMatrix.transpose_name`). Every other operation then works, through a
dense ``d x d`` matrix that emits a :class:`~structmat.DenseFallbackWarning`, until the
structure overrides the kernel hook of that operation:

===========================  =============================================
hook                         computes
===========================  =============================================
``_add(B, alpha)``           ``A + alpha B`` (new member)
``_scale(c)``                ``c A`` (new member)
``_add_(B, alpha)``          ``A <- A + alpha B`` (in place)
``_mul_(c)``                 ``A <- c A`` (in place)
``_diag_add_(c)``            ``A <- A + c I`` (in place)
``_matmul(B)``               ``A @ B`` (same structure)
``_matmat(X)``               ``A @ X`` for ``X`` of shape ``(d, n)``
``_transpose()``             ``A^T``, a member of :meth:`~StructuredMatrix.transpose_structure`
``_diag()``                  the diagonal, shape ``(d,)``
``_trace(mean)``             the trace (``mean``: divided by ``d``)
``_frobenius_norm()``        the Frobenius norm
``_infinity_vector_norm()``  the largest entry in absolute value
``_inv()``                   ``A^{-1}``
``_from_mat_inner(X)``       ``from_dense(X X^T)`` (class method)
``_from_inner(X)``           ``from_dense((A^T X)(A^T X)^T)``
``_from_inner_identity()``   ``from_dense(A^T A)``
``_from_inner2(M)``          ``from_dense(A^T M A)`` for a ``d x d`` matrix ``M``
``_zeros(d, dtype, dev)``    the zero member (class method)
===========================  =============================================

``_transpose`` is the one transpose primitive: it returns :math:`A^\top` as a member of
the transpose structure *on the same storage* (views, no copy; an in-place update of
``A.T`` changes ``A``). Products by :math:`A^\top` derive from it:
``A.rmatmat(X)`` is ``A.T @ X`` (``A._transpose()._matmat(X)``) and ``X @ A`` is
``(A.T @ X.T).T``, so a structure fast at :math:`A X` and at relabelling its storage as
:math:`A^\top` is fast at both. A class that defines a ``_rmatmat`` hook is rejected.

Hooks receive validated arguments: the public methods check them once, here, so a bad
call raises before any operand is touched. Code outside a structure calls only the
public methods.

Tensor operands (``X`` of ``A @ X``, ``X @ A``, ``rmatmat``, ``from_inner``, and
``from_inner2``) must have the dtype of the member: like :func:`torch.mm`, structured
products do not promote, and a float32 member with a float64 ``X`` raises
``TypeError`` (convert one of them first). ``from_mat_inner(X)`` and ``from_dense``
return members in the dtype of their input. Operands may arrive in any strided layout:
an optimizer passes transposed views such as ``grad.mT`` and slices.

:class:`~structmat.LinearStructure` implements the linear operations (``+``, scalar
``*``, their in-place forms, zeros, the Frobenius norm) for structures whose matrix is
linear in their tensors. :mod:`structmat.testing` verifies a structure against all of
this.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from structmat._numerics import stable_norm, stable_sum
from structmat._stacks import (
    STACK_OPERATIONS,
    raise_stack_error,
    stacked_tensors,
    unbound_tensors,
)
from structmat._storage import check_storage, declared_ndims, layout_dimension, search_dimension
from structmat.exceptions import DenseFallbackWarning, SingularMatrixError
from structmat.registry import get_structure, rebuild_member

Scalar = float | int | Tensor
S = TypeVar("S", bound="StructuredMatrix")
_MEMBER = torch.Size()  # the batch shape of a member


class StructuredMatrix(ABC):
    r"""A square matrix :math:`A \in \mathbb{R}^{d \times d}` stored through structure.

    Class attributes:
        name: The registry name of the structure (e.g. ``"triltoeplitz"``).
        closed_under_inverse: Whether the invertible members form a group, so that
            :meth:`inv` returns a member of the same structure.
        closed_under_transpose: Whether the transpose of every member is a member, so
            that :meth:`transpose` returns a member of the same structure.
        transpose_name: Registry name of the structure that holds the transposes, for a
            structure not closed under transposition (``"triutoeplitz"`` for
            ``"triltoeplitz"``); the one way to name a partner structure (families set
            it per member). Its own ``transpose_name`` must name this structure back.
            Neither set: transposes are :class:`~structmat.Dense`, and so are their
            transposes.
        parameters: Names of the class attributes that a template leaves unset
            (``None``) and its concrete structures set, e.g. ``("block_size",)``.
        template_hint: How to get a concrete structure from a template, for the
            error raised when a template is used as one.
        batches_under_vmap: Whether every operation runs under :func:`torch.vmap` over
            stacked members (the tensors of several members of one dimension stacked
            along a new leading axis) with a batching rule for each of its kernels, so
            that one vmapped call processes a batch of members at once and equals
            processing each.
        batches_natively: Whether members stack (:meth:`stack`): a stack holds the
            tensors of several members of one dimension along leading batch
            dimensions (:attr:`batch_shape`), and the operations of
            :data:`STACK_OPERATIONS` act on each member at once, without
            :func:`torch.vmap`; the others raise ``ValueError`` on a stack.
    """

    name: ClassVar[str | None] = None
    closed_under_inverse: ClassVar[bool] = False
    closed_under_transpose: ClassVar[bool] = False
    closed_under_spectral_functions: ClassVar[bool] = False
    batches_under_vmap: ClassVar[bool] = False
    batches_natively: ClassVar[bool] = False
    transpose_name: ClassVar[str | None] = None
    parameters: ClassVar[tuple[str, ...]] = ()
    template_hint: ClassVar[str] = ""
    _template: ClassVar[bool] = False
    #: Whether the constructor only passes its tensors on, so that :meth:`clone` may
    #: skip it (:meth:`_like`); set by the built-in structures whose kernels use ``_like``.
    _plain_constructor: ClassVar[bool] = False
    _transposes: ClassVar[dict[type, type]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._template = cls.is_template()
        if cls.closed_under_transpose and cls.transpose_name not in (None, cls.name):
            raise TypeError(
                f"{cls.__name__} declares closed_under_transpose = True and transpose_name "
                f"= {cls.transpose_name!r}; set only one of them"
            )
        if cls.closed_under_spectral_functions and not callable(
            getattr(cls, "_symmetric_eigen", None)
        ):
            raise TypeError(
                f"{cls.__name__} declares closed_under_spectral_functions but does not "
                "implement _symmetric_eigen (the eigenvalues and the map back to members)"
            )
        if "_rmatmat" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} defines _rmatmat; products by A^T derive from _transpose "
                "(A.rmatmat(X) is A.T @ X): implement _transpose, and _matmat in the "
                "transpose structure"
            )

    def __init__(self, **tensors: Tensor) -> None:
        """Store ``tensors`` after checking them against :meth:`tensor_shapes`.

        Args:
            **tensors: The stored tensors by name, exactly the names of
                :meth:`tensor_shapes`. Structures pass their constructor arguments on.

        Raises:
            TypeError: If the class is a template, a value is not a floating-point
                tensor, or the names are not the declared ones.
            ValueError: If dimensions, dtypes, devices or shapes do not fit the layout.
        """
        cls = type(self)
        if cls._template:
            cls._require_concrete()
        self._tensor_names: list[str] = list(tensors)
        self._shape: torch.Size | None = None
        if tensors:
            self._shape = check_storage(cls, tensors)
            self.__dict__.update(tensors)
        self._batch_shape = _MEMBER  # checked: a member, not a stack

    @classmethod
    def _from_checked(
        cls: type[S],
        shape: torch.Size,
        tensors: dict[str, Tensor],
        batch_shape: torch.Size = _MEMBER,
    ) -> S:
        """A member from tensors already checked for a ``shape`` member (e.g. a transpose).

        Skips the constructor and its storage check; for relabellings of the tensors of
        an existing member, whose shapes, dtypes and devices are known to fit. For a
        stack, ``batch_shape`` is its batch shape (the tensors' leading dimensions).
        """
        member = cls.__new__(cls)
        member._tensor_names = list(tensors)
        member._shape = shape
        member._batch_shape = batch_shape
        member.__dict__.update(tensors)
        return member

    def _like(self: S, **tensors: Tensor) -> S:
        """A member of this structure and size from a kernel's results (no storage check).

        For kernels whose results have the layout, dtype and device of ``self`` by
        construction (``A @ B``, ``A^T A``, clones): skips the constructor's check,
        a few microseconds per member on the optimizer's paths. The tensors must be
        given in the declared order.
        """
        return type(self)._from_checked(self.shape, tensors, self._batch_shape)

    # ------------------------------------------------------- declared structure
    @classmethod
    @abstractmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        """Return ``{name: shape}`` of the stored tensors of a ``dim x dim`` member.

        This is the storage layout: the constructor takes exactly these tensors, and the
        number of dimensions of each must not depend on ``dim``.
        """

    @classmethod
    def stored_numbers(cls, dim: int) -> int:
        """Return how many numbers a ``dim x dim`` member stores (from :meth:`tensor_shapes`)."""
        return sum(math.prod(shape) for shape in cls.tensor_shapes(dim).values())

    @classmethod
    def dim_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """Return the dimension ``d`` of a member whose stored tensors have ``shapes``.

        The default searches ``d`` with ``tensor_shapes(d) == shapes`` (cached per
        layout); structures override it with their formula. The result is checked
        against :meth:`tensor_shapes` either way.
        """
        return search_dimension(cls, shapes)

    @classmethod
    def transpose_structure(cls) -> type[StructuredMatrix]:
        """Return the structure of the transposes of the members of this structure.

        ``cls`` itself if :attr:`closed_under_transpose`, else the structure registered
        as :attr:`transpose_name`, else :class:`~structmat.Dense`.
        """
        cached = StructuredMatrix._transposes.get(cls)
        if cached is not None:
            return cached
        cls._require_concrete()
        if cls.closed_under_transpose:
            result: type[StructuredMatrix] = cls
        elif cls.transpose_name is not None:
            result = get_structure(cls.transpose_name)
        else:
            from structmat.dense import Dense

            result = Dense
        StructuredMatrix._transposes[cls] = result
        return result

    @classmethod
    def is_template(cls) -> bool:
        """Whether ``cls`` is a template: it leaves one of its :attr:`parameters` unset."""
        return any(getattr(cls, parameter, None) is None for parameter in cls.parameters)

    @classmethod
    def _require_concrete(cls) -> None:
        """Raise ``TypeError`` if ``cls`` is a template (the one guard for templates)."""
        if cls._template:
            unset = [p for p in cls.parameters if getattr(cls, p, None) is None]
            raise TypeError(
                f"{cls.__name__} is a template, not a structure (it leaves "
                f"{', '.join(unset)} unset); {cls.template_hint}"
            )

    # ------------------------------------------------------------------ storage
    def register_tensor(self, name: str, tensor: Tensor) -> None:
        """Store ``tensor`` as attribute ``name`` and list it in :meth:`named_tensors`.

        Unlike passing the tensors to ``super().__init__``, this does not check them
        against :meth:`tensor_shapes`; constructors should pass them on instead.

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
        self._shape = None

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
        return self._rebuilt({name: fn(t) for name, t in self.named_tensors()})

    def _rebuilt(self: S, tensors: dict[str, Tensor]) -> S:
        """A member (a stack, for a stack) of this structure and size from new ``tensors``.

        Through the constructor, which checks members; a stack's tensors, which carry
        the batch dimensions, are taken as they are.
        """
        if self._batch_shape:
            return type(self)._from_checked(self.shape, tensors, self._batch_shape)
        return type(self)(**tensors)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored tensors."""
        return getattr(self, self._tensor_names[0]).dtype

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        return getattr(self, self._tensor_names[0]).device

    @property
    def shape(self) -> torch.Size:
        """``torch.Size([d, d])``, read off the stored shapes (:meth:`dim_from_shapes`)."""
        if self._shape is None:
            shapes = tuple(tuple(t.shape) for _, t in self.named_tensors())
            dim = layout_dimension(type(self), shapes)
            self._shape = torch.Size((dim, dim))
        return self._shape

    @property
    def batch_shape(self) -> torch.Size:
        """The leading dimensions of a stack (:meth:`stack`); ``torch.Size([])`` for a member."""
        return self._batch_shape

    @classmethod
    def stack(cls: type[S], members: Sequence[S]) -> S:
        """Return the stack of ``members``: one object whose operations act on each member.

        The stored tensors of the members (of one structure, dimension, dtype and
        device) are stacked along a new leading dimension, so ``batch_shape`` is
        ``(len(members),)`` and ``stack(...).unbind()[i]`` equals ``members[i]``.
        :data:`STACK_OPERATIONS` work on the stack: scalars they return have shape
        ``batch_shape`` (one per member), scalars they take may be tensors of that
        shape (of the stack's dtype and device: they would promote), and tensor
        operands carry the batch dimensions first (``A @ X`` with ``X`` of shape
        ``(*batch_shape, d, n)``). For a structure that declares :attr:`batches_natively`.

        Raises:
            TypeError: If the structure does not batch natively, or the members are
                not all of it.
            ValueError: If there are no members, or their shapes, dtypes, devices or
                batch shapes differ.
        """
        members = list(members)
        tensors, batch_shape = stacked_tensors(cls, members)
        return cls._from_checked(members[0].shape, tensors, batch_shape)

    def unbind(self: S) -> list[S]:
        """Return the members of a stack along its first batch dimension (views, no copy).

        Raises:
            ValueError: If ``self`` is not a stack.
        """
        cls, inner = type(self), self._batch_shape[1:]
        return [cls._from_checked(self.shape, tensors, inner) for tensors in unbound_tensors(self)]

    def _members_to_dense(self) -> Tensor:
        """The dense matrices of a stack's members, stacked (``to_dense`` of a stack)."""
        return torch.stack([member.to_dense() for member in self.unbind()])

    def _require_member(self, op: str) -> None:
        """Raise ``ValueError`` if ``self`` is a stack (``op`` is not a stack operation)."""
        if self._batch_shape:
            raise_stack_error(self, op)

    def to(self: S, *args: Any, **kwargs: Any) -> S:
        """Return a copy with every stored tensor moved by ``Tensor.to(*args, **kwargs)``."""
        return self._map_tensors(lambda t: t.to(*args, **kwargs))

    def clone(self: S) -> S:
        """Return a deep copy (every stored tensor cloned)."""
        if type(self)._plain_constructor:
            return self._like(**{name: t.clone() for name, t in self.named_tensors()})
        return self._map_tensors(torch.clone)

    def detach(self: S) -> S:
        """Return a copy whose stored tensors are detached from the autograd graph."""
        return self._map_tensors(torch.Tensor.detach)

    def __reduce__(self) -> tuple[Any, ...]:
        cls = type(self)
        if "family_template" in cls.__dict__:
            args = (cls.family_template, cls.name, cls.family_attributes, self.tensors())
            return rebuild_member, args
        return _rebuild, (cls, self.tensors())

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
        if self._batch_shape != other._batch_shape:
            raise ValueError(
                f"cannot {op} stacks of batch shapes {tuple(self.batch_shape)} and "
                f"{tuple(other.batch_shape)}"
            )

    def _check_scalar(self, value: object, op: str, in_place: bool = False) -> None:
        if isinstance(value, Tensor):
            if value.numel() != 1 and value.shape != self._batch_shape:
                per_member = f" or of the batch shape {tuple(self.batch_shape)}"
                raise ValueError(
                    f"{op} takes a scalar{per_member if self.batch_shape else ''}, got a tensor "
                    f"of shape {tuple(value.shape)}"
                )
            # a 0-d tensor acts as a number; another would promote an out-of-place result
            if value.ndim and (
                value.device != self.device or (value.dtype != self.dtype and not in_place)
            ):
                raise TypeError(
                    f"{op}: a scalar tensor with dimensions must have the matrix's dtype and "
                    f"device ({self.dtype}, {self.device}), got {value.dtype} on "
                    f"{value.device}; convert it (or pass a 0-d tensor)"
                )
        elif not isinstance(value, int | float) or isinstance(value, bool):
            raise TypeError(f"{op} takes a scalar (int, float or 1-element tensor), got {value!r}")

    def _check_operand(self, X: object, op: str, dim: int = 0) -> Tensor:
        """Check a tensor operand: ``(d,)`` or ``(d, n)`` (``dim``: where ``d`` sits).

        On a stack the operand carries the batch dimensions first, and ``dim`` counts
        from the end of them.
        """
        if not isinstance(X, Tensor):
            raise TypeError(f"{op}: expected a torch.Tensor, got {type(X).__name__}")
        batch = self._batch_shape
        member_ndim = X.ndim - len(batch)
        if (
            member_ndim not in (1, 2)
            or X.shape[: len(batch)] != batch
            or X.shape[len(batch) + dim] != self.shape[0]
        ):
            lead = f"batch dimensions {tuple(batch)} followed by " if batch else ""
            raise ValueError(
                f"{op}: shapes {tuple(self.shape)} and {tuple(X.shape)} are not aligned "
                f"(need {lead}a 1-d or 2-d tensor with size {self.shape[0]} in dimension {dim})"
            )
        self._check_dtype(X, op)
        return X

    def _check_dtype(self, X: Tensor, op: str) -> None:
        if X.dtype != self.dtype:
            raise TypeError(
                f"{op}: the operand has dtype {X.dtype} but the matrix {self.dtype}; "
                "structured products do not promote (like torch.mm): convert one of them"
            )

    def __add__(self: S, other: S) -> S:
        """Return ``A + B`` for ``B`` of the same structure and shape."""
        self._check_same_structure(other, "add")
        return self._add(other, 1.0)

    def __sub__(self: S, other: S) -> S:
        """Return ``A - B`` for ``B`` of the same structure and shape."""
        self._check_same_structure(other, "subtract")
        return self._add(other, -1.0)

    def add(self: S, other: S, alpha: Scalar = 1.0) -> S:
        """Return ``A + alpha * B`` (a new matrix), as :meth:`add_` without changing ``A``.

        On a stack ``alpha`` may hold one factor per member. Costs one pass over the
        storage of the built-in structures.
        """
        self._check_same_structure(other, "add")
        self._check_scalar(alpha, "add(alpha)")
        return self._add(other, alpha)

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
        self._check_scalar(alpha, "add_(alpha)", in_place=True)
        self._add_(other, alpha)
        return self

    def mul_(self: S, value: Scalar) -> S:
        """In place: ``A <- c * A``. Returns ``self``."""
        self._check_scalar(value, "mul_", in_place=True)
        self._mul_(value)
        return self

    def diag_add_(self: S, value: Scalar) -> S:
        """In place: ``A <- A + c * I``. Returns ``self``."""
        self._check_scalar(value, "diag_add_", in_place=True)
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
            if X.ndim == len(self._batch_shape) + 1:
                return self._matmat(X.unsqueeze(-1)).squeeze(-1)
            return self._matmat(X)
        return NotImplemented

    def __rmatmul__(self, other: Any) -> Any:
        """``X @ A`` for a tensor ``X`` of shape ``(n, d)`` (or a vector of size ``d``)."""
        if not isinstance(other, Tensor):
            return NotImplemented
        vector = other.ndim == len(self._batch_shape) + 1
        X = self._check_operand(other, "X @ A", dim=0 if vector else 1)
        if vector:
            return self._transpose()._matmat(X.unsqueeze(-1)).squeeze(-1)
        return self._transpose()._matmat(X.mT).mT

    def rmatmat(self, X: Tensor) -> Tensor:
        """Return ``A^T @ X`` for ``X`` of shape ``(d, n)`` (or a vector of size ``d``).

        The same as ``A.T @ X``: the product of the transpose (:meth:`transpose`, no
        copy) with ``X``.
        """
        X = self._check_operand(X, "A.T @ X")
        if X.ndim == len(self._batch_shape) + 1:
            return self._transpose()._matmat(X.unsqueeze(-1)).squeeze(-1)
        return self._transpose()._matmat(X)

    def transpose(self) -> StructuredMatrix:
        """Return ``A^T`` as a member of :meth:`transpose_structure`.

        Shares storage with ``A`` wherever the structure has a transpose kernel (every
        built-in one): in-place operations on the result change ``A``. Call
        :meth:`clone` on it for an independent copy.
        """
        return self._transpose()

    @property
    def T(self) -> StructuredMatrix:
        """``A^T``, sharing storage with ``A``; see :meth:`transpose`."""
        return self._transpose()

    def diag(self) -> Tensor:
        """Return the diagonal of ``A`` as a 1-d tensor of size ``d``."""
        return self._diag()

    def trace(self) -> Tensor:
        r"""Return :math:`\operatorname{tr}(A)`.

        Half types are summed in float32 after scaling by the largest diagonal entry, so
        the result is finite whenever it is representable in the dtype.
        """
        return self._trace(False)

    def average_trace(self) -> Tensor:
        r"""Return :math:`\operatorname{tr}(A) / d`, half types as in :meth:`trace`."""
        return self._trace(True)

    def symmetric_eigen(self: S) -> tuple[Tensor, Callable[[Tensor], S]]:
        r"""Eigenvalues of a symmetric member, and the members with the same eigenvectors.

        For a structure closed under spectral functions (declared by
        ``closed_under_spectral_functions``), :math:`A = V \operatorname{diag}(\lambda)
        V^\top` and every :math:`V \operatorname{diag}(\mu) V^\top` are members. The
        symmetric part :math:`(A + A^\top)/2` is decomposed.

        Returns:
            :math:`\lambda` (``d`` values in the member's dtype, in the order of the
            structure's blocks) and ``compose(mu)``, which returns
            :math:`V \operatorname{diag}(\mu) V^\top` as a member.

        Raises:
            TypeError: For a structure not closed under spectral functions.
        """
        if not type(self).closed_under_spectral_functions:
            raise TypeError(
                f"{type(self).__name__} is not closed under spectral functions; "
                "symmetric_eigen needs closed_under_spectral_functions = True"
            )
        self._require_member("symmetric_eigen")
        return self._symmetric_eigen()  # type: ignore[attr-defined] (checked at definition)

    def frobenius_norm(self) -> Tensor:
        r"""Return :math:`\|A\|_F = (\sum_{ij} A_{ij}^2)^{1/2}`.

        Half types are accumulated in float32 after scaling by the largest magnitude, so
        the norm is finite whenever it is representable in the dtype.
        """
        return self._frobenius_norm()

    def infinity_vector_norm(self) -> Tensor:
        r"""Return :math:`\max_{ij} |A_{ij}|`, the largest entry in absolute value."""
        return self._infinity_vector_norm()

    def inv(self: S) -> S:
        """Return ``A^{-1}`` in the same structure.

        Raises:
            TypeError: If the structure is not closed under inversion.
            SingularMatrixError: If ``A`` is singular.
        """
        if not type(self).closed_under_inverse:
            raise TypeError(f"{type(self).__name__} is not closed under inversion")
        self._require_member("inv")
        return self._inv()

    @classmethod
    def from_mat_inner(cls: type[S], X: Tensor) -> S:
        """Return ``from_dense(X @ X^T)`` for ``X`` of shape ``(d, n)``."""
        cls._require_concrete()
        if not isinstance(X, Tensor) or X.ndim != 2:
            raise ValueError(
                f"from_mat_inner: X must be a 2-d tensor of shape (d, n), got "
                f"{tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__}"
            )
        return cls._from_mat_inner(X)

    def from_inner2(self: S, XXT: Tensor) -> S:
        r"""Return ``from_dense(A^T @ XXT @ A)`` for a square ``d x d`` matrix ``XXT``.

        The projection of :math:`A^\top M A`, usually for :math:`M = X X^\top` when
        only that product is at hand (:meth:`from_inner` takes ``X`` itself). ``XXT``
        need not be symmetric. Structures compute it without forming
        :math:`A^\top M A`; see each structure for the cost.

        Raises:
            TypeError: If ``XXT`` is not a tensor.
            ValueError: If ``XXT`` is not of shape ``(d, d)``.
        """
        if not isinstance(XXT, Tensor):
            raise TypeError(f"from_inner2: XXT must be a torch.Tensor, got {type(XXT).__name__}")
        if XXT.ndim != 2 or tuple(XXT.shape) != tuple(self.shape):
            raise ValueError(
                f"from_inner2: XXT must have the shape {tuple(self.shape)} of the matrix, "
                f"got {tuple(XXT.shape)}"
            )
        self._check_dtype(XXT, "from_inner2(XXT)")
        self._require_member("from_inner2")
        return self._from_inner2(XXT)

    def from_inner_diagonal(self: S, values: Tensor) -> S:
        r"""Return ``from_dense(A^T diag(values) A)``: :meth:`from_inner2` for a diagonal ``M``.

        For inputs with one-hot rows (embeddings), :math:`X X^\top` is diagonal and
        ``d`` may be a vocabulary size: ``M`` is never formed. Structures compute it
        without forming :math:`A^\top M A`; the generic default forms ``M``.

        Raises:
            TypeError: If ``values`` is not a tensor or not of the matrix's dtype.
            ValueError: If ``values`` is not of shape ``(d,)``.
        """
        if not isinstance(values, Tensor):
            raise TypeError(
                f"from_inner_diagonal: values must be a torch.Tensor, got {type(values).__name__}"
            )
        if values.ndim != 1 or values.shape[0] != self.shape[0]:
            raise ValueError(
                f"from_inner_diagonal: values must have shape ({self.shape[0]},), "
                f"got {tuple(values.shape)}"
            )
        self._check_dtype(values, "from_inner_diagonal(values)")
        self._require_member("from_inner_diagonal")
        return self._from_inner_diagonal(values)

    def from_inner(self: S, X: Tensor | None = None) -> S:
        """Return ``from_dense((A^T X)(A^T X)^T)``; ``X = None`` means the identity.

        With ``X = None`` this is ``from_dense(A^T A)``.
        """
        if X is None:
            return self._from_inner_identity()
        self._require_member("from_inner(X)")
        X = self._check_operand(X, "from_inner(X)")
        if X.ndim == 1:
            X = X.unsqueeze(1)
        return self._from_inner(X)

    @classmethod
    def zeros(cls: type[S], dim: int, dtype: torch.dtype | None = None, device: Any = None) -> S:
        """Return the ``dim x dim`` zero matrix of this structure."""
        cls._require_concrete()
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
    def check_square(mat: object, name: str = "sym_mat") -> Tensor:
        """Return ``mat`` if it is a non-empty square 2-d tensor; for ``from_dense`` inputs.

        Raises:
            TypeError: If ``mat`` is not a tensor.
            ValueError: If it is not a non-empty square matrix (the message names ``name``).
        """
        if not isinstance(mat, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(mat).__name__}")
        if mat.ndim != 2 or mat.shape[0] != mat.shape[1] or mat.shape[0] == 0:
            raise ValueError(
                f"{name} must be a non-empty square 2-d tensor, got shape {tuple(mat.shape)}"
            )
        return mat

    _check_square = check_square

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

    def _transpose(self) -> StructuredMatrix:
        # from_dense is the identity on members of the transpose structure
        self._warn_fallback("transpose")
        return type(self).transpose_structure().from_dense(self.to_dense().mT.contiguous())

    def _transposed_member(self, *tensors: Tensor) -> StructuredMatrix:
        """``A^T`` from its stored tensors in the transpose structure (for ``_transpose``).

        Args:
            *tensors: The tensors of ``A^T``, in the order of the transpose structure's
                :meth:`tensor_shapes`; views of ``A``'s storage, which already fit.

        Returns:
            The member of :meth:`transpose_structure` (no check, no copy).
        """
        partner = type(self).transpose_structure()
        names = declared_ndims(partner)
        return partner._from_checked(
            self.shape, dict(zip(names, tensors, strict=True)), self._batch_shape
        )

    def _diag(self) -> Tensor:
        self._warn_fallback("diag")
        return self.to_dense().diagonal()

    def _trace(self, mean: bool) -> Tensor:
        """The (average) trace from :meth:`_diag` (:func:`~structmat.numerics.stable_sum`).

        Structures that store their diagonal in pieces override it to sum the pieces
        without assembling the diagonal, keeping the half-precision guarantee of
        :meth:`trace` (e.g. by deferring half types to this default).
        """
        return stable_sum(self._diag(), mean=mean, keep=len(self._batch_shape))

    def _frobenius_norm(self) -> Tensor:
        self._warn_fallback("frobenius_norm")
        return stable_norm([self.to_dense()], keep=len(self._batch_shape))

    def _infinity_vector_norm(self) -> Tensor:
        self._warn_fallback("infinity_vector_norm")
        return self.to_dense().abs().max()

    def _inv(self: S) -> S:
        self._warn_fallback("inv")
        from structmat._numerics import dense_inverse

        return self.from_dense(dense_inverse(self.to_dense(), type(self).__name__))

    @classmethod
    def _from_mat_inner(cls: type[S], X: Tensor) -> S:
        cls._warn_fallback("from_mat_inner")
        return cls.from_dense(X @ X.mT)

    def _from_inner(self: S, X: Tensor) -> S:
        return self.from_mat_inner(self._transpose()._matmat(X))

    def _from_inner_identity(self: S) -> S:
        self._warn_fallback("from_inner")
        dense = self.to_dense()
        return self.from_dense(dense.mT @ dense)

    def _from_inner2(self: S, XXT: Tensor) -> S:
        self._warn_fallback("from_inner2")
        dense = self.to_dense()
        return self.from_dense(dense.mT @ XXT @ dense)

    def _from_inner_diagonal(self: S, values: Tensor) -> S:
        self._warn_fallback("from_inner_diagonal")
        return self._from_inner2(torch.diag(values))

    @classmethod
    def _zeros(cls: type[S], dim: int, dtype: torch.dtype | None, device: Any) -> S:
        cls._warn_fallback("zeros")
        return cls.from_dense(torch.zeros(dim, dim, dtype=dtype, device=device))


def _rebuild(cls: type[S], tensors: dict[str, Tensor]) -> S:
    """Unpickle a member of ``cls`` from its stored tensors."""
    return cls(**tensors)


__all__ = [
    "STACK_OPERATIONS",
    "DenseFallbackWarning",
    "Scalar",
    "SingularMatrixError",
    "StructuredMatrix",
]
