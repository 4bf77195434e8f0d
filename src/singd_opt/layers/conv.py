"""Convolutions (1d, 2d, 3d) as linear maps on flattened input patches."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

from singd_opt.layers.base import Layer, ParameterRows, num_loss_terms
from structmat import StructuredMatrix

#: Gather the patches batch-last for the curvature when the last output dimension is at
#: most this wide (and not wider than the batch): the copy then runs along the batch
#: instead of along a few output positions. Measured on one CPU thread (3x3 kernels,
#: 16 or 64 channels, batches of 8 to 128): 0.22x to 0.68x the time at widths 4 and 8,
#: 0.94x to 1.16x at 16, 1.3x at 32.
BATCH_LAST_WIDEST = 8


def _tuple(value: int | Sequence[int], spatial: int) -> tuple[int, ...]:
    return (value,) * spatial if isinstance(value, int) else tuple(value)


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, stride, padding, dilation and groups of a convolution.

    Attributes:
        kernel: Kernel size per spatial dimension.
        stride: Stride per spatial dimension.
        dilation: Dilation per spatial dimension.
        padding: ``(left, right)`` padding per spatial dimension.
        groups: Number of channel groups.
        pad_mode: Mode of :func:`torch.nn.functional.pad` (``"constant"`` for zeros).
    """

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    groups: int
    pad_mode: str = "constant"

    @classmethod
    def of_call(
        cls,
        weight: Tensor,
        stride: Any = 1,
        padding: Any = 0,
        dilation: Any = 1,
        groups: int = 1,
        padding_mode: str = "zeros",
    ) -> ConvGeometry:
        """Return the geometry of ``functional.conv{1,2,3}d`` with these arguments.

        Accepts the arguments of the functional call (integers, tuples, or the
        strings ``"same"`` and ``"valid"`` for ``padding``) and a module's
        ``padding_mode``.
        """
        spatial = weight.ndim - 2
        kernel = tuple(weight.shape[2:])
        dilations = _tuple(dilation, spatial)
        if isinstance(padding, str):
            if padding == "valid":
                pads = [(0, 0)] * spatial
            else:  # "same"
                pads = []
                for k, d in zip(kernel, dilations, strict=True):
                    total = d * (k - 1)
                    pads.append((total // 2, total - total // 2))
        else:
            pads = [(p, p) for p in _tuple(padding, spatial)]
        return cls(
            kernel=kernel,
            stride=_tuple(stride, spatial),
            dilation=dilations,
            padding=tuple(pads),
            groups=groups,
            pad_mode="constant" if padding_mode == "zeros" else padding_mode,
        )

    @classmethod
    def of_module(cls, module: nn.Module) -> ConvGeometry:
        """Return the geometry of a :class:`~torch.nn.Conv1d`, ``Conv2d`` or ``Conv3d``."""
        return cls.of_call(
            module.weight,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.padding_mode,
        )


class ConvLayer(Layer):
    """A convolution with any stride, padding, padding mode, dilation and groups.

    With ``groups > 1`` the input is averaged over the channel groups (all groups
    share the factor ``K``).
    """

    def __init__(
        self,
        weight: ParameterRows | None,
        bias: ParameterRows | None,
        full_weight: Tensor,
        geometry: ConvGeometry,
    ) -> None:
        """Describe the convolution.

        Args:
            weight: The trained weight rows, or ``None``.
            bias: The trained bias rows, or ``None``.
            full_weight: The ``(C_out, C_in / groups, *kernel)`` weight (trained or not).
            geometry: Kernel, stride, padding, dilation and groups.
        """
        super().__init__(weight, bias, full_weight.shape[0], full_weight[0].numel())
        self.geometry = geometry
        self._spatial: int = full_weight.ndim - 2
        self._pad: list[int] | None = None
        if any(left or right for left, right in geometry.padding):
            # functional.pad takes (left, right) pairs from the last dimension to the first.
            self._pad = [p for pair in reversed(geometry.padding) for p in pair]
        self._patterns: dict[tuple[Any, ...], Tensor] = {}

    def _output_positions(self, spatial_in: Sequence[int]) -> tuple[int, ...]:
        g = self.geometry
        sizes = []
        for i, size in enumerate(spatial_in):
            left, right = g.padding[i]
            span = g.dilation[i] * (g.kernel[i] - 1) + 1
            sizes.append((size + left + right - span) // g.stride[i] + 1)
        return tuple(sizes)

    def _group_mean_padded(self, x: Tensor) -> Tensor:
        """Average the channel groups and pad: ``(batch, C_in / groups, *padded)``."""
        if self.geometry.groups > 1:
            x = x.unflatten(1, (self.geometry.groups, -1)).mean(dim=1)
        if self._pad is not None:
            x = functional.pad(x, self._pad, mode=self.geometry.pad_mode)
        return x

    def _windows(self, x: Tensor, first: int) -> Tensor:
        """The kernel's windows of the padded spatial dimensions ``first, first + 1, ...``.

        A strided view: each spatial dimension becomes its output positions, and the
        kernel's taps are appended as trailing dimensions.
        """
        g = self.geometry
        for i in range(self._spatial):
            span = g.dilation[i] * (g.kernel[i] - 1) + 1
            x = x.unfold(first + i, span, g.stride[i])
            if g.dilation[i] > 1:
                x = x[..., :: g.dilation[i]]
        return x

    def _position_means(self, size: int, i: int, like: Tensor) -> Tensor:
        """Return ``P`` (``kernel x size``) with ``(P x)_k`` the mean of kernel tap ``k``.

        ``P[k, j] = 1 / O`` for every output position ``o`` that reads padded input
        index ``j = o * stride + k * dilation`` through tap ``k`` (``O`` positions).
        """
        key = (size, i, like.dtype, like.device)
        pattern = self._patterns.get(key)
        if pattern is None:
            g = self.geometry
            span = g.dilation[i] * (g.kernel[i] - 1) + 1
            positions = (size - span) // g.stride[i] + 1
            pattern = like.new_zeros((g.kernel[i], size))
            index = torch.arange(positions, device=like.device) * g.stride[i]
            for k in range(g.kernel[i]):
                pattern[k, index + k * g.dilation[i]] = 1.0 / positions
            self._patterns[key] = pattern
        return pattern

    def input_rows(self, x: Tensor, kfac_approx: str, dtype: torch.dtype) -> tuple[Tensor, int]:
        """See :meth:`Layer.input_rows`.

        With ``"expand"`` the result is the transpose of a contiguous
        ``(dim_K, n)`` matrix: gathering the patches in that order reads and writes
        along output positions, an order of magnitude faster than row-major patches.
        """
        if x.ndim == self._spatial + 1:  # unbatched input
            x = x.unsqueeze(0)
        batch = x.shape[0]
        if self.weight is None:
            positions = math.prod(self._output_positions(x.shape[2:]))
            n = batch * positions if kfac_approx == "expand" else batch
            return self._with_bias_column(None, n, x, dtype), n
        s = self._spatial
        if kfac_approx == "reduce":
            # mean over output positions of the patches, one kernel dimension at a time
            y = self._group_mean_padded(x.to(dtype))
            for i in range(s):
                y = torch.tensordot(y, self._position_means(y.shape[2], i, y), dims=([2], [1]))
            return self._with_bias_column(y.reshape(batch, -1), batch, x, dtype), batch
        return self._expanded_rows(x, dtype, batch_last=False)

    def _expanded_rows(self, x: Tensor, dtype: torch.dtype, batch_last: bool) -> tuple[Tensor, int]:
        """The ``"expand"`` rows of a batched input: one per example and output position.

        Rows come example by example (each example's positions in order) or, with
        ``batch_last``, position by position (every example at each position).
        """
        s = self._spatial
        if batch_last:
            # (C_in / groups, *padded, batch), then the windows: (C, *positions, batch, *kernel)
            patches = self._windows(self._group_mean_padded(x).movedim(0, -1).contiguous(), 1)
            # (C_in / groups, *kernel, *positions, batch)
            patches = patches.permute(0, *range(s + 2, 2 * s + 2), *range(1, s + 2))
        else:
            patches = self._windows(self._group_mean_padded(x), 2)
            # (C_in / groups, *kernel, batch, *positions)
            patches = patches.permute(1, *range(2 + s, 2 + 2 * s), 0, *range(2, 2 + s))
        n = patches.shape[1 + s :].numel()
        out_T = x.new_empty((self.dim_K, n), dtype=dtype)
        out_T[: self._dim_weight].view(patches.shape).copy_(patches)
        if self.bias is not None:
            out_T[self._dim_weight :].fill_(1.0)
        return out_T.mT, n

    def input_curvature(
        self, K: StructuredMatrix, x: Tensor, kfac_approx: str
    ) -> tuple[StructuredMatrix, int]:
        r"""See :meth:`Layer.input_curvature`.

        Only :math:`A^\top A` enters the curvature, so the order of the rows is free:
        with ``"expand"`` the patches are gathered batch-last where that copies faster
        (:data:`BATCH_LAST_WIDEST`).
        """
        if x.ndim == self._spatial + 1 or kfac_approx != "expand" or self.weight is None:
            return super().input_curvature(K, x, kfac_approx)
        width = self._output_positions(x.shape[2:])[-1]
        if width > min(BATCH_LAST_WIDEST, x.shape[0]):
            return super().input_curvature(K, x, kfac_approx)
        rows, n = self._expanded_rows(x, K.dtype, batch_last=True)
        return self._curvature_of_rows(K, rows, 1.0 / n), n

    def grad_output_matrix(
        self, g: Tensor, loss_average: str | None, kfac_approx: str
    ) -> tuple[Tensor, int]:
        """See :meth:`Layer.grad_output_matrix`.

        With ``"expand"`` the result is the transpose of a contiguous ``(dim_C, n)``
        matrix (see :meth:`input_matrix`).
        """
        if g.ndim == self._spatial + 1:  # unbatched
            g = g.unsqueeze(0)
        positions = g.shape[2:].numel()
        terms = num_loss_terms(loss_average, g.shape[0], positions)
        scale = math.sqrt(terms)
        if kfac_approx == "reduce":
            g = g.sum(dim=tuple(range(2, g.ndim)))
            return (g * scale if terms != 1 else g), terms
        moved = g.transpose(0, 1)  # (C_out, batch, *positions)
        out_T = g.new_empty((g.shape[1], g.shape[0] * positions))
        if terms != 1:
            torch.mul(moved, scale, out=out_T.view(moved.shape))
        else:
            out_T.view(moved.shape).copy_(moved)
        return out_T.mT, terms
