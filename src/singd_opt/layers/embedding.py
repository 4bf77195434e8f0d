r"""Embeddings as linear maps on one-hot inputs, with an exact diagonal input factor.

An embedding with weight :math:`E \in \mathbb{R}^{V \times d}` maps token :math:`t` to
:math:`E^\top e_t`: a linear map with weight :math:`W = E^\top` (``d x V``) applied to
the one-hot vector :math:`e_t`. Its input matrix :math:`A` has one-hot rows, so
:math:`A^\top A = \operatorname{diag}(c) / n` with :math:`c_t` the number of
occurrences of token :math:`t` among the :math:`n` rows: the input-side curvature is
diagonal, and with a diagonal :math:`K = \operatorname{diag}(k)`

.. math::
    H_K = \Pi_K(K^\top A^\top A K) = \operatorname{diag}(k_t^2 c_t) / n,

computed from the token counts in :math:`O(n + V)`, never a ``V x V`` matrix nor the
one-hot rows. The factor ``K`` of an embedding is therefore always diagonal.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from singd_opt.layers.base import Layer, ParameterRows
from singd_opt.layers.linear import LinearLayer
from structmat import StructuredMatrix


class EmbeddingLayer(Layer):
    r"""An embedding ``(V, d)`` as the map :math:`W = E^\top`: ``dim_K = V``, ``dim_C = d``.

    Inputs are integer token indices of shape ``(batch, ...)``; every dimension
    after the first is weight-shared (sequence positions).
    """

    def __init__(self, weight: ParameterRows) -> None:
        """Describe the embedding.

        Args:
            weight: The ``(V, d)`` embedding weight.
        """
        vocabulary, dim = weight.value.shape
        super().__init__(weight, None, dim, vocabulary)
        self._output_rows = LinearLayer(None, None, weight.value.mT)
        # the vocabulary-side rows of a projection with the matrix, scaled like inputs
        self._projection_rows = LinearLayer(weight, None, weight.value)

    def input_rows(self, x: Tensor, kfac_approx: str, dtype: torch.dtype) -> tuple[Tensor, int]:
        """Not built for embeddings: see :meth:`input_curvature`.

        Raises:
            TypeError: Always; the one-hot input matrix is never materialised.
        """
        raise TypeError("an embedding's one-hot input matrix is never built; use input_curvature")

    def input_curvature(
        self, K: StructuredMatrix, x: Tensor, kfac_approx: str
    ) -> tuple[StructuredMatrix, int]:
        r"""Return :math:`H_K = \Pi_K(K^\top A^\top A K)` from the token counts.

        With ``"expand"`` the rows of :math:`A` are one-hot, :math:`A^\top A =
        \operatorname{diag}(c) / n` (:meth:`~structmat.StructuredMatrix.from_inner_diagonal`:
        :math:`\operatorname{diag}(k_t^2 c_t) / n` for a diagonal ``K``, :math:`O(V)`).
        With ``"reduce"`` each sample's one-hot rows are averaged over its :math:`P`
        positions, so :math:`A` has the :math:`B` rows :math:`c_{b,\cdot} / P` and
        :math:`A^\top A` is no longer diagonal: :meth:`~structmat.StructuredMatrix.from_inner`
        of the ``V x B`` matrix :math:`A^\top / \sqrt{B}` (for a diagonal ``K``
        :math:`k_t^2 \sum_b (c_{b,t} / P)^2 / B`, :math:`O(V B)`).

        A float ``x`` is instead the logit gradient ``(batch, ..., V)`` of a projection
        onto the vocabulary with the same matrix (tied embeddings,
        :mod:`singd_opt.layers.tied`): its rows :math:`\delta` are the rows of
        :math:`A` (for a diagonal ``K``, :math:`k_t^2 \sum \delta_t^2 / n`, :math:`O(nV)`);
        ``"reduce"`` averages them over positions, the input rule, which with the hidden
        side summed by the gradient rule gives the projection's own ``"reduce"`` KFAC.

        Args:
            K: The input-side factor (diagonal unless the caller chose otherwise).
            x: Integer token indices ``(batch, ...)``, or a projection's logit gradient.
            kfac_approx: ``"expand"`` or ``"reduce"``.
        """
        if x.is_floating_point():
            rows, n = self._projection_rows.input_rows(x, kfac_approx, K.dtype)
            return self._curvature_of_rows(K, rows, 1.0 / n), n
        vocabulary = self.dim_K
        if x.ndim == 0:
            x = x.unsqueeze(0)
        if kfac_approx == "expand" or x.ndim == 1:
            counts = torch.bincount(x.reshape(-1), minlength=vocabulary).to(K.dtype)
            n = x.numel()
            return K.from_inner_diagonal(counts / n), n
        batch = x.shape[0]
        flat = x.reshape(batch, -1)
        positions = flat.shape[1]
        offsets = torch.arange(batch, device=x.device).unsqueeze(1) * vocabulary
        per_sample = torch.bincount((flat + offsets).reshape(-1), minlength=batch * vocabulary)
        # the rows of A: each sample's token counts over its positions, (V, batch) here
        rows = per_sample.view(batch, vocabulary).to(K.dtype).mT / positions
        return K.from_inner(rows / math.sqrt(batch)), batch

    def grad_output_matrix(
        self, g: Tensor, loss_average: str | None, kfac_approx: str
    ) -> tuple[Tensor, int]:
        """See :meth:`Layer.grad_output_matrix`; outputs are ``(batch, ..., d)``."""
        return self._output_rows.grad_output_matrix(g, loss_average, kfac_approx)

    def output_curvature(
        self,
        C: StructuredMatrix,
        g: Tensor,
        loss_average: str | None,
        kfac_approx: str,
        grad_prescale: float = 1.0,
    ) -> tuple[StructuredMatrix, int]:
        """See :meth:`Layer.output_curvature`; outputs are ``(batch, ..., d)``."""
        return self._output_rows.output_curvature(C, g, loss_average, kfac_approx, grad_prescale)

    def _weight_columns(self, weight_grad: Tensor) -> Tensor:
        return weight_grad.mT

    def _weight_update(self, columns: Tensor) -> Tensor:
        return columns.mT
