"""The small character-level transformer language model trained by the demo."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from singd_opt_demo.lm_data import CONTEXT, VOCAB_SIZE


class CharTransformer(nn.Module):
    r"""A decoder-only transformer over characters: next-character logits at every position.

    ``tokens (N, T)`` are embedded (``nn.Embedding``), a learned position embedding
    (an ``nn.Parameter`` of shape ``(context, d_model)``) is added, ``layers``
    pre-norm ``nn.TransformerEncoderLayer`` blocks with a causal mask (position
    :math:`t` attends to positions :math:`\le t`) follow, then a final ``nn.LayerNorm``
    and a linear head to ``vocab_size`` logits ``(N, T, vocab_size)``. No dropout.

    Every kind of parameter SINGD distinguishes is present: the embedding (a Kronecker
    block with a diagonal ``K``), the attention projections used through
    ``functional.linear`` and the feed-forward and head ``Linear`` layers (Kronecker
    blocks), the position embedding and the layer norms (element-wise blocks).

    Attributes:
        context: The longest sequence the position embedding covers.
    """

    def __init__(
        self,
        vocab_size: int = VOCAB_SIZE,
        context: int = CONTEXT,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        feedforward: int = 256,
    ) -> None:
        """Create the model (seed ``torch`` first for a reproducible initialisation).

        Args:
            vocab_size: Number of tokens.
            context: Longest input sequence.
            d_model: Width of the residual stream.
            heads: Attention heads per layer (must divide ``d_model``).
            layers: Number of transformer layers.
            feedforward: Hidden width of each layer's feed-forward network.
        """
        super().__init__()
        self.context = context
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.position = nn.Parameter(0.02 * torch.randn(context, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, heads, feedforward, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    def forward(self, tokens: Tensor) -> Tensor:
        """Return the next-token logits ``(N, T, vocab_size)`` of ``tokens (N, T)``."""
        length = tokens.shape[1]
        if length > self.context:
            raise ValueError(f"tokens: sequence length {length} exceeds context {self.context}")
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=tokens.device)
        hidden = self.embedding(tokens) + self.position[:length]
        hidden = self.encoder(hidden, mask=mask, is_causal=True)
        return self.head(self.norm(hidden))


def make_char_transformer() -> CharTransformer:
    """Build the demo's language model with its default sizes (116,705 parameters).

    ``d_model`` 64, 4 heads, 2 layers, feed-forward width 256, context
    :data:`~singd_opt_demo.lm_data.CONTEXT`, :data:`~singd_opt_demo.lm_data.VOCAB_SIZE`
    tokens. Seed ``torch`` before calling it to get a reproducible initialisation.
    """
    return CharTransformer()
