r"""Hierarchical matrices: two dense corners linked through a diagonal middle block.

The family ``hierarchical{k1}_{k2}`` holds the matrices

.. math::

    H = \begin{pmatrix} A & B_1 & B_2 \\ 0 & \operatorname{diag}(c) & 0 \\ 0 & D & E
    \end{pmatrix}
      = \begin{pmatrix} A & B \\ 0 & R \end{pmatrix},
    \qquad
    R = \begin{pmatrix} \operatorname{diag}(c) & 0 \\ D & E \end{pmatrix},

with ``A`` (:math:`K_1 \times K_1`) and ``E`` (:math:`K_2 \times K_2`) dense. Both
``H`` and its lower part ``R`` are block upper/lower triangular, so products and
inverses stay in the structure: the invertible members form a group. Every kernel
costs :math:`O(d (K_1 + K_2)^2)` (or :math:`O(n d (K_1 + K_2))` with an
``n``-column operand) and never forms a ``d x d`` matrix; they live in the template
:class:`~structmat._hierarchical_layout.HierarchicalLayout`, shared with the
transposes (:mod:`structmat.transposed_hierarchical`).
"""

from __future__ import annotations

from structmat._hierarchical_layout import FAMILIES, HierarchicalLayout
from structmat.registry import register_family


class Hierarchical(HierarchicalLayout):
    r"""Hierarchical matrix :math:`H = [[A, B_1, B_2], [0, \operatorname{diag}(C), 0], [0, D, E]]`.

    The concrete class for sizes ``(k1, k2)`` is ``Hierarchical.with_sizes(k1, k2)``
    (registered as ``"hierarchical{k1}_{k2}"``). Its block sizes
    :math:`(K_1, d_c, K_2)` fill ``A`` first, then ``E``, then the diagonal (see
    :meth:`block_sizes`). Stored tensors: ``A (K1, K1)``, ``B = (B1 B2)`` of shape
    ``(K1, d - K1)``, ``C (dc,)``, ``D (K2, dc)``, ``E (K2, K2)``; all general
    (``A`` and ``E`` need not be symmetric).

    ``from_dense(S)`` keeps ``A``, ``E`` and the diagonal ``C`` of ``S`` and folds the
    mirror entries into the one-sided blocks: :math:`B = S_{1,23} + S_{23,1}^\top`,
    :math:`D = S_{3,2} + S_{2,3}^\top`. The transpose is a
    :class:`~structmat.TransposedHierarchical` on the same tensors.

    Kernels (:math:`k = K_1 + K_2`): ``A @ X`` and ``A^T @ X`` :math:`O(n d k)`;
    ``A @ B`` :math:`O(d k^2)`; ``inv`` :math:`O(d k^2 + k^3)`;
    ``from_mat_inner(X)`` and ``from_inner(X)`` :math:`O(n d k)`; ``from_inner()``
    :math:`O(d k^2)`; ``from_inner2(M)`` :math:`O(d k^2)`, reading the
    :math:`O(d k)` entries of ``M`` it needs; ``diag`` :math:`O(d)`.
    """

    transposed = False
    family = FAMILIES[False]
    template_hint = "use Hierarchical.with_sizes(k1, k2) or get_structure('hierarchical{k1}_{k2}')"


register_family(r"hierarchical(\d+)_(\d+)", Hierarchical.with_sizes, "hierarchical{k1}_{k2}")
