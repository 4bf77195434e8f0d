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

from collections.abc import Mapping
from typing import ClassVar, TypeVar

import torch
from torch import Tensor

from structmat.base import Scalar
from structmat.linear_structure import LinearStructure
from structmat.registry import family_member

L = TypeVar("L", bound="HierarchicalLayout")


class HierarchicalLayout(LinearStructure):
    r"""Common base of the hierarchical structures (not a structure itself).

    A family template (a subclass that sets ``family``) gets one concrete subclass per
    pair ``(max_k1, max_k2)`` from :meth:`with_sizes`, registered as
    ``f"{family}{k1}_{k2}"``; its transpose is the member of ``transpose_family`` with
    the same sizes.

    Class attributes:
        family: Registry prefix of the family, e.g. ``"hierarchical"``.
        transpose_family: Registry prefix of the family of the transposes.
        max_k1: Largest size :math:`k_1` of the top-left dense block ``A``.
        max_k2: Largest size :math:`k_2` of the bottom-right dense block ``E``.
    """

    family: ClassVar[str | None] = None
    transpose_family: ClassVar[str | None] = None
    max_k1: ClassVar[int | None] = None
    max_k2: ClassVar[int | None] = None
    parameters = ("max_k1", "max_k2")
    template_hint = "use Hierarchical.with_sizes(k1, k2) or TransposedHierarchical.with_sizes"

    def __init__(self, A: Tensor, B: Tensor, C: Tensor, D: Tensor, E: Tensor) -> None:
        super().__init__(A=A, B=B, C=C, D=D, E=E)

    # ------------------------------------------------------------------ family
    @classmethod
    def with_sizes(cls: type[L], k1: int, k2: int) -> type[L]:
        """Return the (cached) structure of this family with ``max_k1 = k1``, ``max_k2 = k2``.

        Raises:
            TypeError: If ``k1`` or ``k2`` is not an integer, or ``cls`` belongs to no
                family.
            ValueError: If ``k1`` or ``k2`` is not positive.
        """
        for arg, value in (("k1", k1), ("k2", k2)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{arg} must be an int, got {value!r}")
            if value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value}")
        root = getattr(cls, "family_template", cls)
        if root.family is None or root.transpose_family is None:
            raise TypeError(f"{cls.__name__} belongs to no hierarchical family")
        return family_member(
            root,
            f"{root.family}{k1}_{k2}",
            max_k1=k1,
            max_k2=k2,
            transpose_name=f"{root.transpose_family}{k1}_{k2}",
        )

    @classmethod
    def _require_sizes(cls) -> tuple[int, int]:
        cls._require_concrete()
        assert cls.max_k1 is not None and cls.max_k2 is not None
        return cls.max_k1, cls.max_k2

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

    @classmethod
    def dim_from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> int:
        """``d = K1 + dc + K2`` from the shapes of ``A``, ``C`` and ``E``."""
        return shapes["A"][0] + shapes["C"][0] + shapes["E"][0]

    @property
    def sizes(self) -> tuple[int, int, int]:
        """The block sizes ``(K1, dc, K2)`` of this member."""
        return self.A.shape[0], self.C.shape[0], self.E.shape[0]

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
