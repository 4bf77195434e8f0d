r"""Layout-friendly and Gram-based kernels of the hierarchical structures.

Notation of :mod:`structmat.hierarchical`: index blocks ``a`` (:math:`K_1`), ``c``
(:math:`d_c`) and ``e`` (:math:`K_2`),

.. math::

    H = \begin{pmatrix} A & B_c & B_e \\ 0 & \operatorname{diag}(C) & 0 \\ 0 & D & E
    \end{pmatrix},

and ``z = a`` followed by ``e``, :math:`k = K_1 + K_2`.

*Products in either layout.* :func:`left_product` computes :math:`H X` (or
:math:`H^\top X`) row block by row block, for ``X`` stored row by row;
:func:`right_product` computes :math:`W H` (or :math:`W H^\top`) column block by
column block, for ``W`` stored row by row. A product :math:`H X` with ``X`` stored
column by column (``X = W^T``, such as ``G.mT``) is :math:`(W H^\top)^\top`, so no
operand is copied into the other layout, and the result keeps the operand's layout.

*Arrow Gram.* The projection :math:`P_H(S)` of a symmetric :math:`S` reads only the
rows ``z`` of :math:`S` and the diagonal of :math:`S_{cc}`. For :math:`S = X X^\top`
these are :math:`G = X_z X^\top` (one GEMM, :math:`k d n`) and the squared row norms
of :math:`X_c`, so ``from_mat_inner`` and ``from_inner`` read ``X`` in one GEMM and
one pass over :math:`X_c` instead of forming :math:`H^\top X`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from structmat._layout import row_sums_of_squares, writes_forbidden

Parts = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]

#: Least number of elements of ``X`` for which ``from_inner(X)`` goes through the arrow
#: Gram. Measured with one thread (CPU, float32, fastest of 41 runs, both families and
#: layouts): 0.3-0.7 of the time of ``from_mat_inner(A^T @ X)`` for ``d n >= 3 * 10^5``,
#: 0.8-0.9 at ``d = 785``, ``n = 256``, but 1.0-1.5 for ``d n`` below ``10^5`` (for
#: example ``d = 513``, ``n = 128``), where its fixed cost of small ops dominates.
GRAM_ROUTE_MIN_ELEMENTS = 2**17


def _sizes(parts: Parts) -> tuple[int, int, int]:
    A, _, C, _, E = parts
    return A.shape[0], C.shape[0], E.shape[0]


def right_product(W: Tensor, parts: Parts, transpose: bool) -> Tensor:
    r"""Return :math:`W H` (or :math:`W H^\top`), column block by column block.

    .. math::

        W H &= (W_a A \mid W_a B_c + W_c \operatorname{diag}(C) + W_e D \mid
        W_a B_e + W_e E), \\
        W H^\top &= (W_a A^\top + W_c B_c^\top + W_e B_e^\top \mid
        W_c \operatorname{diag}(C) \mid W_c D^\top + W_e E^\top).

    Args:
        W: Shape ``(n, d)``, best stored row by row.
        parts: ``(A, B, C, D, E)`` of :math:`H`.
        transpose: Whether to multiply by :math:`H^\top`.

    Returns:
        Shape ``(n, d)``, contiguous. :math:`O(n d k)`: the two products with the wide
        :math:`W_c` (or the two updates of the wide middle block) run as one GEMM of
        rank :math:`k`, one pass over the wide operand instead of two; the blocks are
        written into the result (joined by one copy under autograd or a transform).
    """
    A, B, C, D, E = parts
    k1, dc, k2 = _sizes(parts)
    W_a, W_c, W_e = W.split([k1, dc, k2], dim=1)
    B_c, B_e = B.split([dc, k2], dim=1)
    out = _result(W, parts)
    out_a, out_c, out_e = out.split([k1, dc, k2], dim=1) if out is not None else (None,) * 3
    middle = torch.mul(W_c, C, out=out_c)
    if transpose:
        arms = W_c @ torch.cat([B_c, D]).mT  # (W_c B_c^T | W_c D^T)
        first = torch.addmm(arms[:, :k1], W_a, A.mT, out=out_a).addmm_(W_e, B_e.mT)
        last = torch.addmm(arms[:, k1:], W_e, E.mT, out=out_e)
    else:
        first = torch.mm(W_a, A, out=out_a)
        middle.addmm_(torch.cat([W_a, W_e], dim=1), torch.cat([B_c, D]))
        last = torch.mm(W_e, E, out=out_e).addmm_(W_a, B_e)
    return out if out is not None else torch.cat([first, middle, last], dim=1)


def left_product(X: Tensor, parts: Parts, transpose: bool) -> Tensor:
    r"""Return :math:`H X` (or :math:`H^\top X`), row block by row block.

    The transpose of :func:`right_product`:
    :math:`H X = (A X_a + B_c X_c + B_e X_e;\ C \odot X_c;\ D X_c + E X_e)` and
    :math:`H^\top X = (A^\top X_a;\ B_c^\top X_a + C \odot X_c + D^\top X_e;\
    B_e^\top X_a + E^\top X_e)`.

    Args:
        X: Shape ``(d, n)``, best stored row by row.
        parts: ``(A, B, C, D, E)`` of :math:`H`.
        transpose: Whether to multiply by :math:`H^\top`.

    Returns:
        Shape ``(d, n)``, contiguous. :math:`O(n d k)`, with one pass over the wide
        :math:`X_c` or middle block as in :func:`right_product`.
    """
    A, B, C, D, E = parts
    k1, dc, k2 = _sizes(parts)
    X_a, X_c, X_e = X.split([k1, dc, k2])
    B_c, B_e = B.split([dc, k2], dim=1)
    out = _result(X, parts)
    out_a, out_c, out_e = out.split([k1, dc, k2]) if out is not None else (None,) * 3
    middle = torch.mul(C.unsqueeze(1), X_c, out=out_c)
    if transpose:
        first = torch.mm(A.mT, X_a, out=out_a)
        middle.addmm_(torch.cat([B_c, D]).mT, torch.cat([X_a, X_e]))
        last = torch.mm(E.mT, X_e, out=out_e).addmm_(B_e.mT, X_a)
    else:
        arms = torch.cat([B_c, D]) @ X_c  # (B_c X_c; D X_c)
        first = torch.addmm(arms[:k1], A, X_a, out=out_a).addmm_(B_e, X_e)
        last = torch.addmm(arms[k1:], E, X_e, out=out_e)
    return out if out is not None else torch.cat([first, middle, last])


def _result(operand: Tensor, parts: Parts) -> Tensor | None:
    """The contiguous result of a product, written block by block, or ``None``.

    ``None`` where ``out=`` writes are not allowed (autograd records the product, or a
    function transform such as :func:`torch.vmap` runs it): the blocks are then joined
    by one copy.
    """
    if writes_forbidden(operand, *parts):
        return None
    return operand.new_empty(operand.shape)


def arrow_gram(X: Tensor, sizes: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    r"""Return :math:`G = X_z X^\top` (shape ``(k, d)``) and :math:`s = (\|X_{j:}\|^2)_{j \in c}`.

    These are the rows ``z`` of :math:`S = X X^\top` and the diagonal of
    :math:`S_{cc}`. :math:`O(k d n)` in one GEMM, plus one pass over :math:`X_c`.
    """
    k1, dc, k2 = sizes
    X_a, X_c, X_e = X.split([k1, dc, k2])
    G = torch.cat([X_a, X_e]) @ X.mT
    return G, row_sums_of_squares(X_c)


def project_arrow(G: Tensor, s: Tensor, sizes: tuple[int, int, int]) -> dict[str, Tensor]:
    r"""Return the tensors of :math:`P_H(S)` from the rows ``z`` and the middle diagonal.

    With :math:`G = S_{z,:}` and :math:`s = \operatorname{diag}(S_{cc})`:
    :math:`A = S_{aa}`, :math:`B = 2 S_{a,ce}`, :math:`C = s`, :math:`D = 2 S_{ec}`,
    :math:`E = S_{ee}` (``S`` symmetric). :math:`O(k d)`.
    """
    k1, dc, _ = sizes
    G_a, G_e = G[:k1], G[k1:]
    return {
        "A": G_a[:, :k1].contiguous(),
        "B": 2 * G_a[:, k1:],
        "C": s,
        "D": 2 * G_e[:, k1 : k1 + dc],
        "E": G_e[:, k1 + dc :].contiguous(),
    }


def inner_arrow(parts: Parts, G: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    r"""Map :math:`(G, s)` of a symmetric :math:`S` to those of :math:`M = H^\top S H`.

    The rows ``z`` of :math:`H^\top` are :math:`T = [[A^\top, 0, 0], [B_e^\top, 0,
    E^\top]]`, so :math:`M_{z,:} = (T_{:,z} G) H`. Column :math:`j \in c` of
    :math:`H` is :math:`C_j e_j + w_j` with :math:`w_j = (B_c; D)_{:,j}` on the rows
    ``z``, so

    .. math::

        M_{jj} = w_j^\top S_{zz} w_j + 2 C_j\, w_j^\top S_{z j} + C_j^2 S_{jj},

    whose rounding error is relative to :math:`(|C_j| \|x_j\| + \|X_z^\top w_j\|)^2`
    for :math:`S = X X^\top`. :math:`O(d k^2)`.
    """
    A, B, C, D, E = parts
    k1, dc, _ = _sizes(parts)
    B_c, B_e = B.split([dc, E.shape[0]], dim=1)
    G_a, G_e = G[:k1], G[k1:]
    rows = torch.cat([A.mT @ G_a, B_e.mT @ G_a + E.mT @ G_e])
    S_zz = torch.cat([G[:, :k1], G[:, k1 + dc :]], dim=1)
    S_zc = G[:, k1 : k1 + dc]
    w = torch.cat([B_c, D])
    # sum_z w_zj (S_zz w + 2 S_zc diag(C))_zj + C_j^2 S_jj
    weighted = torch.addmm(S_zc * (2 * C), S_zz, w)
    diagonal = (weighted * w).sum(0) + C.square() * s
    return right_product(rows, parts, transpose=False), diagonal


def outer_arrow(parts: Parts, X: Tensor) -> tuple[Tensor, Tensor]:
    r"""Return :math:`(G, s)` of :math:`S = Y Y^\top` for :math:`Y = H X`.

    :math:`Y_z = H_{z,:} X` (one GEMM with the ``k x d`` rows ``z`` of :math:`H`),
    :math:`G = Y_z Y^\top = (Y_z X^\top) H^\top` and :math:`Y_c = C \odot X_c`, so
    :math:`s = C^2 \odot \|X_{c}\|^2`. :math:`O(k d n)` in two GEMMs.
    """
    A, B, C, D, E = parts
    k1, dc, k2 = _sizes(parts)
    rows_z = torch.cat([B.new_zeros((k2, k1)), D, E], dim=1)
    Y_z = torch.cat([torch.cat([A, B], dim=1), rows_z]) @ X
    G = right_product(Y_z @ X.mT, parts, transpose=True)
    return G, C.square() * row_sums_of_squares(X[k1 : k1 + dc])
