r"""Storage, block sizes and family machinery shared by the two hierarchical structures.

Both :class:`~structmat.Hierarchical` and :class:`~structmat.TransposedHierarchical`
store five tensors ``A, B, C, D, E`` that define

.. math::

    H = \begin{pmatrix} A & B_1 & B_2 \\ 0 & \operatorname{diag}(C) & 0 \\ 0 & D & E
    \end{pmatrix},
    \qquad B = (B_1\ B_2),

with block sizes :math:`(K_1, d_c, K_2)`, :math:`K_1 + d_c + K_2 = d`;
``Hierarchical`` represents :math:`H` and ``TransposedHierarchical`` represents
:math:`H^\top`. Both have the same diagonal, so :meth:`_diag` and :meth:`_diag_add_`
live here.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from structmat.base import Scalar
from structmat.linear_structure import LinearStructure

L = TypeVar("L", bound="HierarchicalLayout")


class HierarchicalLayout(LinearStructure):
    r"""Common base of the hierarchical structures (not a structure itself).

    A family root (a direct subclass defining ``family``) gets one concrete subclass per
    pair ``(max_k1, max_k2)`` from :meth:`with_sizes`.

    Class attributes:
        family: Registry prefix of the family, e.g. ``"hierarchical"``.
        max_k1: Largest size :math:`k_1` of the top-left dense block ``A``.
        max_k2: Largest size :math:`k_2` of the bottom-right dense block ``E``.
    """

    family: ClassVar[str]
    max_k1: ClassVar[int]
    max_k2: ClassVar[int]

    def __init__(self, A: Tensor, B: Tensor, C: Tensor, D: Tensor, E: Tensor) -> None:
        super().__init__()
        k1, k2 = self._require_sizes()
        tensors = {"A": A, "B": B, "C": C, "D": D, "E": E}
        for arg, tensor in tensors.items():
            if not isinstance(tensor, Tensor):
                raise TypeError(f"{arg} must be a torch.Tensor, got {type(tensor).__name__}")
        ndims = {"A": 2, "B": 2, "C": 1, "D": 2, "E": 2}
        for arg, ndim in ndims.items():
            if tensors[arg].ndim != ndim:
                raise ValueError(
                    f"{arg} must be a {ndim}-d tensor, got shape {tuple(tensors[arg].shape)}"
                )
        dim = A.shape[0] + C.shape[0] + E.shape[0]
        if dim == 0:
            raise ValueError("A, C and E are all empty: the matrix needs d >= 1")
        expected = self.tensor_shapes(dim)
        for arg, shape in expected.items():
            if tuple(tensors[arg].shape) != shape:
                sizes = self.block_sizes(dim)
                raise ValueError(
                    f"{arg} must have shape {shape} for d = {dim} with (max_k1, max_k2) = "
                    f"({k1}, {k2}), i.e. block sizes (K1, dc, K2) = {sizes}; "
                    f"got {tuple(tensors[arg].shape)}"
                )
        if len({(t.dtype, t.device) for t in tensors.values()}) != 1:
            raise ValueError("A, B, C, D and E must share one dtype and device")
        for arg, tensor in tensors.items():
            self.register_tensor(arg, tensor)

    # ------------------------------------------------------------------ family
    @classmethod
    def with_sizes(cls: type[L], k1: int, k2: int) -> type[L]:
        """Return the (cached) structure of this family with ``max_k1 = k1``, ``max_k2 = k2``.

        Raises:
            TypeError: If ``k1`` or ``k2`` is not an integer.
            ValueError: If ``k1`` or ``k2`` is not positive.
        """
        for arg, value in (("k1", k1), ("k2", k2)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{arg} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value}")
        return _sized_class(cls._family_root(), k1, k2)

    @classmethod
    def _family_root(cls) -> type[HierarchicalLayout]:
        for klass in cls.__mro__:
            if "family" in vars(klass):
                return klass
        raise TypeError(f"{cls.__name__} belongs to no hierarchical family")

    @classmethod
    def _require_sizes(cls) -> tuple[int, int]:
        k1, k2 = getattr(cls, "max_k1", None), getattr(cls, "max_k2", None)
        if k1 is None or k2 is None:
            raise TypeError(
                f"{cls.__name__} is a template; use {cls.__name__}.with_sizes(k1, k2)"
            )
        return k1, k2

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild, (self._family_root(), self.max_k1, self.max_k2, self.tensors())

    # ----------------------------------------------------------------- layout
    @classmethod
    def block_sizes(cls, dim: int) -> tuple[int, int, int]:
        r"""Return the block sizes :math:`(K_1, d_c, K_2)` of a ``dim x dim`` member.

        ``A`` is filled first, then ``E``, then the diagonal:
        :math:`d \le k_1`: :math:`(d, 0, 0)`; :math:`d \le k_1 + k_2`:
        :math:`(k_1, 0, d - k_1)`; otherwise :math:`(k_1, d - k_1 - k_2, k_2)`.
        """
        k1, k2 = cls._require_sizes()
        if dim <= k1:
            return dim, 0, 0
        if dim <= k1 + k2:
            return k1, 0, dim - k1
        return k1, dim - k1 - k2, k2

    @classmethod
    def tensor_shapes(cls, dim: int) -> dict[str, tuple[int, ...]]:
        """Return ``{name: shape}`` for ``A, B, C, D, E``.

        The shapes are ``A (K1, K1)``, ``B (K1, d - K1)``, ``C (dc,)``, ``D (K2, dc)``
        and ``E (K2, K2)`` with ``(K1, dc, K2) = block_sizes(dim)``.
        """
        k1, dc, k2 = cls.block_sizes(dim)
        return {"A": (k1, k1), "B": (k1, dim - k1), "C": (dc,), "D": (k2, dc), "E": (k2, k2)}

    @property
    def sizes(self) -> tuple[int, int, int]:
        """The block sizes ``(K1, dc, K2)`` of this member."""
        return self.A.shape[0], self.C.shape[0], self.E.shape[0]

    @property
    def shape(self) -> torch.Size:
        """``torch.Size([d, d])`` with ``d = K1 + dc + K2``."""
        dim = sum(self.sizes)
        return torch.Size((dim, dim))

    def parts(self) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Return ``(A, B, C, D, E)``."""
        return self.A, self.B, self.C, self.D, self.E

    # ---------------------------------------------------------------- kernels
    def _diag(self) -> Tensor:
        """``(diag(A), C, diag(E))``, :math:`O(d)`."""
        return torch.cat([self.A.diagonal(), self.C, self.E.diagonal()])

    def _diag_add_(self, value: Scalar) -> None:
        self.A.diagonal().add_(value)
        self.C.add_(value)
        self.E.diagonal().add_(value)


@functools.cache
def _sized_class(root: type[L], k1: int, k2: int) -> type[L]:
    """Create the member of ``root``'s family with sizes ``(k1, k2)`` (once per triple)."""
    name = f"{root.__name__}{k1}_{k2}"
    return type(
        name,
        (root,),
        {
            "max_k1": k1,
            "max_k2": k2,
            "name": f"{root.family}{k1}_{k2}",
            "__module__": root.__module__,
            "__qualname__": name,
            "__doc__": f"{root.__name__} with max_k1 = {k1}, max_k2 = {k2}; "
            f"see :class:`{root.__name__}`.",
        },
    )


def _rebuild(
    root: type[HierarchicalLayout], k1: int, k2: int, tensors: dict[str, Tensor]
) -> HierarchicalLayout:
    """Unpickle a member of ``root``'s family."""
    return root.with_sizes(k1, k2)(**tensors)
