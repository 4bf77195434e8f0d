r"""Transposed hierarchical matrices, the transpose structure of :mod:`structmat.hierarchical`.

The family ``transposedhierarchical{k1}_{k2}`` holds the matrices

.. math::

    M = H^\top = \begin{pmatrix} A^\top & 0 & 0 \\ B_1^\top & \operatorname{diag}(c) & D^\top
    \\ B_2^\top & 0 & E^\top \end{pmatrix}

for ``H`` in ``hierarchical{k1}_{k2}``. A member stores the tensors of ``H`` itself, so
every kernel is the corresponding kernel of ``H`` through a transpose identity:
:math:`M X = H^\top X`, :math:`M^\top X = H X`, :math:`M M' = (H' H)^\top`,
:math:`M^{-1} = (H^{-1})^\top`, and the projection satisfies
:math:`P_M(S) = P_H(S^\top)^\top`.
"""

from __future__ import annotations

from torch import Tensor

from structmat._hierarchical_kernels import GRAM_ROUTE_MIN_ELEMENTS, outer_arrow, project_arrow
from structmat._hierarchical_layout import HierarchicalLayout
from structmat.hierarchical import Hierarchical, project_outer_gram, project_outer_sandwich
from structmat.registry import register_family


class TransposedHierarchical(HierarchicalLayout):
    r"""Transposed hierarchical matrix :math:`M = H^\top`, ``H`` a :class:`Hierarchical`.

    The concrete class for sizes ``(k1, k2)`` is
    ``TransposedHierarchical.with_sizes(k1, k2)`` (registered as
    ``"transposedhierarchical{k1}_{k2}"``). It stores the same tensors with the same
    shapes and block sizes as ``Hierarchical.with_sizes(k1, k2)``: ``A (K1, K1)``,
    ``B (K1, d - K1)``, ``C (dc,)``, ``D (K2, dc)``, ``E (K2, K2)``, and represents
    the transpose of the hierarchical matrix they define.

    ``from_dense(S)`` keeps the entries of the dense corners :math:`A^\top, E^\top` and
    of the diagonal, and folds mirrors into the one-sided blocks:
    :math:`B^\top = S_{23,1} + S_{1,23}^\top`, :math:`D^\top = S_{2,3} + S_{3,2}^\top`.

    Every kernel has the cost of its :class:`Hierarchical` counterpart
    (:math:`k = K_1 + K_2`): ``A @ X``, ``A^T @ X``, ``from_mat_inner(X)`` and
    ``from_inner(X)`` :math:`O(n d k)`; ``A @ B``, ``inv`` and ``from_inner()``
    :math:`O(d k^2)` (plus :math:`O(k^3)` for ``inv``). ``from_inner2(M)`` projects
    :math:`H M^\top H^\top` (see :func:`~structmat.hierarchical.project_outer_sandwich`):
    every entry of ``M`` matters, :math:`O(k d^2)` without a ``d x d`` intermediate.
    """

    family = "transposedhierarchical"
    transpose_family = "hierarchical"
    template_hint = (
        "use TransposedHierarchical.with_sizes(k1, k2) or "
        "get_structure('transposedhierarchical{k1}_{k2}')"
    )

    @classmethod
    def _hierarchical_class(cls) -> type[Hierarchical]:
        return cls.transpose_structure()  # type: ignore[return-value]

    def _untransposed(self) -> Hierarchical:
        """The :class:`Hierarchical` ``H`` with ``self = H^T`` (same tensors, no copy)."""
        return self._hierarchical_class()._from_checked(self.shape, self.tensors())

    @classmethod
    def _of(cls, H: Hierarchical) -> TransposedHierarchical:
        r"""Return :math:`H^\top` as a member of this class (same tensors, no copy)."""
        return cls._from_checked(H.shape, H.tensors())

    # --------------------------------------------------------- dense round trip
    @classmethod
    def from_dense(cls, sym_mat: Tensor) -> TransposedHierarchical:
        r"""Return :math:`P_H(S^\top)^\top`, reading :math:`O(d (K_1 + K_2))` entries.

        The folded blocks ``B`` and ``D`` are symmetric in :math:`S \leftrightarrow
        S^\top`, so they equal those of :math:`P_H(S)`; the kept corners ``A`` and ``E``
        are read transposed.
        """
        H = cls._hierarchical_class().from_dense(sym_mat)
        return cls(A=H.A.mT, B=H.B, C=H.C, D=H.D, E=H.E.mT)

    def to_dense(self) -> Tensor:
        r"""Assemble the ``d x d`` matrix :math:`H^\top`."""
        return self._untransposed().to_dense().mT

    # ---------------------------------------------------------------- kernels
    def _matmat(self, X: Tensor) -> Tensor:
        r""":math:`M X = H^\top X`."""
        return self._untransposed()._rmatmat(X)

    def _rmatmat(self, X: Tensor) -> Tensor:
        r""":math:`M^\top X = H X`."""
        return self._untransposed()._matmat(X)

    def _matmul(self, other: TransposedHierarchical) -> TransposedHierarchical:
        r""":math:`M M' = H^\top H'^\top = (H' H)^\top`."""
        return self._of(other._untransposed()._matmul(self._untransposed()))

    def _transpose(self) -> Hierarchical:
        r""":math:`M^\top = H` (same tensors, no copy)."""
        return self._untransposed()

    def _inv(self) -> TransposedHierarchical:
        r""":math:`M^{-1} = (H^{-1})^\top`.

        Raises:
            SingularMatrixError: If ``A``, ``E`` or ``diag(C)`` is singular.
        """
        return self._of(self._untransposed()._inv())

    @classmethod
    def _from_mat_inner(cls, X: Tensor) -> TransposedHierarchical:
        r""":math:`P_M(X X^\top) = P_H(X X^\top)^\top` since :math:`X X^\top` is symmetric."""
        return cls._of(cls._hierarchical_class()._from_mat_inner(X))

    def _from_inner(self, X: Tensor) -> TransposedHierarchical:
        r""":math:`P_M(M^\top X X^\top M) = P_H(Y Y^\top)^\top` for :math:`Y = H X`.

        Only the rows ``a, e`` of ``Y`` are formed
        (:func:`~structmat._hierarchical_kernels.outer_arrow`): :math:`O(n d k)` in two
        GEMMs and one pass over ``X``; small operands take ``from_mat_inner(M^T @ X)``.
        """
        if X.numel() < GRAM_ROUTE_MIN_ELEMENTS:
            return self.from_mat_inner(self._rmatmat(X))
        H = self._untransposed()
        G, s = outer_arrow(H.parts(), X)
        return self._of(type(H)(**project_arrow(G, s, self.sizes)))

    def _from_inner_identity(self) -> TransposedHierarchical:
        r""":math:`P_M(M^\top M) = P_H(H H^\top)^\top` (blockwise, :math:`O(d k^2)`)."""
        return type(self)(*project_outer_gram(self.parts()))

    def _from_inner2(self, XXT: Tensor) -> TransposedHierarchical:
        r""":math:`P_M(M^\top S M) = P_M(H S H^\top) = P_H(H S^\top H^\top)^\top`."""
        return type(self)(*project_outer_sandwich(self.parts(), XXT.mT))


register_family(
    r"transposedhierarchical(\d+)_(\d+)",
    TransposedHierarchical.with_sizes,
    "transposedhierarchical{k1}_{k2}",
)
