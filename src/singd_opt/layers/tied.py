r"""An embedding whose matrix is also the output projection (tied input and output embeddings).

A language model that ties its embedding :math:`E \in \mathbb{R}^{V \times d}` to its
output layer uses the one matrix twice: the lookup :math:`e_t^\top E` of token
:math:`t` and the projection :math:`z = E h + b` of a hidden state :math:`h` onto the
vocabulary. The gradient is the sum of both uses,

.. math::
    \nabla_E = \sum_{\text{lookups}} e_t\, g^\top + \sum_{\text{projections}} \delta\, h^\top,

with :math:`g` the gradient of a looked-up row and :math:`\delta` the gradient of
the logits. In both terms the left vector lives on the vocabulary side and the right
one on the hidden side, so one Kronecker block :math:`(C C^\top) \otimes (K K^\top)`
of :math:`W = E^\top` (``d x V``, as for an embedding: ``K`` on the vocabulary side)
covers both, as KFAC does for a weight used by several calls (the factor of the sum
over all uses, "expand"): the vocabulary-side rows are the one-hot tokens of the
lookups and the logit gradients of the projections, the hidden-side rows are the
lookups' output gradients and the projections' inputs,

.. math::
    A = \frac{1}{\sqrt{n}} \begin{pmatrix} e_{t_1}^\top \\ \vdots \\ \delta_1^\top \\
    \vdots \end{pmatrix}, \qquad
    G = \sqrt{N} \begin{pmatrix} g_1^\top \\ \vdots \\ h_1^\top \\ \vdots \end{pmatrix},

with :math:`n` all rows of both uses and :math:`N` the loss terms. Each use alone
gives its usual KFAC factors (for a projection the two scalings sit on the other
sides, which leaves their Kronecker product unchanged); the factor of the sum adds
the cross terms of the two uses, as weight-sharing KFAC does. The vocabulary-side
factor is **diagonal**: :math:`H_K = \operatorname{diag}(k^2 \odot (c + \sum \delta^2))/n`
from the token counts :math:`c` and the squared logit gradients, :math:`O(nV)` time
and :math:`O(V)` memory, never a ``V x V`` matrix (the projection of the dense
:math:`A^\top A` onto the diagonal, as for an embedding alone).

The block is used with ``tied_embeddings="kronecker"`` (the reference set of defaults
with ``train_all_parameters=True`` uses it); the recommended defaults train a tied
embedding with the element-wise rule, which reached a lower loss on the GPT-2 and
Llama models measured (see the Differences page of the documentation).
"""

from __future__ import annotations

from singd_opt.layers.embedding import EmbeddingLayer


class TiedEmbeddingLayer(EmbeddingLayer):
    r"""An embedding ``(V, d)`` used both for lookups and as an output projection.

    A lookup is recorded as ``(token indices, output gradient)`` like for
    :class:`~singd_opt.layers.EmbeddingLayer`; a projection as ``(logit gradient,
    projection input)``: its vocabulary-side rows are float ``(batch, ..., V)`` and
    its hidden-side rows ``(batch, ..., d)`` (see
    :meth:`EmbeddingLayer.input_curvature`). The layer of an embedding module whose
    weight ``Linear`` modules share; an embedding whose weight the forward pass also
    uses as ``F.linear(h, E)`` or ``h @ E.T`` records those projections the same way.
    """
