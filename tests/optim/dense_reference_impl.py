"""A plain-tensor re-implementation of SINGD, written from the update equations.

Everything here works on dense ``torch.Tensor`` matrices: every structure is an
explicit projection of a dense symmetric matrix onto its sparsity pattern, and the
optimizer keeps ``K, C, m_K, m_C`` as dense matrices. The tests use
:class:`DenseSINGD` as an independent oracle for :class:`singd_opt.SINGD`.

Notation (per layer): the weight gradient is a ``d_C x d_K`` matrix ``G_w`` (the
bias, if any, is an extra last column), ``A`` is the processed layer input (rows are
samples, or samples times positions) and ``G`` the processed output gradient. On
update steps (``step % T == 0``)::

    H_K = proj_K(K^T A^T A K),           H_C = proj_C(C^T G^T G C)
    m_K <- alpha1 m_K + s [tr(H_C) H_K + lambda tr(proj_C(C^T C)) proj_K(K^T K) - I]
    m_C <- alpha1 m_C + s [tr(H_K) H_C + lambda tr(proj_K(K^T K)) proj_C(C^T C) - I]
    K <- K - beta1 K m_K,                 C <- C - beta1 C m_C

with ``tr`` the average trace and ``s = 1/2`` (times ``1 - alpha1`` when the
covariance learning rate is normalised); the KFAC-like variant drops the trace
factors and the momentum. ``H_K, H_C`` use the factors from before the update.
Every step then applies ``theta <- theta - lr * buffer`` with
``buffer <- momentum * buffer + C C^T G_w K K^T + weight_decay * theta``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from math import sqrt

import torch
from torch import Tensor, nn
from torch.nn.functional import unfold

SUPPORTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)

_ARROW_NAMES = ("triltopleftdiag", "trilbottomrightdiag", "triutopleftdiag", "triubottomrightdiag")


@contextmanager
def single_intra_op_thread() -> Iterator[None]:
    """Run torch operations on one thread, restoring the thread count afterwards.

    The tests work with matrices of size at most ~40, for which a thread pool only
    adds synchronisation overhead (and heavy slow-downs on a busy machine).

    Yields:
        Nothing; the body runs single-threaded.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------- projections
def hierarchical_block_dims(dim: int, k1: int, k2: int) -> tuple[int, int, int]:
    """Split a hierarchical matrix's dimension into its three diagonal regions.

    The top-left dense block is filled first, then the bottom-right one, and only
    then the diagonal middle part.

    Args:
        dim: Matrix dimension.
        k1: Largest size of the top-left dense block.
        k2: Largest size of the bottom-right dense block.

    Returns:
        ``(size of top-left block, size of diagonal middle, size of bottom-right block)``.
    """
    if dim <= k1:
        return dim, 0, 0
    if dim <= k1 + k2:
        return k1, 0, dim - k1
    return k1, dim - k1 - k2, k2


def pattern_mask(name: str, dim: int) -> Tensor:
    """Return the boolean sparsity pattern of a (non-Toeplitz) structure.

    Args:
        name: Structure name, e.g. ``"block3diagonal"`` or ``"hierarchical15_15"``.
        dim: Matrix dimension.

    Returns:
        A ``dim x dim`` boolean tensor, true where the structure may be non-zero.

    Raises:
        ValueError: For an unknown name.
    """
    i = torch.arange(dim).unsqueeze(1)
    j = torch.arange(dim).unsqueeze(0)
    eye = i == j
    if name == "dense":
        return torch.ones(dim, dim, dtype=torch.bool)
    if name == "diagonal":
        return eye
    if name == "tril":
        return i >= j
    if name == "triu":
        return i <= j
    if name == "triltopleftdiag":  # diagonal plus the last row
        return eye | (i == dim - 1)
    if name == "trilbottomrightdiag":  # diagonal plus the first column
        return eye | (j == 0)
    if name == "triutopleftdiag":  # diagonal plus the last column
        return eye | (j == dim - 1)
    if name == "triubottomrightdiag":  # diagonal plus the first row
        return eye | (i == 0)
    match = re.fullmatch(r"block(\d+)diagonal", name)
    if match:
        block = int(match.group(1))
        return (i // block) == (j // block)  # the trailing block may be smaller
    match = re.fullmatch(r"hierarchical(\d+)_(\d+)", name)
    if match:
        top, middle, _ = hierarchical_block_dims(dim, int(match.group(1)), int(match.group(2)))
        rows_top = i < top
        rows_middle = (i >= top) & (i < top + middle)
        rows_bottom = i >= top + middle
        # [[A, B], [0, diag(C), 0], [0, D, E]]
        return rows_top | (rows_middle & eye) | (rows_bottom & (j >= top))
    raise ValueError(f"unknown structure {name!r}")


def toeplitz_coefficients(sym_mat: Tensor) -> Tensor:
    """Coefficients of the triangular Toeplitz projection of a symmetric matrix.

    Coefficient ``k > 0`` is the sum of the ``k``-th lower and ``k``-th upper
    diagonal divided by ``d - k``; coefficient ``0`` is ``trace / d``.

    Args:
        sym_mat: A ``d x d`` matrix.

    Returns:
        A vector of length ``d``.
    """
    dim = sym_mat.shape[0]
    idx = torch.arange(dim)
    lag = (idx.unsqueeze(1) - idx.unsqueeze(0)).abs().flatten()
    sums = torch.zeros(dim, dtype=sym_mat.dtype).index_add_(0, lag, sym_mat.flatten())
    return sums / torch.arange(dim, 0, -1, dtype=sym_mat.dtype)


def project(name: str, sym_mat: Tensor) -> Tensor:
    """Project a symmetric matrix onto a structure, returned as a dense matrix.

    Pattern structures keep the entries inside the pattern; an entry whose mirror
    position lies outside the pattern absorbs it (``S[i, j] + S[j, i]``).
    Triangular Toeplitz structures average each pair of diagonals.

    Args:
        name: Structure name.
        sym_mat: A dense ``d x d`` symmetric matrix.

    Returns:
        The projection as a dense ``d x d`` matrix.
    """
    dim = sym_mat.shape[0]
    if name in ("triltoeplitz", "triutoeplitz"):
        coeffs = toeplitz_coefficients(sym_mat)
        i = torch.arange(dim).unsqueeze(1)
        j = torch.arange(dim).unsqueeze(0)
        offset = i - j if name == "triltoeplitz" else j - i
        values = coeffs[offset.clamp(min=0)]
        return torch.where(offset >= 0, values, torch.zeros_like(values))
    mask = pattern_mask(name, dim)
    folded = sym_mat + torch.where(mask.T, torch.zeros_like(sym_mat), sym_mat.T)
    return torch.where(mask, folded, torch.zeros_like(sym_mat))


def average_trace(mat: Tensor) -> Tensor:
    """Return ``trace(mat) / dim``.

    Args:
        mat: A square matrix.

    Returns:
        The average of the diagonal entries.
    """
    return torch.diagonal(mat).mean()


# -------------------------------------------------- layer inputs and gradients
def conv_patches(layer: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """Unfold a convolution's input into patches, averaging over channel groups.

    Args:
        layer: The convolution (zero padding, integer padding).
        x: Its input, ``(batch, C_in, *spatial)``.

    Returns:
        ``(batch, positions, C_in / groups * prod(kernel_size))``.
    """
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(2)
        kernel, stride = (1, layer.kernel_size[0]), (1, layer.stride[0])
        padding, dilation = (0, layer.padding[0]), (1, layer.dilation[0])
    else:
        kernel, stride, padding, dilation = (
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
        )
    batch, channels = x.shape[:2]
    groups = layer.groups
    x = x.reshape(batch, groups, channels // groups, *x.shape[2:]).mean(1)
    patches = unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return patches.transpose(1, 2)


def input_matrix(layer: nn.Module, x: Tensor, kfac_approx: str) -> Tensor:
    """Build the matrix ``A`` with ``A^T A`` the layer's input covariance.

    Rows are samples (``"reduce"``: positions averaged) or samples times positions
    (``"expand"``); a ones column is appended for a bias; the result is divided by
    the square root of its number of rows.

    Args:
        layer: A linear or convolution layer.
        x: The layer's input.
        kfac_approx: ``"expand"`` or ``"reduce"``.

    Returns:
        A ``rows x d_K`` matrix.
    """
    if isinstance(layer, nn.Linear):
        per_position = x.reshape(x.shape[0], -1, x.shape[-1])
    else:
        per_position = conv_patches(layer, x)
    if kfac_approx == "expand":
        a = per_position.reshape(-1, per_position.shape[-1])
    else:
        a = per_position.mean(1)
    if layer.bias is not None:
        a = torch.cat([a, torch.ones_like(a[:, :1])], dim=1)
    return a / sqrt(a.shape[0])


def output_grad_matrix(
    layer: nn.Module, grad_output: Tensor, loss_average: str | None, kfac_approx: str
) -> Tensor:
    """Build the matrix ``G`` with ``G^T G`` the layer's output-gradient covariance.

    Rows are samples (``"reduce"``: positions summed) or samples times positions
    (``"expand"``). The gradient of a mean-reduced loss is multiplied by the square
    root of the number of averaged terms (batch, or batch times positions).

    Args:
        layer: A linear or convolution layer.
        grad_output: Gradient of the loss w.r.t. the layer's output.
        loss_average: ``None``, ``"batch"`` or ``"batch+sequence"``.
        kfac_approx: ``"expand"`` or ``"reduce"``.

    Returns:
        A ``rows x d_C`` matrix.
    """
    batch = grad_output.shape[0]
    if isinstance(layer, nn.Linear):
        per_position = grad_output.reshape(batch, -1, grad_output.shape[-1])
    else:
        per_position = grad_output.flatten(start_dim=2).transpose(1, 2)
    positions = per_position.shape[1]
    scale = {None: 1.0, "batch": sqrt(batch), "batch+sequence": sqrt(batch * positions)}[
        loss_average
    ]
    if kfac_approx == "expand":
        g = per_position.reshape(-1, per_position.shape[-1])
    else:
        g = per_position.sum(1)
    return g * scale


def param_matrix(layer: nn.Module, grad: bool = False) -> Tensor:
    """Return a layer's parameters (or gradients) as one ``d_C x d_K`` matrix.

    Args:
        layer: A linear or convolution layer.
        grad: Whether to return the gradients instead of the parameters.

    Returns:
        The weight flattened to ``d_C`` rows, with the bias as extra last column.
    """
    weight = layer.weight.grad if grad else layer.weight.detach()
    mat = weight.reshape(weight.shape[0], -1)
    if layer.bias is not None:
        bias = layer.bias.grad if grad else layer.bias.detach()
        mat = torch.cat([mat, bias.unsqueeze(1)], dim=1)
    return mat


def set_param_matrix(layer: nn.Module, mat: Tensor) -> None:
    """Write a ``d_C x d_K`` matrix back into a layer's weight (and bias).

    Args:
        layer: A linear or convolution layer.
        mat: The new parameters in the layout of :func:`param_matrix`.
    """
    with torch.no_grad():
        if layer.bias is not None:
            layer.bias.copy_(mat[:, -1])
            mat = mat[:, :-1]
        layer.weight.copy_(mat.reshape_as(layer.weight))


def preconditioner_dims(layer: nn.Module) -> tuple[int, int]:
    """Return ``(d_K, d_C)`` for a layer.

    Args:
        layer: A linear or convolution layer.

    Returns:
        The dimension of the input-side and output-side factors.
    """
    d_C = layer.weight.shape[0]
    d_K = layer.weight[0].numel() + (layer.bias is not None)
    return d_K, d_C


# ----------------------------------------------------------------- optimizer
class DenseSINGD:
    """Dense SINGD with the constructor arguments of the optimizer under test.

    Layer inputs and output gradients are recorded by hooks during every forward
    and backward pass; :meth:`step` consumes the latest ones.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 0.001,
        momentum: float = 0.9,
        damping: float = 0.001,
        alpha1: float = 0.5,
        weight_decay: float = 0.0,
        T: int = 10,
        loss_average: str | None = "batch",
        lr_cov: float | Callable[[int], float] = 1e-2,
        structures: tuple[str, str] = ("dense", "dense"),
        kfac_approx: str = "expand",
        kfac_like: bool = False,
        normalize_lr_cov: bool | str = False,
        layer_structures: dict[str, tuple[str, str]] | None = None,
    ):
        self.lr, self.momentum, self.damping = lr, momentum, damping
        self.layer_structures = layer_structures or {}
        self.alpha1 = 0.0 if kfac_like else alpha1
        self.weight_decay, self.T, self.loss_average = weight_decay, T, loss_average
        self.lr_cov, self.structures, self.kfac_approx = lr_cov, structures, kfac_approx
        self.kfac_like, self.normalize_lr_cov = kfac_like, normalize_lr_cov
        self.steps = 0

        self.layers = {
            name: module
            for name, module in model.named_modules()
            if isinstance(module, SUPPORTED_LAYERS)
        }
        self.K: dict[str, Tensor] = {}
        self.C: dict[str, Tensor] = {}
        self.m_K: dict[str, Tensor] = {}
        self.m_C: dict[str, Tensor] = {}
        self.buffer: dict[str, Tensor] = {}
        self.inputs: dict[str, Tensor] = {}
        self.grad_outputs: dict[str, Tensor] = {}
        for name, layer in self.layers.items():
            d_K, d_C = preconditioner_dims(layer)
            options = {"dtype": layer.weight.dtype}
            self.K[name] = torch.eye(d_K, **options)
            self.C[name] = torch.eye(d_C, **options)
            self.m_K[name] = torch.zeros(d_K, d_K, **options)
            self.m_C[name] = torch.zeros(d_C, d_C, **options)
            self.buffer[name] = torch.zeros(d_C, d_K, **options)
            layer.register_forward_hook(self._make_hook(name))

    def _make_hook(self, name: str) -> Callable:
        """Create a forward hook recording a layer's input and output gradient.

        Args:
            name: The layer's name.

        Returns:
            The hook.
        """

        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            if not torch.is_grad_enabled():
                return
            self.inputs[name] = inputs[0].detach()

            def record(grad: Tensor) -> None:
                self.grad_outputs[name] = grad.detach()

            output.register_hook(record)

        return hook

    def covariance_factors(self, name: str) -> tuple[Tensor, Tensor]:
        """Return ``A`` and ``G`` of a layer from the latest forward/backward pass.

        Args:
            name: The layer's name.

        Returns:
            The processed input matrix and output-gradient matrix.
        """
        layer = self.layers[name]
        A = input_matrix(layer, self.inputs[name], self.kfac_approx)
        G = output_grad_matrix(layer, self.grad_outputs[name], self.loss_average, self.kfac_approx)
        return A, G

    def _update_preconditioner(self, name: str) -> None:
        """Update ``m_K, m_C, K, C`` of one layer (only called on update steps).

        Args:
            name: The layer's name.
        """
        struct_K, struct_C = self.layer_structures.get(name, self.structures)
        K, C = self.K[name], self.C[name]
        A, G = self.covariance_factors(name)
        H_K = project(struct_K, K.T @ A.T @ A @ K)
        H_C = project(struct_C, C.T @ G.T @ G @ C)
        KtK = project(struct_K, K.T @ K)
        CtC = project(struct_C, C.T @ C)
        I_K = torch.eye(K.shape[0], dtype=K.dtype)
        I_C = torch.eye(C.shape[0], dtype=C.dtype)
        s = 0.5 * ((1.0 - self.alpha1) if self.normalize_lr_cov else 1.0)
        if self.kfac_like:
            m_K = s * (H_K + self.damping * KtK - I_K)
            m_C = s * (H_C + self.damping * CtC - I_C)
        else:
            m_K = self.alpha1 * self.m_K[name] + s * (
                average_trace(H_C) * H_K + self.damping * average_trace(CtC) * KtK - I_K
            )
            m_C = self.alpha1 * self.m_C[name] + s * (
                average_trace(H_K) * H_C + self.damping * average_trace(KtK) * CtC - I_C
            )
        beta1 = self.lr_cov(self.steps) if callable(self.lr_cov) else self.lr_cov
        beta1_K, beta1_C = beta1, beta1
        if self.normalize_lr_cov:
            spectral = self.normalize_lr_cov == "spectral"
            beta1_K = beta1 / max(
                1.0, m_K.abs().max().item(), 2 * beta1 * torch.linalg.norm(m_K).item() * spectral
            )
            beta1_C = beta1 / max(
                1.0, m_C.abs().max().item(), 2 * beta1 * torch.linalg.norm(m_C).item() * spectral
            )
        self.m_K[name], self.m_C[name] = m_K, m_C
        self.K[name] = K - beta1_K * K @ m_K
        self.C[name] = C - beta1_C * C @ m_C

    def zero_grad(self) -> None:
        """Reset the gradients of all handled layers."""
        for layer in self.layers.values():
            for param in layer.parameters():
                param.grad = None

    def step(self) -> None:
        """Update the pre-conditioner (on update steps), then the parameters."""
        for name, layer in self.layers.items():
            if self.steps % self.T == 0:
                self._update_preconditioner(name)
            K, C = self.K[name], self.C[name]
            natural_grad = C @ C.T @ param_matrix(layer, grad=True) @ K @ K.T
            theta = param_matrix(layer)
            self.buffer[name] = (
                self.momentum * self.buffer[name] + natural_grad + self.weight_decay * theta
            )
            set_param_matrix(layer, theta - self.lr * self.buffer[name])
        self.steps += 1
