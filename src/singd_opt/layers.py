r"""Layer-specific bookkeeping: curvature matrices from inputs and output gradients.

Every supported layer computes :math:`y = W \bar{x} + b` on (possibly many,
weight-shared) input vectors :math:`\bar{x}` of size :math:`d_\text{in}`: the
features of a :class:`~torch.nn.Linear` layer, or the flattened patches of size
``C_in / groups * prod(kernel_size)`` of a convolution. Its trainable parameters
form one gradient matrix :math:`G \in \mathbb{R}^{d_C \times d_K}`: the weight
gradient flattened to ``(d_out, d_in)``, the bias gradient as an extra last column,
so :math:`d_K = d_\text{in} + 1` with a bias.

On preconditioner steps a :class:`Layer` turns

- the layer input into :math:`A \in \mathbb{R}^{n \times d_K}` (rows are samples,
  or samples times weight-shared positions for ``kfac_approx="expand"``; positions
  are averaged for ``"reduce"``), with a column of ones for the bias and scaled by
  :math:`1/\sqrt{n}`, so :math:`A^\top A` is the mean outer product;
- the output gradient into :math:`G_\text{out} \in \mathbb{R}^{n \times d_C}` (the
  same rows; positions are summed for ``"reduce"``), scaled by :math:`\sqrt{N}` with
  :math:`N` the number of loss terms (``loss_average``: ``None`` means 1,
  ``"batch"`` the batch size, ``"batch+sequence"`` batch size times positions), so
  :math:`G_\text{out}^\top G_\text{out}` estimates the per-term curvature.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional

KFAC_APPROXIMATIONS: tuple[str, ...] = ("expand", "reduce")
LOSS_AVERAGES: tuple[str | None, ...] = (None, "batch", "batch+sequence")
SUPPORTED_MODULES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class Layer(ABC):
    """A supported layer whose weight and/or bias the optimizer trains.

    Attributes:
        name: The layer's name in the model (key of the per-layer dictionaries).
        module: The layer.
        weight: The trained weight, or ``None`` if the weight is not trained.
        bias: The trained bias, or ``None`` if there is none or it is not trained.
        params: The trained parameters, weight first.
        group_index: Index of the parameter group that holds the parameters.
        dim_K: Size of the input-side factor ``K``.
        dim_C: Size of the output-side factor ``C``.
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        weight: nn.Parameter | None,
        bias: nn.Parameter | None,
        group_index: int,
    ) -> None:
        self.name = name
        self.module = module
        self.weight = weight
        self.bias = bias
        self.params: tuple[nn.Parameter, ...] = tuple(p for p in (weight, bias) if p is not None)
        self.group_index = group_index
        full_weight: Tensor = module.weight
        self.dim_C: int = full_weight.shape[0]
        self._dim_weight: int = full_weight[0].numel() if weight is not None else 0
        self.dim_K: int = self._dim_weight + (1 if bias is not None else 0)

    # ---------------------------------------------------------------- inputs
    @abstractmethod
    def input_matrix(self, x: Tensor, kfac_approx: str) -> Tensor:
        r"""Return the scaled input matrix :math:`A` of shape ``(n, dim_K)``.

        Args:
            x: The layer input (already in the dtype of ``K``).
            kfac_approx: ``"expand"`` or ``"reduce"``.
        """

    @abstractmethod
    def grad_output_matrix(
        self, g: Tensor, loss_average: str | None, kfac_approx: str
    ) -> tuple[Tensor, int]:
        r"""Return the scaled output-gradient matrix and the number of loss terms.

        Args:
            g: Gradient of the loss w.r.t. the layer output (in the dtype of ``C``).
            loss_average: ``None``, ``"batch"`` or ``"batch+sequence"``.
            kfac_approx: ``"expand"`` or ``"reduce"``.

        Returns:
            :math:`G_\text{out}` of shape ``(n, dim_C)`` and the number :math:`N` of
            loss terms it was scaled for (1 for ``loss_average=None``).
        """

    def _finish_input(self, rows: Tensor | None, n: int, like: Tensor) -> Tensor:
        """Append the ones column for the bias and divide by ``sqrt(n)``.

        Args:
            rows: The ``(n, d_in)`` input rows, or ``None`` if the weight is not trained.
            n: Number of rows.
            like: A tensor with the dtype and device of the result.
        """
        scale = math.sqrt(n)
        if self.bias is None:
            assert rows is not None
            return rows / scale
        out = like.new_empty((n, self.dim_K))
        if rows is not None:
            torch.div(rows, scale, out=out[:, : self._dim_weight])
        out[:, self._dim_weight :].fill_(1.0).div_(scale)
        return out

    # ------------------------------------------------------------- gradients
    def gradient_matrix(self) -> Tensor | None:
        """Return the ``(dim_C, dim_K)`` gradient matrix, or ``None`` without gradients.

        A trained parameter without a gradient contributes zeros.
        """
        weight_grad = self.weight.grad if self.weight is not None else None
        bias_grad = self.bias.grad if self.bias is not None else None
        if weight_grad is None and bias_grad is None:
            return None
        columns = []
        if self.weight is not None:
            columns.append(
                weight_grad.flatten(start_dim=1)
                if weight_grad is not None
                else self.weight.new_zeros(self.dim_C, self._dim_weight)
            )
        if self.bias is not None:
            columns.append(
                bias_grad.unsqueeze(1)
                if bias_grad is not None
                else self.bias.new_zeros(self.dim_C, 1)
            )
        return columns[0] if len(columns) == 1 else torch.cat(columns, dim=1)

    def split(self, matrix: Tensor) -> list[tuple[nn.Parameter, Tensor]]:
        """Split a ``(dim_C, dim_K)`` matrix into ``(parameter, update)`` pairs.

        Only parameters that currently have a gradient are returned.
        """
        pairs = []
        if self.weight is not None and self.weight.grad is not None:
            pairs.append((self.weight, matrix[:, : self._dim_weight].reshape_as(self.weight)))
        if self.bias is not None and self.bias.grad is not None:
            pairs.append((self.bias, matrix[:, -1].reshape_as(self.bias)))
        return pairs


def _num_loss_terms(loss_average: str | None, batch: int, positions: int) -> int:
    if loss_average is None:
        return 1
    if loss_average == "batch":
        return batch
    return batch * positions


class LinearLayer(Layer):
    """A :class:`~torch.nn.Linear` layer; inputs of shape ``(batch, ..., d_in)``.

    Every leading dimension after the first is weight-shared.
    """

    def input_matrix(self, x: Tensor, kfac_approx: str) -> Tensor:
        """See :meth:`Layer.input_matrix`."""
        if x.ndim == 1:
            x = x.unsqueeze(0)
        if self.weight is None:
            n = x.shape[:-1].numel() if kfac_approx == "expand" else x.shape[0]
            return self._finish_input(None, n, x)
        if kfac_approx == "expand":
            rows = x.reshape(-1, x.shape[-1])
        elif x.ndim > 2:
            rows = x.mean(dim=tuple(range(1, x.ndim - 1)))
        else:
            rows = x
        return self._finish_input(rows, rows.shape[0], x)

    def grad_output_matrix(
        self, g: Tensor, loss_average: str | None, kfac_approx: str
    ) -> tuple[Tensor, int]:
        """See :meth:`Layer.grad_output_matrix`."""
        if g.ndim == 1:
            g = g.unsqueeze(0)
        terms = _num_loss_terms(loss_average, g.shape[0], g.shape[1:-1].numel())
        if kfac_approx == "expand":
            g = g.reshape(-1, g.shape[-1])
        elif g.ndim > 2:
            g = g.sum(dim=tuple(range(1, g.ndim - 1)))
        return (g * math.sqrt(terms) if terms != 1 else g), terms


def _pair_padding(module: nn.Module, spatial: int) -> list[tuple[int, int]]:
    """Return the ``(left, right)`` zero or mode padding of each spatial dimension."""
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            return [(0, 0)] * spatial
        pads = []
        for k, d in zip(module.kernel_size, module.dilation, strict=True):
            total = d * (k - 1)
            pads.append((total // 2, total - total // 2))
        return pads
    return [(p, p) for p in padding]


class ConvLayer(Layer):
    """A :class:`~torch.nn.Conv1d`, :class:`~torch.nn.Conv2d` or :class:`~torch.nn.Conv3d`.

    Supports every stride, padding (integers, ``"same"``, ``"valid"``, every
    ``padding_mode``), dilation and ``groups``. With ``groups > 1`` the input is
    averaged over the channel groups (all groups share the factor ``K``).
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        weight: nn.Parameter | None,
        bias: nn.Parameter | None,
        group_index: int,
    ) -> None:
        super().__init__(name, module, weight, bias, group_index)
        self._spatial: int = module.weight.ndim - 2
        self._kernel: tuple[int, ...] = tuple(module.kernel_size)
        self._stride: tuple[int, ...] = tuple(module.stride)
        self._dilation: tuple[int, ...] = tuple(module.dilation)
        self._groups: int = module.groups
        pads = _pair_padding(module, self._spatial)
        self._pad: list[int] | None = None
        if any(left or right for left, right in pads):
            # F.pad takes (left, right) pairs from the last dimension to the first.
            self._pad = [p for pair in reversed(pads) for p in pair]
        mode = module.padding_mode
        self._pad_mode: str = "constant" if mode == "zeros" else mode
        self._patterns: dict[tuple[Any, ...], Tensor] = {}

    def _output_positions(self, spatial_in: Sequence[int]) -> tuple[int, ...]:
        sizes = []
        pads = self._pad or [0] * (2 * self._spatial)
        for i, size in enumerate(spatial_in):
            left, right = pads[2 * (self._spatial - 1 - i)], pads[2 * (self._spatial - 1 - i) + 1]
            span = self._dilation[i] * (self._kernel[i] - 1) + 1
            sizes.append((size + left + right - span) // self._stride[i] + 1)
        return tuple(sizes)

    def _group_mean_padded(self, x: Tensor) -> Tensor:
        """Average the channel groups and pad: ``(batch, C_in / groups, *padded)``."""
        if self._groups > 1:
            x = x.unflatten(1, (self._groups, -1)).mean(dim=1)
        if self._pad is not None:
            x = functional.pad(x, self._pad, mode=self._pad_mode)
        return x

    def _patches(self, x: Tensor) -> Tensor:
        """Return a strided view ``(batch, C_in / groups, *out_positions, *kernel)``."""
        x = self._group_mean_padded(x)
        for i in range(self._spatial):
            span = self._dilation[i] * (self._kernel[i] - 1) + 1
            x = x.unfold(2 + i, span, self._stride[i])
            if self._dilation[i] > 1:
                x = x[..., :: self._dilation[i]]
        return x

    def _position_means(self, size: int, i: int, like: Tensor) -> Tensor:
        """Return ``P`` (``kernel x size``) with ``(P x)_k`` the mean of kernel tap ``k``.

        ``P[k, j] = 1 / O`` for every output position ``o`` that reads padded input
        index ``j = o * stride + k * dilation`` through tap ``k`` (``O`` positions).
        """
        key = (size, i, like.dtype, like.device)
        pattern = self._patterns.get(key)
        if pattern is None:
            span = self._dilation[i] * (self._kernel[i] - 1) + 1
            positions = (size - span) // self._stride[i] + 1
            pattern = like.new_zeros((self._kernel[i], size))
            index = torch.arange(positions, device=like.device) * self._stride[i]
            for k in range(self._kernel[i]):
                pattern[k, index + k * self._dilation[i]] = 1.0 / positions
            self._patterns[key] = pattern
        return pattern

    def input_matrix(self, x: Tensor, kfac_approx: str) -> Tensor:
        """See :meth:`Layer.input_matrix`.

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
            return self._finish_input(None, n, x)
        s = self._spatial
        if kfac_approx == "reduce":
            # mean over output positions of the patches, one kernel dimension at a time
            y = self._group_mean_padded(x)
            for i in range(s):
                y = torch.tensordot(y, self._position_means(y.shape[2], i, y), dims=([2], [1]))
            return self._finish_input(y.reshape(batch, -1), batch, x)
        patches = self._patches(x)
        # (C_in / groups, *kernel, batch, *positions)
        patches = patches.permute(1, *range(2 + s, 2 + 2 * s), 0, *range(2, 2 + s))
        n = batch * math.prod(patches.shape[2 + s :])
        scale = math.sqrt(n)
        out_T = x.new_empty((self.dim_K, n))
        torch.div(patches, scale, out=out_T[: self._dim_weight].view(patches.shape))
        if self.bias is not None:
            out_T[self._dim_weight :].fill_(1.0).div_(scale)
        return out_T.mT

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
        terms = _num_loss_terms(loss_average, g.shape[0], positions)
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


def make_layer(
    name: str,
    module: nn.Module,
    weight: nn.Parameter | None,
    bias: nn.Parameter | None,
    group_index: int,
) -> Layer:
    """Return the :class:`Layer` for a supported module.

    Raises:
        TypeError: If the module type is not supported.
    """
    if isinstance(module, nn.Linear):
        return LinearLayer(name, module, weight, bias, group_index)
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return ConvLayer(name, module, weight, bias, group_index)
    raise TypeError(f"unsupported layer {type(module).__name__}")


def preconditioner_dims(module: nn.Module) -> tuple[int, int]:
    """Return ``(dim_K, dim_C)`` of a supported layer whose parameters are all trained.

    Raises:
        TypeError: If the module type is not supported.
    """
    if not isinstance(module, SUPPORTED_MODULES):
        raise TypeError(f"unsupported layer {type(module).__name__}")
    dim_K = module.weight[0].numel() + (1 if module.bias is not None else 0)
    return dim_K, module.weight.shape[0]
