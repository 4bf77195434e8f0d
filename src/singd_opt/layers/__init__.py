"""Linear maps whose parameters a Kronecker-factored block preconditions.

See :mod:`singd_opt.layers.base` for the conventions (the gradient matrix, the
scaled input and output-gradient matrices of one call).
"""

from __future__ import annotations

from torch import nn

from singd_opt.layers.base import (
    KFAC_APPROXIMATIONS,
    LOSS_AVERAGES,
    Layer,
    ParameterRows,
    num_loss_terms,
)
from singd_opt.layers.conv import ConvGeometry, ConvLayer
from singd_opt.layers.embedding import EmbeddingLayer
from singd_opt.layers.linear import LinearLayer, TransposedLinearLayer
from singd_opt.layers.tied import TiedEmbeddingLayer

#: Module types the reference trains (their weight and bias form a Kronecker block).
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_MODULES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def make_layer(module: nn.Module, weight: nn.Parameter | None, bias: nn.Parameter | None) -> Layer:
    """Return the :class:`Layer` of a :class:`~torch.nn.Linear`, convolution or embedding.

    Args:
        module: The module.
        weight: Its weight if trained, else ``None``.
        bias: Its bias if trained, else ``None``.

    Raises:
        TypeError: If the module type is not supported.
    """
    weight_rows = ParameterRows(weight) if weight is not None else None
    bias_rows = ParameterRows(bias) if bias is not None else None
    if isinstance(module, nn.Linear):
        return LinearLayer(weight_rows, bias_rows, module.weight)
    if isinstance(module, CONV_MODULES):
        return ConvLayer(weight_rows, bias_rows, module.weight, ConvGeometry.of_module(module))
    if isinstance(module, nn.Embedding) and weight_rows is not None:
        return EmbeddingLayer(weight_rows)
    raise TypeError(f"unsupported layer {type(module).__name__}")


def preconditioner_dims(module: nn.Module) -> tuple[int, int]:
    """Return ``(dim_K, dim_C)`` of a supported layer whose parameters are all trained.

    Raises:
        TypeError: If the module type is not supported.
    """
    bias = getattr(module, "bias", None)
    layer = make_layer(module, module.weight, bias if isinstance(bias, nn.Parameter) else None)
    return layer.dim_K, layer.dim_C


__all__ = [
    "CONV_MODULES",
    "KFAC_APPROXIMATIONS",
    "LOSS_AVERAGES",
    "SUPPORTED_MODULES",
    "ConvGeometry",
    "ConvLayer",
    "EmbeddingLayer",
    "Layer",
    "LinearLayer",
    "ParameterRows",
    "TiedEmbeddingLayer",
    "TransposedLinearLayer",
    "make_layer",
    "num_loss_terms",
]
