"""Every parameter trained: attention projections, embeddings, functional maps, the rest.

The Kronecker blocks that are not plain ``Linear``/``Conv`` modules are checked against
the dense re-implementation run on an equivalent model made of ``Linear``/``Conv``
modules only: an attention computed with explicit query, key, value and output
``Linear`` layers; an embedding as a bias-free ``Linear`` on one-hot inputs (whose
``K`` is diagonal); a custom module's ``functional.linear`` weight as an
``nn.Linear``. The element-wise rule is checked against its formula.
"""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional

from singd_opt import SINGD
from tests.optim.dense_reference_impl import DenseSINGD, single_intra_op_thread

DTYPE = torch.float64
RTOL, ATOL = 1e-10, 1e-12
STEPS = 5
CONFIG = {"T": 1, "lr": 0.05, "lr_cov": 0.1, "damping": 0.1, "alpha1": 0.5, "momentum": 0.9}


@pytest.fixture(autouse=True)
def _one_thread():
    with single_intra_op_thread():
        yield


def assert_close(actual: Tensor, expected: Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, msg=what)


# ----------------------------------------------------------------- attention
class Attention(nn.Module):
    """``nn.MultiheadAttention`` followed by a head; inputs batch-first (converted if not)."""

    def __init__(self, embed: int, heads: int, kdim: int | None, batch_first: bool) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.attn = nn.MultiheadAttention(
            embed, heads, kdim=kdim, vdim=kdim, batch_first=batch_first
        )
        self.head = nn.Linear(embed, 3)

    def forward(self, x: Tensor, memory: Tensor | None) -> Tensor:
        if not self.batch_first:
            x = x.transpose(0, 1)
            memory = memory.transpose(0, 1) if memory is not None else None
        source = x if memory is None else memory
        out, _ = self.attn(x, source, source, need_weights=False)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return self.head(torch.tanh(out)).mean(dim=1)


class ExplicitAttention(nn.Module):
    """The same attention with explicit ``Linear`` projections (batch-first)."""

    def __init__(self, model: Attention) -> None:
        super().__init__()
        attn = model.attn
        embed, kdim = attn.embed_dim, attn.kdim
        self.heads = attn.num_heads
        self.q = nn.Linear(embed, embed)
        self.k = nn.Linear(kdim, embed)
        self.v = nn.Linear(kdim, embed)
        self.out = nn.Linear(embed, embed)
        self.head = copy.deepcopy(model.head)
        with torch.no_grad():
            if attn.in_proj_weight is not None:
                weights = attn.in_proj_weight.chunk(3)
            else:
                weights = (attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight)
            for layer, weight, bias in zip(
                (self.q, self.k, self.v), weights, attn.in_proj_bias.chunk(3), strict=True
            ):
                layer.weight.copy_(weight)
                layer.bias.copy_(bias)
            self.out.weight.copy_(attn.out_proj.weight)
            self.out.bias.copy_(attn.out_proj.bias)

    def forward(self, x: Tensor, memory: Tensor | None) -> Tensor:
        source = x if memory is None else memory

        def split(t: Tensor) -> Tensor:  # (N, L, E) -> (N, H, L, E / H)
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(source)), split(self.v(source))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        out = self.out((weights @ v).transpose(1, 2).flatten(2))
        return self.head(torch.tanh(out)).mean(dim=1)


def explicit_attention_params(model: Attention) -> dict[str, Tensor]:
    attn = model.attn
    if attn.in_proj_weight is not None:
        q, k, v = attn.in_proj_weight.chunk(3)
    else:
        q, k, v = attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight
    bq, bk, bv = attn.in_proj_bias.chunk(3)
    return {
        "q.weight": q,
        "k.weight": k,
        "v.weight": v,
        "q.bias": bq,
        "k.bias": bk,
        "v.bias": bv,
        "out.weight": attn.out_proj.weight,
        "out.bias": attn.out_proj.bias,
        "head.weight": model.head.weight,
        "head.bias": model.head.bias,
    }


ATTENTION_CASES = [
    # (kdim, cross-attention, batch_first)
    (None, False, True),  # packed self-attention: one functional call for q, k, v
    (None, True, True),  # packed cross-attention: rows [0, E) and [E, 3E)
    (None, False, False),  # sequence-first layout inside and outside
    (6, True, True),  # separate q/k/v weights
]


@pytest.mark.parametrize(("kdim", "cross", "batch_first"), ATTENTION_CASES)
@pytest.mark.parametrize(
    ("loss_average", "kfac_approx", "structures"),
    [
        ("batch", "expand", ("dense", "dense")),
        ("batch+sequence", "reduce", ("diagonal", "hierarchical3_2")),
    ],
)
def test_attention_projections_equal_explicit_linear_layers(
    kdim: int | None,
    cross: bool,
    batch_first: bool,
    loss_average: str,
    kfac_approx: str,
    structures: tuple[str, str],
) -> None:
    torch.manual_seed(0)
    model = Attention(8, 2, kdim, batch_first).to(DTYPE)
    explicit = ExplicitAttention(model).to(DTYPE)
    config = {
        **CONFIG,
        "loss_average": loss_average,
        "kfac_approx": kfac_approx,
        "structures": structures,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer = SINGD(
            model, **{"defaults": "reference", "train_all_parameters": True, **config}
        )
    reference = DenseSINGD(explicit, **config)
    names = {
        "q": "attn.q_proj",
        "k": "attn.k_proj",
        "v": "attn.v_proj",
        "out": "attn.out_proj",
        "head": "head",
    }
    assert set(optimizer.Ks) == set(names.values())
    generator = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        x = torch.randn(4, 5, 8, dtype=DTYPE, generator=generator)
        memory = torch.randn(4, 7, kdim or 8, dtype=DTYPE, generator=generator) if cross else None
        y = torch.randn(4, 3, dtype=DTYPE, generator=generator)
        for net, opt in ((model, optimizer), (explicit, reference)):
            opt.zero_grad()
            functional.mse_loss(net(x, memory), y).backward()
            opt.step()
        expected = dict(explicit.named_parameters())
        for name, param in explicit_attention_params(model).items():
            assert_close(param, expected[name], f"step {step}, {name}")
        for short, name in names.items():
            assert_close(optimizer.Ks[name].to_dense(), reference.K[short], f"step {step} K {name}")
            assert_close(optimizer.Cs[name].to_dense(), reference.C[short], f"step {step} C {name}")


# ----------------------------------------------------------------- embedding
class Embedder(nn.Module):
    def __init__(self, vocabulary: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(torch.tanh(self.embed(tokens))).mean(dim=1)


class OneHotEmbedder(nn.Module):
    """The same map with a bias-free ``Linear`` on one-hot inputs."""

    def __init__(self, model: Embedder) -> None:
        super().__init__()
        vocabulary, dim = model.embed.weight.shape
        self.embed = nn.Linear(vocabulary, dim, bias=False)
        self.head = copy.deepcopy(model.head)
        with torch.no_grad():
            self.embed.weight.copy_(model.embed.weight.T)

    def forward(self, tokens: Tensor) -> Tensor:
        one_hot = functional.one_hot(tokens, self.embed.in_features).to(self.embed.weight.dtype)
        return self.head(torch.tanh(self.embed(one_hot))).mean(dim=1)


@pytest.mark.parametrize(
    ("loss_average", "kfac_approx", "structure_C"),
    [
        ("batch", "expand", "dense"),
        ("batch+sequence", "reduce", "triltoeplitz"),
        (None, "expand", "block3diagonal"),
    ],
)
def test_embedding_equals_linear_on_one_hot_inputs_with_diagonal_K(
    loss_average: str | None, kfac_approx: str, structure_C: str
) -> None:
    torch.manual_seed(0)
    model = Embedder(11, 6).to(DTYPE)
    one_hot = OneHotEmbedder(model).to(DTYPE)
    config = {
        **CONFIG,
        "loss_average": loss_average,
        "kfac_approx": kfac_approx,
        "structures": ("dense", structure_C),
    }
    if loss_average is None:
        config["lr"] = 0.005
    optimizer = SINGD(model, **{"defaults": "reference", "train_all_parameters": True, **config})
    reference = DenseSINGD(one_hot, **config, layer_structures={"embed": ("diagonal", structure_C)})
    assert optimizer.blocks[0].structures == ("diagonal", structure_C)
    generator = torch.Generator().manual_seed(2)
    for step in range(STEPS):
        tokens = torch.randint(0, 11, (5, 4), generator=generator)  # some tokens are missing
        y = torch.randn(5, 2, dtype=DTYPE, generator=generator)
        for net, opt in ((model, optimizer), (one_hot, reference)):
            opt.zero_grad()
            functional.mse_loss(
                net(tokens), y, reduction="sum" if loss_average is None else "mean"
            ).backward()
            opt.step()
        assert_close(model.embed.weight, one_hot.embed.weight.T, f"step {step} weight")
        assert_close(optimizer.Ks["embed"].to_dense(), reference.K["embed"], f"step {step} K")
        assert_close(optimizer.Cs["embed"].to_dense(), reference.C["embed"], f"step {step} C")


def test_sparse_embedding_is_rejected() -> None:
    model = nn.Sequential(nn.Embedding(5, 3, sparse=True), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="sparse=True"):
        SINGD(model, defaults="reference", train_all_parameters=True)


# ------------------------------------------------------------ functional maps
class FunctionalMaps(nn.Module):
    """A convolution and a linear map called through ``torch.nn.functional``."""

    def __init__(self) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.randn(4, 2, 3, 3) / 4)
        self.matrix = nn.Parameter(torch.randn(3, 4 * 3 * 3) / 6)
        self.position = nn.Parameter(torch.zeros(1, 2, 5, 5))  # added: element-wise

    def forward(self, x: Tensor) -> Tensor:
        h = functional.conv2d(x + self.position, self.kernel, stride=2, padding=1)
        return functional.linear(torch.tanh(h).flatten(1), self.matrix)


class ModuleMaps(nn.Module):
    def __init__(self, model: FunctionalMaps) -> None:
        super().__init__()
        self.kernel = nn.Conv2d(2, 4, 3, stride=2, padding=1, bias=False)
        self.matrix = nn.Linear(36, 3, bias=False)
        with torch.no_grad():
            self.kernel.weight.copy_(model.kernel)
            self.matrix.weight.copy_(model.matrix)

    def forward(self, x: Tensor) -> Tensor:
        return self.matrix(torch.tanh(self.kernel(x)).flatten(1))


def test_functional_weights_become_kronecker_blocks_at_their_first_call() -> None:
    torch.manual_seed(0)
    model = FunctionalMaps().to(DTYPE)
    modules = ModuleMaps(model).to(DTYPE)
    with torch.no_grad():
        model.position.zero_()
    model.position.requires_grad_(False)  # keep the two models' inputs equal
    optimizer = SINGD(model, **{"defaults": "reference", "train_all_parameters": True, **CONFIG})
    assert [b.kind for b in optimizer.blocks] == ["deferred", "deferred"]
    reference = DenseSINGD(modules, **CONFIG)
    generator = torch.Generator().manual_seed(3)
    for step in range(STEPS):
        x = torch.randn(4, 2, 5, 5, dtype=DTYPE, generator=generator)
        y = torch.randn(4, 3, dtype=DTYPE, generator=generator)
        for net, opt in ((model, optimizer), (modules, reference)):
            opt.zero_grad()
            functional.mse_loss(net(x), y).backward()
            opt.step()
        assert_close(model.kernel, modules.kernel.weight, f"step {step} kernel")
        assert_close(model.matrix, modules.matrix.weight, f"step {step} matrix")
        for name in ("kernel", "matrix"):
            assert_close(optimizer.Ks[name].to_dense(), reference.K[name], f"step {step} K")
            assert_close(optimizer.Cs[name].to_dense(), reference.C[name], f"step {step} C")
    assert [b.kind for b in optimizer.blocks] == ["kronecker", "kronecker"]


def test_unused_deferred_parameter_becomes_elementwise() -> None:
    model = FunctionalMaps().to(DTYPE)
    optimizer = SINGD(model, **{"defaults": "reference", "train_all_parameters": True, **CONFIG})
    kinds = {block.name: block.kind for block in optimizer.blocks}
    assert kinds["position"] == "deferred"
    x = torch.randn(4, 2, 5, 5, dtype=DTYPE)
    functional.mse_loss(model(x), torch.zeros(4, 3, dtype=DTYPE)).backward()
    before = model.position.detach().clone()
    optimizer.step()
    kinds = {block.name: block.kind for block in optimizer.blocks}
    assert kinds == {"kernel": "kronecker", "matrix": "kronecker", "position": "elementwise"}
    assert not torch.equal(model.position, before)


# ------------------------------------------------------------ element-wise rule
def test_elementwise_rule_follows_its_formula() -> None:
    torch.manual_seed(0)
    norm = nn.LayerNorm(4).to(DTYPE)
    lr, elementwise_lr, momentum, decay, beta, eps = 0.01, 0.003, 0.8, 0.1, 0.9, 1e-6
    optimizer = SINGD(
        norm,
        lr=lr,
        momentum=momentum,
        weight_decay=decay,
        elementwise_lr=elementwise_lr,
        elementwise_beta2=beta,
        elementwise_eps=eps,
        defaults="reference",
        train_all_parameters=True,
    )
    expected = [p.detach().clone() for p in norm.parameters()]
    second = [torch.zeros_like(p) for p in expected]
    buffers: list[Tensor | None] = [None, None]
    for step in range(1, 6):
        x = torch.randn(3, 4, dtype=DTYPE)
        optimizer.zero_grad()
        norm(x).sin().sum().backward()
        grads = [p.grad.clone() for p in norm.parameters()]
        optimizer.step()
        for i, grad in enumerate(grads):
            second[i] = beta * second[i] + (1 - beta) * grad**2
            direction = grad / ((second[i] / (1 - beta**step)).sqrt() + eps)
            update = direction + decay * expected[i]
            buffers[i] = update if buffers[i] is None else momentum * buffers[i] + update
            expected[i] = expected[i] - elementwise_lr * buffers[i]
        for param, value in zip(norm.parameters(), expected, strict=True):
            assert_close(param, value, f"step {step}")


# ---------------------------------------------------------------- transformer
class TinyLM(nn.Module):
    def __init__(self, vocabulary: int = 13, dim: int = 8, length: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, dim)
        self.position = nn.Parameter(torch.zeros(length, dim))
        self.block = nn.TransformerEncoderLayer(dim, 2, 16, dropout=0.0, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocabulary)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        return self.head(self.norm(self.block(h, src_mask=mask, is_causal=True)))


def test_transformer_trains_and_preconditions_every_parameter() -> None:
    """The one element-wise matrix (a position table added to the tokens) is reported."""
    torch.manual_seed(0)
    model = TinyLM()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer = SINGD(
            model,
            lr=0.01,
            lr_cov=0.05,
            damping=0.1,
            T=2,
            defaults="reference",
            train_all_parameters=True,
        )
        tokens = torch.randint(0, 13, (8, 7))
        losses = []
        for _ in range(6):
            optimizer.zero_grad()
            logits = model(tokens[:, :-1])
            loss = functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "'position' is used by Tensor.add" in messages[0]
    assert losses[-1] < losses[0]
    for name, param in model.named_parameters():
        assert not torch.equal(param, before[name]), name
    kronecker = {
        "embed",
        "head",
        "block.linear1",
        "block.linear2",
        "block.self_attn.q_proj",
        "block.self_attn.k_proj",
        "block.self_attn.v_proj",
        "block.self_attn.out_proj",
    }
    assert set(optimizer.Ks) == kronecker
    for name in kronecker:
        for factor in (optimizer.Ks[name], optimizer.Cs[name]):
            assert not torch.equal(factor.to_dense(), torch.eye(factor.shape[0])), name
    covered = {id(rows.param) for block in optimizer.blocks for rows in block.params}
    assert covered == {id(p) for p in model.parameters()}
    table = optimizer.describe()
    for block in optimizer.blocks:
        assert block.name in table
    assert table.splitlines()[-1].startswith("total")


def test_transformer_checkpoint_resumes_bitwise() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = SINGD(
        model,
        lr=0.01,
        lr_cov=0.05,
        damping=0.1,
        T=2,
        defaults="reference",
        train_all_parameters=True,
    )
    tokens = torch.randint(0, 13, (6, 7))

    def step(net: nn.Module, opt: SINGD) -> None:
        opt.zero_grad()
        logits = net(tokens[:, :-1])
        functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).backward()
        opt.step()

    for _ in range(3):
        step(model, optimizer)
    resumed = copy.deepcopy(model)  # copies the first optimizer's hooks, which must ignore it
    resumed_opt = SINGD(
        resumed,
        lr=0.01,
        lr_cov=0.05,
        damping=0.1,
        T=2,
        defaults="reference",
        train_all_parameters=True,
    )
    resumed_opt.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for _ in range(3):
        step(model, optimizer)
        step(resumed, resumed_opt)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)


# --------------------------------------------------------- two optimizers
def test_a_second_optimizer_on_the_same_parameters_is_reported() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    optimizer = SINGD(model, defaults="reference", train_all_parameters=True)
    other = torch.optim.AdamW(model[1].parameters(), lr=1e-3)  # the reference-style pairing
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    with pytest.warns(UserWarning, match=r"\['1.bias', '1.weight'\] were changed in place"):
        for _ in range(4):
            optimizer.zero_grad()
            other.zero_grad()
            functional.mse_loss(model(x), y).backward()
            optimizer.step()
            other.step()


def test_loading_the_model_once_is_not_reported() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2))
    optimizer = SINGD(model, defaults="reference", train_all_parameters=True)
    snapshot = copy.deepcopy(model.state_dict())
    x, y = torch.randn(8, 4), torch.randn(8, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(4):
            if step == 2:
                model.load_state_dict(snapshot)
            optimizer.zero_grad()
            functional.mse_loss(model(x), y).backward()
            optimizer.step()


def test_recurrent_layers_train_with_the_elementwise_rule() -> None:
    """An LSTM's weights are used by a fused kernel, not a functional linear map."""

    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(4, 6, batch_first=True)
            self.head = nn.Linear(6, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.lstm(x)[0][:, -1])

    torch.manual_seed(0)
    model = Recurrent()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer = SINGD(model, lr=0.01, T=1, defaults="reference", train_all_parameters=True)
        for _ in range(3):
            optimizer.zero_grad()
            functional.mse_loss(model(torch.randn(5, 3, 4)), torch.randn(5, 2)).backward()
            optimizer.step()
    # each weight matrix falls back with a warning naming it (the fused kernel takes the
    # weights as a list, which no torch function override sees)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2, messages
    for message, name in zip(messages, ("lstm.weight_hh_l0", "lstm.weight_ih_l0"), strict=True):
        assert f"parameter {name!r} was not used as the matrix of a linear map" in message
    kinds = {block.name: block.kind for block in optimizer.blocks}
    assert kinds["head"] == "kronecker"
    assert all(kind == "elementwise" for name, kind in kinds.items() if name.startswith("lstm"))
    for name, param in model.named_parameters():
        assert not torch.equal(param, before[name]), name
