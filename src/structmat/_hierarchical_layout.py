r"""The template of the two hierarchical structures: storage, family and kernels.

Both :class:`~structmat.Hierarchical` and :class:`~structmat.TransposedHierarchical`
store five tensors ``A, B, C, D, E`` that define

.. math::

    H = \begin{pmatrix} A & B_1 & B_2 \\ 0 & \operatorname{diag}(C) & 0 \\ 0 & D & E
    \end{pmatrix},
    \qquad B = (B_1\ B_2),

with block sizes :math:`(K_1, d_c, K_2)`, :math:`K_1 + d_c + K_2 = d`;
``Hierarchical`` represents :math:`M = H` and ``TransposedHierarchical`` represents
:math:`M = H^\top` (class attribute ``transposed``). The transpose of a member is the
member of the other structure on the same tensors, so every kernel is a block formula
of :mod:`structmat._hierarchical_blocks` or :mod:`structmat._hierarchical_kernels`
applied to :math:`H` or, through a transpose identity, to :math:`H^\top`:
:math:`H^\top X`, :math:`H^\top H'^\top = (H' H)^\top`,
:math:`(H^\top)^{-1} = (H^{-1})^\top`, :math:`P_{H^\top}(S) = P_H(S^\top)^\top`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, TypeVar

import torch
from torch import Tensor

from structmat._hierarchical_blocks import (
    Parts,
    assemble,
    block_inverse,
    block_product,
    project_dense,
    project_outer_gram,
    project_outer_sandwich,
    project_sandwich,
)
from structmat._hierarchical_kernels import (
    GRAM_ROUTE_MIN_ELEMENTS,
    arrow_gram,
    inner_arrow,
    left_product,
    outer_arrow,
    project_arrow,
    right_product,
)
from structmat._layout import stored_by_columns
from structmat.base import Scalar, StructuredMatrix
from structmat.linear_structure import LinearStructure
from structmat.registry import family_member

L = TypeVar("L", bound="HierarchicalLayout")

#: Registry prefix of the family, by the value of ``transposed``.
FAMILIES = {False: "hierarchical", True: "transposedhierarchical"}


class HierarchicalLayout(LinearStructure):
    r"""Template of :class:`~structmat.Hierarchical` and :class:`~structmat.TransposedHierarchical`.

    A family template (a subclass that sets ``transposed``) gets one concrete subclass
    per pair ``(max_k1, max_k2)`` from :meth:`with_sizes`, registered as
    ``f"{FAMILIES[transposed]}{k1}_{k2}"``; its ``transpose_name`` names the member of
    the other family with the same sizes.

    Class attributes:
        transposed: Whether a member represents :math:`H^\top` (else :math:`H`).
        family: Registry prefix of the family, ``FAMILIES[transposed]``.
        max_k1: Largest size :math:`k_1` of the top-left dense block ``A``.
        max_k2: Largest size :math:`k_2` of the bottom-right dense block ``E``.
    """

    transposed: ClassVar[bool | None] = None
    family: ClassVar[str | None] = None
    max_k1: ClassVar[int | None] = None
    max_k2: ClassVar[int | None] = None
    closed_under_inverse = True
    parameters = ("transposed", "max_k1", "max_k2")
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
        if root.transposed is None:
            raise TypeError(f"{cls.__name__} belongs to no hierarchical family")
        return family_member(
            root,
            f"{root.family}{k1}_{k2}",
            max_k1=k1,
            max_k2=k2,
            transpose_name=f"{FAMILIES[not root.transposed]}{k1}_{k2}",
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

    def parts(self) -> Parts:
        """Return ``(A, B, C, D, E)``."""
        return self.A, self.B, self.C, self.D, self.E

    def _of(self: L, parts: Parts) -> L:
        return type(self)(*parts)

    # --------------------------------------------------------- dense round trip
    @classmethod
    def from_dense(cls: type[L], sym_mat: Tensor) -> L:
        r"""Project onto the pattern, folding mirrors into ``B`` and ``D``; never a view.

        :math:`P_H(S)` keeps ``A``, ``E`` and the diagonal of :math:`S` and folds
        :math:`B = S_{1,23} + S_{23,1}^\top`, :math:`D = S_{3,2} + S_{2,3}^\top`;
        :math:`P_{H^\top}(S) = P_H(S^\top)^\top` keeps the corners transposed (the folded
        blocks are symmetric in :math:`S \leftrightarrow S^\top`). Reads
        :math:`O(d (K_1 + K_2))` entries.
        """
        S = cls._check_square(sym_mat)
        A, B, C, D, E = project_dense(S, cls.block_sizes(S.shape[0]))
        if cls.transposed:
            A, E = A.mT, E.mT
        return cls(A, B, C, D, E)

    def to_dense(self) -> Tensor:
        """Assemble the ``d x d`` matrix."""
        dense = assemble(self.parts())
        return dense.mT if self.transposed else dense

    # ---------------------------------------------------------------- kernels
    def _matmat(self, X: Tensor) -> Tensor:
        r""":math:`H X` or :math:`H^\top X`, :math:`O(n d k)`, in the layout of ``X``.

        A transposed view ``X = W^T`` is multiplied as :math:`(W M^\top)^\top`, in its
        own layout (:mod:`structmat._hierarchical_kernels`).
        """
        if stored_by_columns(X):
            return right_product(X.mT, self.parts(), transpose=not self.transposed).mT
        return left_product(X, self.parts(), transpose=bool(self.transposed))

    def _transpose(self) -> StructuredMatrix:
        """The same tensors read in the other hierarchical structure (no copy)."""
        return self._transposed_member(*self.parts())

    def _matmul(self: L, other: L) -> L:
        r"""Blockwise product, :math:`O(d k^2)`: :math:`H H'`, or :math:`(H' H)^\top`."""
        if self.transposed:
            return self._of(block_product(other.parts(), self.parts()))
        return self._of(block_product(self.parts(), other.parts()))

    def _inv(self: L) -> L:
        r"""Block inverse :math:`H^{-1}` (:math:`(H^{-1})^\top` for :math:`H^\top`).

        Raises:
            SingularMatrixError: If ``A``, ``E`` or ``diag(C)`` is singular.
        """
        return self._of(block_inverse(self.parts(), f"{type(self).__name__} matrix"))

    def _diag(self) -> Tensor:
        """``(diag(A), C, diag(E))``, :math:`O(d)`."""
        return torch.cat([self.A.diagonal(), self.C, self.E.diagonal()])

    def _diag_add_(self, value: Scalar) -> None:
        self.A.diagonal().add_(value)
        self.C.add_(value)
        self.E.diagonal().add_(value)

    @classmethod
    def _from_mat_inner(cls: type[L], X: Tensor) -> L:
        r"""Project :math:`X X^\top` from its rows ``a, e`` and the diagonal of its middle.

        :math:`G = (X_1; X_3) X^\top` in one GEMM and the squared row norms of
        :math:`X_2` (:func:`~structmat._hierarchical_kernels.arrow_gram`) give
        :math:`A = X_1 X_1^\top`, :math:`B = 2 X_1 X_{23}^\top`,
        :math:`C = \sum_j (X_2)_{:j}^2`, :math:`D = 2 X_3 X_2^\top`,
        :math:`E = X_3 X_3^\top`; :math:`O(n d k)`, one pass over ``X``. The same
        tensors in both structures, as :math:`X X^\top` is symmetric.
        """
        sizes = cls.block_sizes(X.shape[0])
        G, s = arrow_gram(X, sizes)
        return cls(**project_arrow(G, s, sizes))

    def _from_inner(self: L, X: Tensor) -> L:
        r"""Project :math:`M^\top X X^\top M` without forming :math:`M^\top X`.

        For :math:`M = H` the rows ``a, e`` of :math:`H^\top S H` and the diagonal of
        its middle block follow from those of :math:`S = X X^\top`
        (:func:`~structmat._hierarchical_kernels.inner_arrow`); for :math:`M = H^\top`
        only the rows ``a, e`` of :math:`Y = H X` are formed
        (:func:`~structmat._hierarchical_kernels.outer_arrow`). Either costs
        :math:`O(n d k)` in one or two GEMMs and one pass over ``X``. Small operands
        (below :data:`~structmat._hierarchical_kernels.GRAM_ROUTE_MIN_ELEMENTS`
        elements) take ``from_mat_inner(M^T @ X)``, which has fewer ops.
        """
        if X.numel() < GRAM_ROUTE_MIN_ELEMENTS:
            return self.from_mat_inner(self.rmatmat(X))
        if self.transposed:
            G, s = outer_arrow(self.parts(), X)
        else:
            G, s = inner_arrow(self.parts(), *arrow_gram(X, self.sizes))
        return type(self)(**project_arrow(G, s, self.sizes))

    def _from_inner_identity(self: L) -> L:
        r"""Project :math:`M^\top M` blockwise, :math:`O(d k^2)`.

        For :math:`M = H`: :math:`H^\top H = [[A^\top A, A^\top B], [B^\top A, B^\top B +
        R^\top R]]` with only the needed blocks of :math:`B^\top B`:
        :math:`A' = A^\top A`, :math:`B' = 2 A^\top B`,
        :math:`C' = C^2 + \sum_i (B_1)_{i:}^2 + \sum_i D_{i:}^2`,
        :math:`D' = 2 (B_2^\top B_1 + E^\top D)`, :math:`E' = B_2^\top B_2 + E^\top E`.
        For :math:`M = H^\top`: :math:`P(H H^\top)`
        (:func:`~structmat._hierarchical_blocks.project_outer_gram`).
        """
        if self.transposed:
            return self._of(project_outer_gram(self.parts()))
        A, B, C, D, E = self.parts()
        B_c, B_e = B.split([C.shape[0], E.shape[0]], dim=1)
        return type(self)(
            A=A.mT @ A,
            B=2 * (A.mT @ B),
            C=C.square() + B_c.square().sum(0) + D.square().sum(0),
            D=2 * (B_e.mT @ B_c + E.mT @ D),
            E=B_e.mT @ B_e + E.mT @ E,
        )

    def _from_inner2(self: L, XXT: Tensor) -> L:
        r"""Project :math:`M^\top S M` blockwise.

        :math:`H^\top S H` in :math:`O(d k^2)`
        (:func:`~structmat._hierarchical_blocks.project_sandwich`);
        :math:`P_{H^\top}(H S H^\top) = P_H(H S^\top H^\top)^\top` in :math:`O(k d^2)`
        (:func:`~structmat._hierarchical_blocks.project_outer_sandwich`), reading every
        entry of ``S`` once per row of ``A``.
        """
        if self.transposed:
            return self._of(project_outer_sandwich(self.parts(), XXT.mT))
        return self._of(project_sandwich(self.parts(), XXT))
