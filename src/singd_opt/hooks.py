r"""Collecting the curvature terms :math:`H_K, H_C` during the backward pass.

A forward hook on each layer installs, on preconditioner steps, a tensor hook on
the layer's *output*; the tensor hook receives the output gradient and hands it,
together with the input saved at forward time, to a callback. (A module backward
hook would break when the output feeds an in-place activation.)

:class:`PendingTerms` accumulates the terms of several backward passes between two
optimizer steps (gradient accumulation) so that the result equals one pass over the
union of the mini-batches:

- :math:`H_K` is a mean over input rows, so passes are merged weighted by their
  numbers of rows :math:`n_i`: :math:`H_K = \sum_i n_i H_K^{(i)} / \sum_i n_i`.
- :math:`H_C` of a mean loss over :math:`N_i` terms was scaled by :math:`N_i`; one
  loss over all :math:`N = \sum_i N_i` terms gives
  :math:`H_C = N \sum_i H_C^{(i)} / N_i`. For a summed loss (``loss_average=None``)
  the terms simply add up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from singd_opt.layers import Layer
from structmat import StructuredMatrix


def install_hooks(
    layers: Iterable[Layer],
    should_record: Callable[[Layer], bool],
    record: Callable[[Layer, Tensor, Tensor], None],
) -> list[RemovableHandle]:
    """Register the forward hooks that collect curvature terms.

    Args:
        layers: The trained layers.
        should_record: Called in each forward pass with gradients enabled; whether
            this pass's backward should be recorded for the layer.
        record: Called in the backward pass as ``record(layer, input, grad_output)``.

    Returns:
        The hook handles (``handle.remove()`` detaches a hook).
    """
    return [
        layer.module.register_forward_hook(
            _make_forward_hook(layer, should_record, record), with_kwargs=True
        )
        for layer in layers
    ]


def _make_forward_hook(
    layer: Layer,
    should_record: Callable[[Layer], bool],
    record: Callable[[Layer, Tensor, Tensor], None],
) -> Callable[[nn.Module, tuple[Any, ...], dict[str, Any], Any], None]:
    def forward_hook(
        module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> None:
        if not (torch.is_grad_enabled() and isinstance(output, Tensor) and output.requires_grad):
            return
        if not should_record(layer):
            return
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, Tensor):
            return
        saved_input = x.detach()

        def tensor_hook(grad_output: Tensor) -> None:
            record(layer, saved_input, grad_output.detach())

        output.register_hook(tensor_hook)

    return forward_hook


class PendingTerms:
    """Curvature terms accumulated since the last preconditioner update, per layer.

    Attributes:
        H_Ks: Accumulated :math:`H_K` per layer name.
        H_Cs: Accumulated :math:`H_C` per layer name.
        counts: ``(rows, loss_terms)`` behind the accumulated terms per layer name.
    """

    def __init__(self) -> None:
        self.H_Ks: dict[str, StructuredMatrix] = {}
        self.H_Cs: dict[str, StructuredMatrix] = {}
        self.counts: dict[str, tuple[int, int]] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.H_Ks

    def __bool__(self) -> bool:
        return bool(self.H_Ks)

    def add(
        self,
        name: str,
        H_K: StructuredMatrix,
        H_C: StructuredMatrix,
        rows: int,
        loss_terms: int,
        mean_loss: bool,
    ) -> None:
        """Merge one backward pass's terms into the accumulated ones.

        Args:
            name: Layer name.
            H_K: This pass's :math:`H_K` (mean over its ``rows`` input rows).
            H_C: This pass's :math:`H_C` (scaled for ``loss_terms`` loss terms).
            rows: Number of rows of this pass's input matrix.
            loss_terms: Number of loss terms this pass's :math:`H_C` was scaled for.
            mean_loss: Whether the loss is a mean (``loss_average`` is not ``None``).
        """
        if name not in self.H_Ks:
            self.H_Ks[name], self.H_Cs[name] = H_K, H_C
            self.counts[name] = (rows, loss_terms)
            return
        old_rows, old_terms = self.counts[name]
        total_rows = old_rows + rows
        self.H_Ks[name].mul_(old_rows / total_rows).add_(H_K, alpha=rows / total_rows)
        if mean_loss:
            total_terms = old_terms + loss_terms
            self.H_Cs[name].mul_(total_terms / old_terms).add_(H_C, alpha=total_terms / loss_terms)
        else:
            total_terms = old_terms + loss_terms
            self.H_Cs[name].add_(H_C)
        self.counts[name] = (total_rows, total_terms)

    def pop(self, name: str) -> tuple[StructuredMatrix, StructuredMatrix]:
        """Remove and return a layer's ``(H_K, H_C)``."""
        self.counts.pop(name)
        return self.H_Ks.pop(name), self.H_Cs.pop(name)

    def clear(self) -> None:
        """Drop every accumulated term."""
        self.H_Ks.clear()
        self.H_Cs.clear()
        self.counts.clear()
