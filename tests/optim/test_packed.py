r"""Packed projections: one map computing several projections trains as separate layers.

A packed map split into one Kronecker block per projection must give exactly the
numbers of a twin model whose projections are separate layers holding the same
weights (same losses, weights and factors), for ``nn.Linear`` (rows of the weight)
and a map stored as :math:`W^\top` (columns).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, nn

from singd_opt import SINGD
from singd_opt.packed import PACKED_OUTPUTS_ATTRIBUTE, declare_packed

SIZES = {"query": 4, "key": 3, "value": 5}
WIDTH = 6


class TransposedMap(nn.Module):
    """``x @ weight + bias`` with ``weight`` of shape ``(d_in, d_out)``."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, d_out) / d_in**0.5)
        self.bias = nn.Parameter(torch.randn(d_out) / 10)

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(
            *x.shape[:-1], -1
        )


def _mix(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """A nonlinear use of the three projections (each gets its own curvature)."""
    return torch.cat([query.tanh(), key * key, value], dim=-1)


class Packed(nn.Module):
    def __init__(self, transposed: bool) -> None:
        super().__init__()
        total = sum(SIZES.values())
        self.qkv = TransposedMap(WIDTH, total) if transposed else nn.Linear(WIDTH, total)
        self.out = nn.Linear(total, 2)

    def forward(self, x: Tensor) -> Tensor:
        query, key, value = self.qkv(x).split(list(SIZES.values()), dim=-1)
        return self.out(_mix(query, key, value))


class PackedAndReused(Packed):
    """Also uses the packed weight in a way that is no linear map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + torch.einsum("ij,ij->", self.qkv.weight, self.qkv.weight)


class Separate(nn.Module):
    def __init__(self, packed: Packed) -> None:
        super().__init__()
        transposed = isinstance(packed.qkv, TransposedMap)
        self.projections = nn.ModuleDict()
        start = 0
        for name, size in SIZES.items():
            rows = slice(start, start + size)
            start += size
            if transposed:
                layer: nn.Module = TransposedMap(WIDTH, size)
                weight = packed.qkv.weight[:, rows]
            else:
                layer = nn.Linear(WIDTH, size)
                weight = packed.qkv.weight[rows]
            with torch.no_grad():
                layer.weight.copy_(weight)
                layer.bias.copy_(packed.qkv.bias[rows])
            self.projections[name] = layer
        self.out = copy.deepcopy(packed.out)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(_mix(*(layer(x) for layer in self.projections.values())))


def _models(transposed: bool) -> tuple[Packed, Separate]:
    torch.manual_seed(0)
    packed = Packed(transposed).double()
    declare_packed(packed.qkv, SIZES, transposed=transposed)
    return packed, Separate(packed).double()


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> list[float]:
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randn(5, 3, WIDTH, generator=generator, dtype=torch.float64)
        y = torch.randn(5, 3, 2, generator=generator, dtype=torch.float64)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("transposed", [False, True], ids=["linear", "transposed"])
@pytest.mark.parametrize("T", [1, 2])
def test_a_split_packed_map_trains_like_separate_layers(transposed: bool, T: int) -> None:
    packed, separate = _models(transposed)
    optimizer, twin_optimizer = (
        SINGD(packed, lr=0.01, T=T, elementwise_below=0),
        SINGD(separate, lr=0.01, T=T, elementwise_below=0),
    )
    names = [block.name for block in optimizer.blocks if block.kind == "kronecker"]
    assert names == ["qkv.query", "qkv.key", "qkv.value", "out"]
    losses = _train(packed, optimizer, steps=5)
    twin_losses = _train(separate, twin_optimizer, steps=5)
    assert losses[-1] < losses[0]
    torch.testing.assert_close(losses, twin_losses, rtol=1e-12, atol=1e-12)
    start = 0
    for name, size in SIZES.items():
        rows = slice(start, start + size)
        start += size
        layer = separate.projections[name]
        weight = packed.qkv.weight[:, rows] if transposed else packed.qkv.weight[rows]
        torch.testing.assert_close(weight, layer.weight, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(packed.qkv.bias[rows], layer.bias, rtol=1e-12, atol=1e-12)
        twin_name = f"projections.{name}" + (".weight" if transposed else "")
        for ours, theirs in ((optimizer.Ks, twin_optimizer.Ks), (optimizer.Cs, twin_optimizer.Cs)):
            torch.testing.assert_close(
                ours[f"qkv.{name}"].to_dense(),
                theirs[twin_name].to_dense(),
                rtol=1e-12,
                atol=1e-12,
            )


HEADS = 2


class PerHead(nn.Module):
    """A map whose outputs hold query, key and value of each head in turn (GPT-NeoX)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(WIDTH, HEADS * sum(SIZES.values()))
        declare_packed(self.qkv, SIZES, heads=HEADS)
        self.out = nn.Linear(HEADS * sum(SIZES.values()), 2)

    def forward(self, x: Tensor) -> Tensor:
        per_head = self.qkv(x).unflatten(-1, (HEADS, -1)).split(list(SIZES.values()), dim=-1)
        return self.out(_mix(*(part.flatten(-2) for part in per_head)))


class PerHeadTwin(nn.Module):
    """:class:`PerHead` with a layer per projection, holding its rows of every head."""

    def __init__(self, packed: PerHead) -> None:
        super().__init__()
        self.projections = nn.ModuleDict()
        group, start = sum(SIZES.values()), 0
        for name, size in SIZES.items():
            rows = [h * group + i for h in range(HEADS) for i in range(start, start + size)]
            start += size
            layer = nn.Linear(WIDTH, HEADS * size).double()
            with torch.no_grad():
                layer.weight.copy_(packed.qkv.weight[rows])
                layer.bias.copy_(packed.qkv.bias[rows])
            self.projections[name] = layer
        self.out = copy.deepcopy(packed.out)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(_mix(*(layer(x) for layer in self.projections.values())))


def test_projections_interleaved_per_head_train_like_separate_layers() -> None:
    torch.manual_seed(0)
    packed = PerHead().double()
    twin = PerHeadTwin(packed)
    x = torch.randn(3, 4, WIDTH, dtype=torch.float64)
    torch.testing.assert_close(packed(x), twin(x))  # the same function
    optimizer, twin_optimizer = (
        SINGD(packed, lr=0.01, elementwise_below=0),
        SINGD(twin, lr=0.01, elementwise_below=0),
    )
    assert "qkv.weight[8 rows], qkv.bias[8 rows]" in optimizer.describe()
    losses = _train(packed, optimizer, steps=4)
    twin_losses = _train(twin, twin_optimizer, steps=4)
    assert losses[-1] < losses[0]
    torch.testing.assert_close(losses, twin_losses, rtol=1e-12, atol=1e-12)
    for name in SIZES:
        for ours, theirs in ((optimizer.Ks, twin_optimizer.Ks), (optimizer.Cs, twin_optimizer.Cs)):
            torch.testing.assert_close(
                ours[f"qkv.{name}"].to_dense(),
                theirs[f"projections.{name}"].to_dense(),
                rtol=1e-12,
                atol=1e-12,
            )
    torch.testing.assert_close(packed(x), twin(x), rtol=1e-12, atol=1e-12)


def test_whole_keeps_one_block_and_the_reference_set_does_not_split() -> None:
    packed, _ = _models(transposed=False)
    for options in ({"packed_projections": "whole"}, {"defaults": "reference"}):
        optimizer = SINGD(packed, lr=0.01, **options, elementwise_below=0)  # type: ignore[arg-type]
        names = [block.name for block in optimizer.blocks if block.kind == "kronecker"]
        assert names == ["qkv", "out"], options
    # the reference set splits a declared nn.Linear when asked to
    optimizer = SINGD(packed, defaults="reference", packed_projections="split")
    assert [block.name for block in optimizer.blocks] == [
        "qkv.query",
        "qkv.key",
        "qkv.value",
        "out",
    ]


def test_the_weights_group_chooses() -> None:
    packed, _ = _models(transposed=False)
    groups = [
        {"params": list(packed.qkv.parameters()), "packed_projections": "whole"},
        {"params": list(packed.out.parameters())},
    ]
    optimizer = SINGD(packed, groups, lr=0.01, elementwise_below=0)
    assert [block.name for block in optimizer.blocks] == ["qkv", "out"]


def test_a_weight_and_bias_in_different_groups_are_refused() -> None:
    packed, _ = _models(transposed=False)
    groups = [
        {"params": [packed.qkv.weight, *packed.out.parameters()]},
        {"params": [packed.qkv.bias], "lr": 0.1},
    ]
    with pytest.raises(ValueError, match="parameters of layer 'qkv' are in different parameter"):
        SINGD(packed, groups, lr=0.01, elementwise_below=0)


def test_a_shared_packed_weight_is_not_split_and_says_so() -> None:
    packed, _ = _models(transposed=False)
    twin = nn.Linear(WIDTH, sum(SIZES.values())).double()
    twin.weight = packed.qkv.weight
    model = nn.ModuleDict({"packed": packed, "twin": twin})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer = SINGD(model, lr=0.01, elementwise_below=0)
    messages = [str(w.message) for w in caught]
    assert any("packed map 'packed.qkv' shares its weight with" in m for m in messages)
    assert any("trained with the element-wise rule" in m for m in messages)  # the shared map
    names = {block.name for block in optimizer.blocks}
    assert not names & {f"packed.qkv.{part}" for part in SIZES}


def test_a_checkpoint_of_split_blocks_resumes_exactly() -> None:
    packed, _ = _models(transposed=True)
    resumed = copy.deepcopy(packed)  # the declaration travels with the module
    optimizer = SINGD(packed, lr=0.01, elementwise_below=0)
    _train(packed, optimizer, steps=2)
    resumed.load_state_dict(packed.state_dict())
    resumed_optimizer = SINGD(resumed, lr=0.01, elementwise_below=0)
    resumed_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as if saved
    torch.testing.assert_close(
        _train(packed, optimizer, steps=3), _train(resumed, resumed_optimizer, steps=3)
    )
    whole = SINGD(resumed, lr=0.01, packed_projections="whole", elementwise_below=0)
    with pytest.raises(ValueError, match=r"saved blocks .* packed_projections"):
        whole.load_state_dict(copy.deepcopy(optimizer.state_dict()))


def test_another_use_of_the_packed_weight_is_reported_once() -> None:
    torch.manual_seed(0)
    packed = PackedAndReused(transposed=False).double()
    declare_packed(packed.qkv, SIZES)
    optimizer = SINGD(packed, lr=0.01, elementwise_below=0)
    x = torch.randn(4, WIDTH, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            optimizer.zero_grad()
            loss = packed(x).square().mean()
            loss.backward()
            optimizer.step()
    messages = [str(w.message) for w in caught if "packed map" in str(w.message)]
    assert messages == [
        "parameter 'qkv.weight' is also used by torch.einsum, which is not its packed map; "
        "that use adds no curvature"
    ]


def test_a_bad_option_is_refused() -> None:
    packed, _ = _models(transposed=False)
    with pytest.raises(ValueError, match="packed_projections must be one of 'split', 'whole'"):
        SINGD(packed, packed_projections="rows")


@pytest.mark.parametrize(
    ("module", "parts", "transposed", "error", "message"),
    [
        (nn.Linear(4, 6), {"a": 3, "b": 2}, None, ValueError, "sum to 5, but Linear has 6"),
        (nn.Linear(4, 6), [6], None, ValueError, "two or more parts"),
        (nn.Linear(4, 6), [3, 3.0], None, TypeError, "part 1 must be an int"),
        (nn.Linear(4, 6), [6, 0], None, ValueError, "part 1 must be > 0"),
        (nn.Conv2d(2, 6, 3), [3, 3], None, TypeError, "2-D weight"),
        (TransposedMap(4, 6), [3, 3], None, TypeError, "pass transposed="),
    ],
)
def test_a_bad_declaration_is_refused_and_changes_nothing(
    module: nn.Module, parts: object, transposed: bool | None, error: type, message: str
) -> None:
    with pytest.raises(error, match=message):
        declare_packed(module, parts, transposed=transposed)  # type: ignore[arg-type]
    assert not hasattr(module, PACKED_OUTPUTS_ATTRIBUTE)


def test_heads_multiply_the_sizes_and_are_checked() -> None:
    module = nn.Linear(4, 12)
    declare_packed(module, [1, 2, 3], heads=2)
    with pytest.raises(ValueError, match="sum to 6, times 3 heads, but Linear has 12"):
        declare_packed(module, [1, 2, 3], heads=3)
    with pytest.raises(ValueError, match="heads must be >= 1, got 0"):
        declare_packed(module, [6, 6], heads=0)
    with pytest.raises(TypeError, match="heads must be an int"):
        declare_packed(module, [6, 6], heads=1.0)  # type: ignore[arg-type]


def test_a_transposed_declaration_counts_the_columns() -> None:
    module = TransposedMap(4, 6)
    declare_packed(module, [2, 4], transposed=True)
    with pytest.raises(ValueError, match="sum to 4, but TransposedMap has 6"):
        declare_packed(module, [2, 2], transposed=True)
