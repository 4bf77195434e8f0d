"""Layer processing: input and output-gradient matrices of Linear and convolution layers."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

import structmat
from singd_opt import SINGD
from singd_opt.layers import ConvLayer, LinearLayer, make_layer
from singd_opt.layers import conv as conv_module

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")

CONVS: list[tuple[type[nn.Module], dict[str, Any], tuple[int, ...]]] = [
    (nn.Conv1d, {"kernel_size": 3}, (11,)),
    (nn.Conv1d, {"kernel_size": 4, "stride": 2, "padding": 3, "dilation": 2}, (13,)),
    (nn.Conv1d, {"kernel_size": 4, "padding": "same", "padding_mode": "reflect"}, (10,)),
    (nn.Conv2d, {"kernel_size": 3, "padding": 1}, (7, 6)),
    (nn.Conv2d, {"kernel_size": (2, 3), "stride": (2, 1), "padding": (1, 0)}, (7, 8)),
    (nn.Conv2d, {"kernel_size": 4, "padding": "same", "dilation": (1, 2)}, (6, 9)),
    (nn.Conv2d, {"kernel_size": 3, "padding": "valid", "dilation": 2, "bias": False}, (9, 9)),
    (nn.Conv2d, {"kernel_size": 3, "padding": 2, "padding_mode": "circular"}, (5, 6)),
    (nn.Conv3d, {"kernel_size": 2, "stride": (1, 2, 1), "padding": (1, 0, 1)}, (4, 5, 3)),
]


def _input_and_grad(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Forward and backward a random linear loss; return input, output gradient, grads."""
    out = module(x)
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    grads = {"weight": module.weight.grad.clone()}
    if module.bias is not None:
        grads["bias"] = module.bias.grad.clone()
    return x, grad_out, grads


@pytest.mark.parametrize(("cls", "kwargs", "spatial"), CONVS)
def test_conv_expand_matrices_reproduce_the_gradient(
    cls: type[nn.Module], kwargs: dict[str, Any], spatial: tuple[int, ...]
) -> None:
    r"""With ``expand``, :math:`G_\text{out}^\top A` is the (scaled) weight gradient.

    This pins the patch extraction (ordering, stride, padding, dilation) to what
    the convolution itself computes.
    """
    torch.manual_seed(0)
    module = cls(4, 5, **kwargs).double()
    batch = 3
    x = torch.randn(batch, 4, *spatial, dtype=torch.float64)
    x, g, grads = _input_and_grad(module, x)
    layer = make_layer(module, module.weight, module.bias)
    assert isinstance(layer, ConvLayer)
    A = layer.input_matrix(x, "expand")
    G, terms = layer.grad_output_matrix(g, "batch", "expand")
    positions = g[0, 0].numel()
    assert terms == batch
    assert A.shape == (batch * positions, layer.dim_K)
    assert G.shape == (batch * positions, 5)
    gradient = G.T @ A * math.sqrt(A.shape[0] / terms)
    expected = grads["weight"].flatten(start_dim=1)
    if module.bias is not None:
        expected = torch.cat([expected, grads["bias"].unsqueeze(1)], dim=1)
    torch.testing.assert_close(gradient, expected)
    assert torch.equal(layer.gradient_matrix(), expected)


@pytest.mark.parametrize(("cls", "kwargs", "spatial"), CONVS)
def test_conv_reduce_averages_expand_rows(
    cls: type[nn.Module], kwargs: dict[str, Any], spatial: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    module = cls(4, 5, **kwargs).double()
    x = torch.randn(3, 4, *spatial, dtype=torch.float64)
    x, g, _ = _input_and_grad(module, x)
    layer = make_layer(module, module.weight, module.bias)
    expand = layer.input_matrix(x, "expand")
    reduce = layer.input_matrix(x, "reduce")
    positions = g[0, 0].numel()
    expected = expand.view(3, positions, -1).mean(dim=1) * math.sqrt(positions)
    torch.testing.assert_close(reduce, expected)
    G_reduce, terms = layer.grad_output_matrix(g, "batch+sequence", "reduce")
    assert terms == 3 * positions
    G_expand, _ = layer.grad_output_matrix(g, "batch+sequence", "expand")
    torch.testing.assert_close(G_reduce, G_expand.view(3, positions, -1).sum(dim=1))
    G_sum, terms_sum = layer.grad_output_matrix(g, None, "expand")
    assert terms_sum == 1
    torch.testing.assert_close(G_sum * math.sqrt(3 * positions), G_expand)


@pytest.mark.parametrize("cls", [nn.Conv1d, nn.Conv2d])
def test_grouped_conv_averages_input_over_groups(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    spatial = (9,) if cls is nn.Conv1d else (6, 7)
    module = cls(6, 3, kernel_size=3, stride=2, padding=1, groups=3).double()
    x = torch.randn(2, 6, *spatial, dtype=torch.float64)
    layer = make_layer(module, module.weight, module.bias)
    assert layer.dim_K == 2 * 3 ** len(spatial) + 1
    A = layer.input_matrix(x, "expand")
    averaged = x.unflatten(1, (3, 2)).mean(dim=1)
    if cls is nn.Conv1d:
        averaged = averaged.unsqueeze(2)
        kernel, stride, padding = (1, 3), (1, 2), (0, 1)
    else:
        kernel, stride, padding = (3, 3), (2, 2), (1, 1)
    patches = functional.unfold(averaged, kernel, padding=padding, stride=stride)
    patches = patches.transpose(1, 2).flatten(end_dim=1)
    n = patches.shape[0]
    expected = torch.cat([patches, torch.ones(n, 1, dtype=torch.float64)], dim=1) / math.sqrt(n)
    torch.testing.assert_close(A, expected)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_linear_with_leading_dimensions(approx: str) -> None:
    torch.manual_seed(0)
    module = nn.Linear(5, 3).double()
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64)
    layer = make_layer(module, module.weight, module.bias)
    assert isinstance(layer, LinearLayer)
    out = module(x)
    g = torch.randn_like(out)
    A = layer.input_matrix(x, approx)
    G, terms = layer.grad_output_matrix(g, "batch+sequence", approx)
    assert terms == 2 * 4 * 3
    ones = torch.ones(*x.shape[:-1], 1, dtype=torch.float64)
    full = torch.cat([x, ones], dim=-1)
    if approx == "expand":
        torch.testing.assert_close(A, full.reshape(-1, 6) / math.sqrt(24))
        torch.testing.assert_close(G, g.reshape(-1, 3) * math.sqrt(24))
    else:
        torch.testing.assert_close(A, full.mean(dim=(1, 2)) / math.sqrt(2))
        torch.testing.assert_close(G, g.sum(dim=(1, 2)) * math.sqrt(24))
    # unbatched input: one sample
    A1 = layer.input_matrix(x[0, 0, 0], approx)
    torch.testing.assert_close(A1, full[0, 0, 0].unsqueeze(0))


def test_bias_only_and_weight_only_layers() -> None:
    module = nn.Linear(5, 3)
    x = torch.randn(4, 2, 5)
    bias_only = make_layer(module, None, module.bias)
    assert bias_only.dim_K == 1
    torch.testing.assert_close(bias_only.input_matrix(x, "expand"), torch.full((8, 1), 8**-0.5))
    torch.testing.assert_close(bias_only.input_matrix(x, "reduce"), torch.full((4, 1), 0.5))
    weight_only = make_layer(module, module.weight, None)
    assert weight_only.dim_K == 5
    torch.testing.assert_close(weight_only.input_matrix(x, "expand"), x.reshape(8, 5) / 8**0.5)
    conv = nn.Conv2d(2, 3, 3)
    conv_bias = make_layer(conv, None, conv.bias)
    assert conv_bias.input_matrix(torch.randn(2, 2, 5, 6), "expand").shape == (2 * 3 * 4, 1)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(2, 4, 3, padding="same")
        self.conv2d = nn.Conv2d(4, 6, 3, stride=2, dilation=1, padding=1, groups=2)
        self.conv2d_b = nn.Conv2d(6, 4, 2, padding="same", dilation=2, bias=False)
        self.head = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv1d(x))  # (b, 4, 64)
        h = h.view(-1, 4, 8, 8)
        h = torch.relu(self.conv2d(h))  # (b, 6, 4, 4)
        h = torch.relu(self.conv2d_b(h))  # (b, 4, 4, 4)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("loss_average", ["batch", "batch+sequence", None])
def test_conv_network_trains(approx: str, loss_average: str | None) -> None:
    torch.manual_seed(0)
    model = ConvNet()
    lr = 0.1 if loss_average else 0.1 / 16  # a summed loss has 16 times the gradient
    optimizer = SINGD(
        model,
        lr=lr,
        lr_cov=0.05,
        damping=0.1,
        T=1,
        kfac_approx=approx,
        loss_average=loss_average,
        defaults="reference",
        train_all_parameters=True,
    )
    assert set(optimizer.Ks) == {"conv1d", "conv2d", "conv2d_b", "head"}
    assert optimizer.Ks["conv2d"].shape[0] == 2 * 9 + 1
    x = torch.randn(16, 2, 64)
    y = torch.randint(0, 3, (16,))
    reduction = "sum" if loss_average is None else "mean"
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y, reduction=reduction)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_linear_output_curvature_is_that_of_the_scaled_rows(
    dtype: torch.dtype, approx: str
) -> None:
    r""":math:`H_C` with the loss terms and a gradient prescale folded in (or not, half types)."""
    torch.manual_seed(0)
    module = nn.Linear(6, 10)
    layer = make_layer(module, module.weight, module.bias)
    assert isinstance(layer, LinearLayer)
    g = torch.randn(4, 7, 10, dtype=torch.float64)
    C = structmat.BlockDiagonal.with_block_size(4).from_dense(torch.randn(10, 10).double())
    G, terms = layer.grad_output_matrix(g, "batch+sequence", approx)
    expected = C.from_inner((G / 2.0).mT).to_dense()
    H_C, got_terms = layer.output_curvature(
        C.to(dtype), g.to(dtype), "batch+sequence", approx, grad_prescale=4.0
    )
    assert got_terms == terms == 28
    tolerance = 1e-12 if dtype == torch.float64 else 3e-2
    torch.testing.assert_close(
        H_C.to_dense().double(),
        expected,
        rtol=tolerance,
        atol=tolerance * float(expected.abs().max()),
    )


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    ("x_dtype", "K_dtype"),
    [
        (torch.float64, torch.float64),
        (torch.float32, torch.float64),
        (torch.bfloat16, torch.float32),
    ],
)
def test_linear_input_curvature_from_any_layout_and_dtype(
    bias: bool, x_dtype: torch.dtype, K_dtype: torch.dtype
) -> None:
    r""":math:`H_K` of a transposed input of another dtype is that of its scaled rows.

    Attention modules pass the ``(sequence, batch, d)`` transpose of their input; the rows
    are copied from that layout, converted to ``K``'s dtype, in one pass.
    """
    torch.manual_seed(0)
    module = nn.Linear(6, 5, bias=bias)
    layer = make_layer(module, module.weight, module.bias)
    x = torch.randn(4, 7, 6).to(x_dtype).transpose(0, 1)  # (7, 4, 6), not contiguous
    K = structmat.BlockDiagonal.with_block_size(2).from_dense(torch.randn(layer.dim_K, 6 + bias))
    K = K.to(K_dtype)
    A = layer.input_matrix(x.contiguous().double(), "expand")
    torch.testing.assert_close(layer.input_matrix(x.double(), "expand"), A)
    expected = K.to(torch.float64).from_inner(A.mT).to_dense()
    H_K, n = layer.input_curvature(K, x, "expand")
    assert n == 28
    assert H_K.dtype == K_dtype
    # the rows round to x's dtype first; the Gram then sums 28 products in K's dtype
    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5}[K_dtype]
    if x_dtype != K_dtype:
        expected = (
            K.to(torch.float64)
            .from_inner(layer.input_matrix(x.contiguous().to(K_dtype).double(), "expand").mT)
            .to_dense()
        )
    torch.testing.assert_close(H_K.to_dense().double(), expected, rtol=tolerance, atol=tolerance)


def test_contiguous_inputs_without_bias_are_not_copied() -> None:
    module = nn.Linear(6, 5, bias=False)
    layer = make_layer(module, module.weight, None)
    x = torch.randn(3, 4, 6)
    rows, n = layer.input_rows(x, "expand", torch.float32)
    assert n == 12
    assert rows.shape == (12, 6)
    assert rows.data_ptr() == x.data_ptr()
    copied, _ = layer.input_rows(x, "expand", torch.float64)
    assert copied.dtype == torch.float64
    torch.testing.assert_close(copied, x.reshape(12, 6).double())


@pytest.mark.parametrize(("cls", "kwargs", "spatial"), CONVS)
@pytest.mark.parametrize("batch", [1, 9])
def test_conv_input_curvature_from_patches_gathered_batch_last(
    cls: type[nn.Module], kwargs: dict[str, Any], spatial: tuple[int, ...], batch: int
) -> None:
    r""":math:`H_K` is the Gram of the expand rows, whichever order they are gathered in.

    With outputs at most ``BATCH_LAST_WIDEST`` wide and a batch at least as wide, the
    curvature gathers the patches batch-last; a batch of one keeps the paired order.
    """
    torch.manual_seed(0)
    module = cls(4, 5, **kwargs).double()
    layer = make_layer(module, module.weight, module.bias)
    assert isinstance(layer, ConvLayer)
    x = torch.randn(batch, 4, *spatial[:-1], min(spatial[-1], 7), dtype=torch.float64)
    width = module(x).shape[-1]
    assert width <= conv_module.BATCH_LAST_WIDEST  # the batch-last gather is eligible
    K = structmat.Dense.from_dense(torch.randn(layer.dim_K, layer.dim_K, dtype=torch.float64))
    A = layer.input_matrix(x, "expand")
    expected = K.from_inner(A.mT).to_dense()
    H_K, n = layer.input_curvature(K, x, "expand")
    assert n == A.shape[0]
    torch.testing.assert_close(H_K.to_dense(), expected, rtol=1e-12, atol=1e-12)
