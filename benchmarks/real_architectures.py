r"""Small members of real model families, built from Hugging Face ``transformers`` configs.

The time-to-target benchmark trains these on the data bundled with the demo; nothing
is downloaded (the models are built from configs with random weights):

- :func:`make_gpt2`: a GPT-2 decoder (``GPT2LMHeadModel``: learned positions, its
  ``Conv1D`` projections, GELU MLP, tied input and output embeddings);
- :func:`make_llama`: a Llama decoder (``LlamaForCausalLM``: rotary positions, RMSNorm,
  SwiGLU MLP, grouped-query attention, tied embeddings);

  both with 2 layers of width 64 over the demo's 97 character tokens and windows of 64;
- :func:`make_vit`: a ViT (``ViTForImageClassification``, 2 layers of width 64) on the
  8x8 digits, patches of 2x2 (16 patches and a class token);
- :func:`make_resnet`: a ResNet with basic blocks (``ResNetForImageClassification``: 7x7
  stem with stride 2 and max pooling, three stages of one block each, 16/32/64
  channels, batch norm) on the digits upsampled bilinearly to 16x16
  (:func:`load_digits_16`), so that the stem and two strided stages leave 2x2 maps.

Dropout is off everywhere (the steps of different optimizers see the same function).
Every model is wrapped so that ``model(x)`` returns the logits tensor, which is what
the benchmark's loss and the demo's evaluation take. ``transformers`` (the ``bench``
extra) is imported only when a model is built; :func:`transformers_missing` says
whether it can be.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import Tensor, nn
from torch.nn import functional

from singd_opt_demo.data import NUM_CLASSES
from singd_opt_demo.data import load_split as load_digits
from singd_opt_demo.lm_data import CONTEXT, VOCAB_SIZE
from singd_opt_demo.split import Split

#: Width, depth and heads shared by the transformer models.
WIDTH, LAYERS, HEADS = 64, 2, 4


class LogitsOnly(nn.Module):
    """Wrap a ``transformers`` model so that calling it returns only the logits.

    Attributes:
        inner: The wrapped model, called with ``(x)`` as its first argument.
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        """Return ``self.inner(x).logits``: ``(N, T, vocab)`` or ``(N, classes)``."""
        return self.inner(x).logits


def transformers_missing() -> str | None:
    """Return why the ``transformers`` models cannot be built, or ``None`` if they can."""
    try:
        import transformers  # noqa: F401
    except Exception as error:  # ImportError, or a broken install
        reason = f"{type(error).__name__}: {error}"
        return f"transformers unavailable ({reason}); pip install -e '.[bench]'"
    return None


def _transformers() -> Any:
    import transformers

    # Configs with a vocabulary of 97 log that GPT-2's special token ids lie outside it;
    # the benchmark never generates text, so those ids are unused.
    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    return transformers


def make_gpt2() -> LogitsOnly:
    """GPT-2, 2 layers of width 64, 4 heads, character vocabulary, context 64 (~110k weights)."""
    tf = _transformers()
    config = tf.GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=CONTEXT,
        n_embd=WIDTH,
        n_layer=LAYERS,
        n_head=HEADS,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    return LogitsOnly(tf.GPT2LMHeadModel(config))


def make_llama() -> LogitsOnly:
    """Llama, 2 layers of width 64, 4 heads (2 key/value heads), SwiGLU 172 (~97k weights)."""
    tf = _transformers()
    config = tf.LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=WIDTH,
        intermediate_size=172,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS // 2,
        max_position_embeddings=CONTEXT,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LogitsOnly(tf.LlamaForCausalLM(config))


def make_vit() -> LogitsOnly:
    """ViT on 8x8 digits, patches 2x2, 2 layers of width 64, MLP 128 (~69k weights)."""
    tf = _transformers()
    config = tf.ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=WIDTH,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=2 * WIDTH,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=NUM_CLASSES,
    )
    return LogitsOnly(tf.ViTForImageClassification(config))


def make_resnet() -> LogitsOnly:
    """ResNet with basic blocks, stages of 16/32/64 channels, on 16x16 digits (~78k weights)."""
    tf = _transformers()
    config = tf.ResNetConfig(
        num_channels=1,
        embedding_size=16,
        hidden_sizes=[16, 32, 64],
        depths=[1, 1, 1],
        layer_type="basic",
        downsample_in_first_stage=False,
        num_labels=NUM_CLASSES,
    )
    return LogitsOnly(tf.ResNetForImageClassification(config))


def upsample(images: Tensor, size: int = 16) -> Tensor:
    """Resize images ``(N, C, H, W)`` to ``(N, C, size, size)`` bilinearly."""
    return functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def load_digits_16(validation: bool = False) -> Split:
    """The digits split of :func:`singd_opt_demo.data.load_split`, upsampled to 16x16."""
    split = load_digits(validation)
    return Split(
        upsample(split.x_train),
        split.y_train,
        {name: (upsample(x), y) for name, (x, y) in split.eval_sets.items()},
    )
