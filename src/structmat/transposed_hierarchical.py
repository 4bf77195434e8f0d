r"""Transposed hierarchical matrices, the transpose structure of :mod:`structmat.hierarchical`.

The family ``transposedhierarchical{k1}_{k2}`` holds the matrices

.. math::

    M = H^\top = \begin{pmatrix} A^\top & 0 & 0 \\ B_1^\top & \operatorname{diag}(c) & D^\top
    \\ B_2^\top & 0 & E^\top \end{pmatrix}

for ``H`` in ``hierarchical{k1}_{k2}``, stored as the tensors of ``H``. The kernels are
those of the template :class:`~structmat._hierarchical_layout.HierarchicalLayout`.
"""

from __future__ import annotations

from structmat._hierarchical_layout import FAMILIES, HierarchicalLayout
from structmat.registry import register_family


class TransposedHierarchical(HierarchicalLayout):
    r"""Transposed hierarchical matrix :math:`M = H^\top`, ``H`` a :class:`~structmat.Hierarchical`.

    The concrete class for sizes ``(k1, k2)`` is
    ``TransposedHierarchical.with_sizes(k1, k2)`` (registered as
    ``"transposedhierarchical{k1}_{k2}"``). It stores the same tensors with the same
    shapes and block sizes as ``Hierarchical.with_sizes(k1, k2)``: ``A (K1, K1)``,
    ``B (K1, d - K1)``, ``C (dc,)``, ``D (K2, dc)``, ``E (K2, K2)``, and represents
    the transpose of the hierarchical matrix they define.

    ``from_dense(S)`` keeps the entries of the dense corners :math:`A^\top, E^\top` and
    of the diagonal, and folds mirrors into the one-sided blocks:
    :math:`B^\top = S_{23,1} + S_{1,23}^\top`, :math:`D^\top = S_{2,3} + S_{3,2}^\top`.

    Every kernel has the cost of its :class:`~structmat.Hierarchical` counterpart
    (:math:`k = K_1 + K_2`): ``A @ X``, ``A^T @ X``, ``from_mat_inner(X)`` and
    ``from_inner(X)`` :math:`O(n d k)`; ``A @ B``, ``inv`` and ``from_inner()``
    :math:`O(d k^2)` (plus :math:`O(k^3)` for ``inv``). ``from_inner2(M)`` projects
    :math:`H M^\top H^\top`: every entry of ``M`` matters, :math:`O(k d^2)` without a
    ``d x d`` intermediate.
    """

    transposed = True
    family = FAMILIES[True]
    template_hint = (
        "use TransposedHierarchical.with_sizes(k1, k2) or "
        "get_structure('transposedhierarchical{k1}_{k2}')"
    )


register_family(
    r"transposedhierarchical(\d+)_(\d+)",
    TransposedHierarchical.with_sizes,
    "transposedhierarchical{k1}_{k2}",
)
