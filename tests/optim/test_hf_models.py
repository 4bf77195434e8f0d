"""Real models (Hugging Face ``transformers``, built from small configs, no downloads).

Every weight matrix of their transformer blocks, and the embeddings (tied to the output
layer or not), get a Kronecker block; nothing falls back without a warning; and
GPT-2's ``Conv1D`` (``torch.addmm`` with a ``(d_in, d_out)`` weight) trains exactly
like an ``nn.Linear`` holding the transposed weight.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from singd_opt import SINGD

transformers = pytest.importorskip("transformers")

VOCABULARY, WIDTH = 48, 16
QKV = ("query", "key", "value")
#: The sizes of the small models built from configs with these argument names.
SMALL = {
    "vocab_size": VOCABULARY,
    "hidden_size": WIDTH,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 2 * WIDTH,
    "max_position_embeddings": 16,
}
#: The same for the configs of GPT-2's naming.
SMALL_GPT = {"vocab_size": VOCABULARY, "n_positions": 16, "n_embd": WIDTH, "n_head": 2}


def gpt2() -> nn.Module:
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL_GPT, n_layer=2))


def llama() -> nn.Module:
    config = transformers.LlamaConfig(
        vocab_size=VOCABULARY,
        hidden_size=WIDTH,
        intermediate_size=2 * WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=16,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(config)


def bert() -> nn.Module:
    return transformers.BertForMaskedLM(transformers.BertConfig(**SMALL))


MODELS: dict[str, tuple[Callable[[], nn.Module], str, str]] = {
    # builder, the container of the transformer blocks, the tied pair
    "gpt2": (gpt2, "transformer.h.", "transformer.wte+lm_head"),
    "llama": (llama, "model.layers.", "model.embed_tokens+lm_head"),
    "bert": (
        bert,
        "bert.encoder.layer.",
        "bert.embeddings.word_embeddings+cls.predictions.decoder",
    ),
}


def _train(model: nn.Module, optimizer: SINGD, steps: int, same_batch: bool = False) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCABULARY, (2, 8), generator=generator)
    losses = []
    for _ in range(steps):
        if not same_batch:
            ids = torch.randint(0, VOCABULARY, (2, 8), generator=generator)
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _trained(
    name: str, steps: int, same_batch: bool, **options: Any
) -> tuple[nn.Module, SINGD, list[float], list[str]]:
    """Build the model, train it with ``SINGD(model, lr=1e-3, **options)``.

    The models are small (width 16): ``elementwise_below=0`` (unless ``options`` say
    otherwise) gives every map a Kronecker block.

    Returns the model, the optimizer, the losses and the optimizer's warnings about
    parameters or curvature (a fallback warns, naming the parameter).
    """
    torch.manual_seed(0)
    model = MODELS[name][0]()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        optimizer = SINGD(model, lr=1e-3, **{"elementwise_below": 0, **options})
        losses = _train(model, optimizer, steps=steps, same_batch=same_batch)
    ours = [str(w.message) for w in caught if "parameter" in str(w.message)]
    ours += [str(w.message) for w in caught if "curvature" in str(w.message)]
    return model, optimizer, losses, ours


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_weight_matrix_gets_a_kronecker_block(name: str) -> None:
    _, blocks_prefix, tied = MODELS[name]
    model, optimizer, _, ours = _trained(name, 2, False, T=1, tied_embeddings="kronecker")
    assert ours == []  # nothing fell back (a fallback warns, naming the parameter)
    kronecker = {
        id(rows.param)
        for block in optimizer.blocks
        if block.kind == "kronecker"
        for rows in block.params
    }
    in_blocks = [p for n, p in model.named_parameters() if n.startswith(blocks_prefix)]
    matrices = [p for p in in_blocks if p.ndim >= 2]
    assert len(matrices) >= 8 and all(id(p) in kronecker for p in matrices)
    missing = [n for n, p in model.named_parameters() if p.ndim >= 2 and id(p) not in kronecker]
    assert missing == []
    total = sum(p.numel() for p in model.parameters())
    covered = sum(p.numel() for p in model.parameters() if id(p) in kronecker)
    assert covered / total >= 0.95, covered / total
    assert tied in optimizer.Ks  # input and output embedding share one block
    assert optimizer.Ks[tied].shape[0] == VOCABULARY
    assert type(optimizer.Ks[tied]).__name__ == "Diagonal"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_tied_embeddings_take_the_elementwise_rule_by_default(name: str) -> None:
    tied = MODELS[name][2]
    model, optimizer, losses, ours = _trained(name, 3, True)
    assert ours == []
    assert losses[-1] < losses[0]
    embedding = model.get_input_embeddings().weight
    assert embedding is model.get_output_embeddings().weight
    (owner,) = [b for b in optimizer.blocks if any(r.param is embedding for r in b.params)]
    assert owner.kind == "elementwise"
    assert tied not in optimizer.Ks
    # every other weight matrix keeps its Kronecker block
    others = [p for p in model.parameters() if p.ndim >= 2 and p is not embedding]
    kinds = {id(rows.param): block.kind for block in optimizer.blocks for rows in block.params}
    assert others and all(kinds[id(p)] == "kronecker" for p in others)


def _assert_same_factors(optimizer: SINGD, twin: SINGD, names: dict[str, str]) -> None:
    """``K`` and ``C`` of each block of ``optimizer`` equal the twin's block of that name."""
    for ours, theirs in names.items():
        for factors, twin_factors in ((optimizer.Ks, twin.Ks), (optimizer.Cs, twin.Cs)):
            torch.testing.assert_close(
                factors[ours].to_dense(), twin_factors[theirs].to_dense(), rtol=1e-12, atol=1e-12
            )


def _train_twins(
    model: nn.Module, twin: nn.Module, same_batch: bool = False
) -> tuple[SINGD, SINGD]:
    """Train both with the defaults; the losses fall and agree to 1e-12. Returns the optimizers."""
    optimizer, twin_optimizer = (
        SINGD(model, lr=3e-3, elementwise_below=0),
        SINGD(twin, lr=3e-3, elementwise_below=0),
    )
    with torch.enable_grad():
        losses = _train(model, optimizer, steps=4, same_batch=same_batch)
        twin_losses = _train(twin, twin_optimizer, steps=4, same_batch=same_batch)
    assert losses[-1] < losses[0]
    torch.testing.assert_close(losses, twin_losses, rtol=1e-12, atol=1e-12)
    return optimizer, twin_optimizer


def _linear_twin(model: nn.Module) -> nn.Module:
    """The model with every ``Conv1D`` replaced by an ``nn.Linear`` of the transposed weight."""
    from transformers.pytorch_utils import Conv1D

    for name, module in list(model.named_modules()):
        if isinstance(module, Conv1D):
            linear = nn.Linear(*module.weight.shape, dtype=module.weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(module.weight.T)
                linear.bias.copy_(module.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model


def test_gpt2_conv1d_trains_like_its_linear_twin() -> None:
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    model = gpt2().to(torch.float64).eval()  # eval: no dropout
    twin = gpt2().to(torch.float64).eval()
    twin.load_state_dict(model.state_dict())
    twin = _linear_twin(twin)
    assert not any(isinstance(m, Conv1D) for m in twin.modules())
    config = {"lr": 0.05, "lr_cov": 0.1, "damping": 1e-3, "T": 2, "loss_average": "batch"}
    optimizer, twin_optimizer = (
        SINGD(model, **config, elementwise_below=0),
        SINGD(twin, **config, elementwise_below=0),
    )
    with torch.enable_grad():
        losses = _train(model, optimizer, steps=4, same_batch=True)
        twin_losses = _train(twin, twin_optimizer, steps=4, same_batch=True)
    assert losses[-1] < losses[0]
    torch.testing.assert_close(losses, twin_losses, rtol=1e-12, atol=1e-12)
    conv_blocks = 0
    for name, module in model.named_modules():
        if isinstance(module, Conv1D):
            linear = twin.get_submodule(name)
            torch.testing.assert_close(module.weight.T, linear.weight, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(module.bias, linear.bias, rtol=1e-12, atol=1e-12)
            # the packed query/key/value map is one block per projection in both models
            parts = [".query", ".key", ".value"] if name.endswith("c_attn") else [""]
            for part in parts:
                ours = name + part if part else f"{name}.weight"
                _assert_same_factors(optimizer, twin_optimizer, {ours: name + part})
                conv_blocks += 1
    assert conv_blocks == 12  # c_attn (3 projections), c_proj, c_fc, mlp.c_proj in two blocks


class _SeparateProjections(nn.Module):
    """GPT-2's packed ``c_attn`` as three ``Conv1D`` layers holding its columns."""

    def __init__(self, packed: nn.Module) -> None:
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        d_in, d_out = packed.weight.shape
        size = d_out // 3
        self.projections = nn.ModuleList()
        for i in range(3):
            layer = Conv1D(size, d_in).to(packed.weight.dtype)
            with torch.no_grad():
                layer.weight.copy_(packed.weight[:, i * size : (i + 1) * size])
                layer.bias.copy_(packed.bias[i * size : (i + 1) * size])
            self.projections.append(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([layer(x) for layer in self.projections], dim=-1)


def test_gpt2_packed_attention_trains_like_three_separate_projections() -> None:
    torch.manual_seed(0)
    model = gpt2().to(torch.float64).eval()  # eval: no dropout
    twin = gpt2().to(torch.float64).eval()
    twin.load_state_dict(model.state_dict())
    for block in twin.transformer.h:
        block.attn.c_attn = _SeparateProjections(block.attn.c_attn)
    optimizer, twin_optimizer = _train_twins(model, twin)
    for i, block in enumerate(model.transformer.h):
        name = f"transformer.h.{i}.attn.c_attn"
        for j, part in enumerate(("query", "key", "value")):
            layer = twin.transformer.h[i].attn.c_attn.projections[j]
            columns = slice(j * WIDTH, (j + 1) * WIDTH)
            torch.testing.assert_close(block.attn.c_attn.weight[:, columns], layer.weight)
            torch.testing.assert_close(block.attn.c_attn.bias[columns], layer.bias)
            names = {f"{name}.{part}": f"{name}.projections.{j}.weight"}
            _assert_same_factors(optimizer, twin_optimizer, names)
    whole = SINGD(model, lr=3e-3, packed_projections="whole", elementwise_below=0)
    assert "transformer.h.0.attn.c_attn.weight" in {block.name for block in whole.blocks}


@pytest.mark.parametrize("below", [600, 800])
def test_gpt2_small_maps_train_elementwise(below: int) -> None:
    """``c_attn`` has 768 weights, the attention's ``c_proj`` 256, the MLP's maps 1024."""
    torch.manual_seed(0)
    model = gpt2()
    optimizer = SINGD(model, lr=1e-3, elementwise_below=below)
    tokens = torch.randint(0, VOCABULARY, (2, 8))
    model(tokens, labels=tokens).loss.backward()
    optimizer.step()
    kronecker = {block.name for block in optimizer.blocks if block.kind == "kronecker"}
    mlp = {f"transformer.h.{i}.mlp.{name}.weight" for i in range(2) for name in ("c_fc", "c_proj")}
    packed = {f"transformer.h.{i}.attn.c_attn.{part}" for i in range(2) for part in QKV}
    assert kronecker == (packed | mlp if below == 600 else mlp)
    elementwise = {block.name for block in optimizer.blocks if block.kind == "elementwise"}
    for i in range(2):
        assert {f"transformer.h.{i}.attn.c_proj.{n}" for n in ("weight", "bias")} <= elementwise
        packed_params = {f"transformer.h.{i}.attn.c_attn.{n}" for n in ("weight", "bias")}
        assert packed_params <= elementwise or below == 600


def test_gpt2_cross_attention_splits_key_and_value() -> None:
    config = transformers.GPT2Config(**SMALL_GPT, n_layer=1, add_cross_attention=True)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    optimizer = SINGD(model, lr=1e-3, elementwise_below=0)
    names = {block.name for block in optimizer.blocks}
    cross = "transformer.h.0.crossattention."
    assert {cross + "c_attn.key", cross + "c_attn.value", cross + "q_attn.weight"} <= names
    assert {f"transformer.h.0.attn.c_attn.{p}" for p in ("query", "key", "value")} <= names
    ids = torch.randint(0, VOCABULARY, (2, 8))
    encoded = torch.randn(2, 5, WIDTH)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback, no curvature warning
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids, encoder_hidden_states=encoded).loss.backward()
        optimizer.step()
    assert not torch.equal(
        before[cross + "c_attn.weight"], model.get_parameter(cross + "c_attn.weight")
    )
    key = optimizer.Ks[cross + "c_attn.key"].to_dense()
    assert torch.isfinite(key).all() and not torch.equal(key, torch.eye(WIDTH + 1))


def _phi3_and_llama_twin() -> tuple[nn.Module, nn.Module]:
    """A Phi-3 model and a Llama model with its fused projections as separate layers."""
    common = {
        "vocab_size": VOCABULARY,
        "hidden_size": WIDTH,
        "intermediate_size": 2 * WIDTH,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 16,
        "tie_word_embeddings": False,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    torch.manual_seed(0)
    phi3 = transformers.Phi3ForCausalLM(transformers.Phi3Config(**common))
    llama = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**common, rms_norm_eps=phi3.config.rms_norm_eps)
    )
    query, key = 4 * (WIDTH // 4), 2 * (WIDTH // 4)
    state = {}
    for name, value in phi3.state_dict().items():
        if "qkv_proj" in name:
            parts = {"q_proj": value[:query], "k_proj": value[query : query + key]}
            parts["v_proj"] = value[query + key :]
        elif "gate_up_proj" in name:
            parts = {"gate_proj": value[: 2 * WIDTH], "up_proj": value[2 * WIDTH :]}
        else:
            state[name] = value
            continue
        for projection, rows in parts.items():
            state[name.replace(name.split(".")[-2], projection)] = rows
    llama.load_state_dict(state)
    return phi3.to(torch.float64).eval(), llama.to(torch.float64).eval()


def test_phi3_fused_projections_train_like_separate_ones() -> None:
    phi3, llama = _phi3_and_llama_twin()
    ids = torch.randint(0, VOCABULARY, (2, 8))
    torch.testing.assert_close(phi3(ids).logits, llama(ids).logits)  # the same function
    optimizer, twin_optimizer = _train_twins(phi3, llama)
    pairs = {"self_attn.qkv_proj.query": "self_attn.q_proj"}
    pairs |= {"self_attn.qkv_proj.key": "self_attn.k_proj"}
    pairs |= {"self_attn.qkv_proj.value": "self_attn.v_proj"}
    pairs |= {"mlp.gate_up_proj.gate": "mlp.gate_proj", "mlp.gate_up_proj.up": "mlp.up_proj"}
    for layer in range(2):
        prefix = f"model.layers.{layer}."
        names = {prefix + ours: prefix + theirs for ours, theirs in pairs.items()}
        _assert_same_factors(optimizer, twin_optimizer, names)


class _GroupedProjections(nn.Module):
    """A packed ``nn.Linear`` as one ``nn.Linear`` per projection.

    The packed outputs are ``groups`` equal groups, each holding ``sizes[j]`` outputs of
    projection ``j`` in turn (one group: the projections one after the other); the
    twin recomputes that layout from the separate layers.
    """

    def __init__(self, packed: nn.Linear, groups: int, sizes: list[int]) -> None:
        super().__init__()
        self.groups = groups
        self.projections = nn.ModuleList()
        group = sum(sizes)
        for j, size in enumerate(sizes):
            offset = sum(sizes[:j])
            rows = [g * group + offset + i for g in range(groups) for i in range(size)]
            bias = packed.bias is not None
            layer = nn.Linear(packed.in_features, groups * size, bias=bias)
            layer = layer.to(packed.weight.dtype)
            with torch.no_grad():
                layer.weight.copy_(packed.weight[rows])
                if bias:
                    layer.bias.copy_(packed.bias[rows])
            self.projections.append(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [layer(x).unflatten(-1, (self.groups, -1)) for layer in self.projections]
        return torch.cat(parts, dim=-1).flatten(-2)


def _per_head(packed: nn.Linear, heads: int) -> nn.Module:
    """Query, key and value of each of ``heads`` heads in turn, as three layers."""
    return _GroupedProjections(packed, heads, [packed.out_features // (3 * heads)] * 3)


def _check_against_separate_projections(
    model: nn.Module, layers: str, path: str, separate: Callable[[nn.Linear], nn.Module]
) -> None:
    """``model`` trains like a copy whose packed query/key/value maps are separate layers.

    The map ``<layers>.<i>.<path>`` of every layer is replaced in the copy by
    ``separate(map)`` (projections ``0, 1, 2``); both compute the same function, and
    losses, ``K`` and ``C`` agree to 1e-12 in float64.
    """
    torch.manual_seed(0)
    model = model.to(torch.float64).eval()
    twin = copy.deepcopy(model)
    owner_path, _, attribute = path.rpartition(".")
    for layer in twin.get_submodule(layers):
        owner = layer.get_submodule(owner_path)
        setattr(owner, attribute, separate(getattr(owner, attribute)))
    ids = torch.randint(0, VOCABULARY, (2, 8))
    torch.testing.assert_close(model(ids).logits, twin(ids).logits)  # the same function
    optimizer, twin_optimizer = _train_twins(model, twin, same_batch=True)
    for i in range(len(twin.get_submodule(layers))):
        name = f"{layers}.{i}.{path}"
        names = {f"{name}.{p}": f"{name}.projections.{j}" for j, p in enumerate(QKV)}
        _assert_same_factors(optimizer, twin_optimizer, names)


def _per_head_models() -> dict[str, tuple[Callable[[], nn.Module], str, str]]:
    """Builders of models whose ``query_key_value`` interleaves the heads, the layers' path."""
    bloom = transformers.BloomConfig(vocab_size=VOCABULARY, hidden_size=WIDTH, n_layer=2, n_head=2)
    return {
        "gpt_neox": (
            lambda: transformers.GPTNeoXForCausalLM(
                transformers.GPTNeoXConfig(**SMALL, attention_bias=True)
            ),
            "gpt_neox.layers",
            "attention",
        ),
        "bloom": (lambda: transformers.BloomForCausalLM(bloom), "transformer.h", "self_attention"),
        "persimmon": (
            lambda: transformers.PersimmonForCausalLM(transformers.PersimmonConfig(**SMALL)),
            "model.layers",
            "self_attn",
        ),
    }


@pytest.mark.parametrize("family", ["gpt_neox", "bloom", "persimmon"])
def test_per_head_projections_train_like_separate_ones(family: str) -> None:
    build, layers, attention = _per_head_models()[family]
    torch.manual_seed(0)
    _check_against_separate_projections(
        build(), layers, f"{attention}.query_key_value", lambda packed: _per_head(packed, 2)
    )


def test_glm_gated_mlp_splits_gate_and_up() -> None:
    config = transformers.GlmConfig(
        **SMALL, num_key_value_heads=1, head_dim=WIDTH // 2, pad_token_id=0, eos_token_id=1
    )
    optimizer = SINGD(transformers.GlmForCausalLM(config), lr=1e-3, elementwise_below=0)
    names = {block.name for block in optimizer.blocks}
    assert {"model.layers.0.mlp.gate_up_proj.gate", "model.layers.0.mlp.gate_up_proj.up"} <= names


def test_a_fused_map_of_unknown_layout_keeps_one_block() -> None:
    """CodeGen's ``qkv_proj`` (its own interleaving) is not guessed at."""
    config = transformers.CodeGenConfig(**SMALL_GPT, n_layer=1, rotary_dim=4)
    optimizer = SINGD(transformers.CodeGenForCausalLM(config), lr=1e-3, elementwise_below=0)
    names = {block.name for block in optimizer.blocks}
    qkv = "transformer.h.0.attn.qkv_proj"
    assert qkv in names and not any(name.startswith(qkv + ".") for name in names)


@pytest.mark.parametrize(
    ("layout", "options", "groups", "sizes"),
    [
        # query, key, value of each head in turn
        ("per-head", {"multi_query": False}, 4, [4, 4, 4]),
        # the query heads, then one key and one value head
        ("multi-query", {"multi_query": True}, 1, [16, 4, 4]),
        # 2 groups of 2 query heads, the group's key and value
        ("grouped", {"new_decoder_architecture": True, "num_kv_heads": 2}, 2, [8, 4, 4]),
    ],
)
def test_falcon_projections_train_like_separate_ones(
    layout: str, options: dict[str, Any], groups: int, sizes: list[int]
) -> None:
    config = transformers.FalconConfig(
        vocab_size=VOCABULARY,
        hidden_size=WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        bias=True,
        **options,
    )
    torch.manual_seed(0)
    _check_against_separate_projections(
        transformers.FalconForCausalLM(config),
        "transformer.h",
        "self_attention.query_key_value",
        lambda packed: _GroupedProjections(packed, groups, sizes),
    )


@pytest.mark.parametrize("multi_query", [True, False], ids=["multi-query", "per-head"])
def test_gpt_bigcode_projections_train_like_separate_ones(multi_query: bool) -> None:
    config = transformers.GPTBigCodeConfig(**SMALL_GPT, n_layer=2, multi_query=multi_query)
    head = WIDTH // 2
    torch.manual_seed(0)
    _check_against_separate_projections(
        transformers.GPTBigCodeForCausalLM(config),
        "transformer.h",
        "attn.c_attn",
        lambda packed: (
            _GroupedProjections(packed, 1, [WIDTH, head, head])
            if multi_query
            else _per_head(packed, 2)
        ),
    )


def _compiled_run(
    build: Callable[[], nn.Module], use_singd: bool, steps: int
) -> tuple[list[int], int, float]:
    """Graphs after each step, graph breaks, and the largest compiled-eager loss gap."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model, twin = build().eval(), build().eval()  # eval: no dropout
    twin.load_state_dict(model.state_dict())

    def make(net: nn.Module) -> torch.optim.Optimizer:
        if use_singd:
            return SINGD(net, lr=1e-3, T=3, elementwise_below=0)
        return torch.optim.AdamW(net.parameters(), lr=1e-3)

    optimizer, twin_optimizer = make(model), make(twin)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="eager")
    generator = torch.Generator().manual_seed(0)
    graphs, gap = [], 0.0
    try:
        for _ in range(steps):
            ids = torch.randint(0, VOCABULARY, (2, 8), generator=generator)
            losses = []
            for net, opt in ((compiled, optimizer), (twin, twin_optimizer)):
                opt.zero_grad()
                with torch.enable_grad():
                    loss = net(input_ids=ids, labels=ids).loss
                    loss.backward()
                opt.step()
                losses.append(loss.item())
            gap = max(gap, abs(losses[0] - losses[1]))
            graphs.append(counters["stats"]["unique_graphs"])
        return graphs, sum(counters["graph_break"].values()), gap
    finally:
        torch._dynamo.reset()


def test_compiled_model_has_the_graphs_of_adamw() -> None:
    """Llama-style (the GPT-2-style figures are in ``benchmarks/compile_graphs.py``)."""
    adamw_graphs, adamw_breaks, _ = _compiled_run(llama, use_singd=False, steps=2)
    graphs, breaks, gap = _compiled_run(llama, use_singd=True, steps=5)  # T = 3
    assert adamw_graphs[-1] >= 1  # something was compiled
    assert graphs[1] >= 1  # the first step records and runs eagerly, the second compiles
    assert graphs[-1] <= adamw_graphs[-1] + 1
    assert breaks <= adamw_breaks + 1
    assert graphs[-1] == graphs[2]  # no recompilation after the third step
    assert gap < 1e-5  # float32 losses of the compiled and the eager model
