"""The language-model task of the demo: its data, its model, SINGD training all of it."""

from __future__ import annotations

import sysconfig
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from singd_opt import SINGD
from singd_opt_demo import lm_data
from singd_opt_demo.lm_model import CharTransformer
from singd_opt_demo.tasks import LM
from singd_opt_demo.training import OptimizerSpec, make_optimizer, optimizer_state_bytes


def test_encoding_keeps_ascii_and_marks_everything_else_unknown() -> None:
    text = "def f(x):\n    return x ~ 1\t# é€"
    tokens = lm_data.encode(text)
    assert tokens.dtype == torch.int64 and tokens.shape == (len(text),)
    assert int(tokens.max()) < lm_data.VOCAB_SIZE
    unknown = [i for i, char in enumerate(text) if char in "\té€"]
    assert (tokens == lm_data.UNKNOWN).nonzero().flatten().tolist() == unknown
    assert lm_data.decode(tokens) == text.replace("\t", "?").replace("é", "?").replace("€", "?")
    assert lm_data.encode("").shape == (0,)


def test_split_is_by_position_in_blocks_and_windows_shift_by_one() -> None:
    cycle, block = lm_data.BLOCKS_PER_CYCLE, lm_data.BLOCK_LENGTH
    num_blocks = 2 * cycle + 3  # two whole cycles and the start of a third
    stream = torch.arange(num_blocks * block + 17)  # a last incomplete block is dropped
    split = lm_data.split_tokens(stream)
    assert list(split.eval_sets) == ["validation", "test"]

    def blocks_of(x: torch.Tensor) -> set[int]:
        return set((x // block).flatten().tolist())

    (x_val, y_val), (x_test, y_test) = split.eval_sets.values()
    assert blocks_of(x_val) == {cycle - 2, 2 * cycle - 2}
    assert blocks_of(x_test) == {cycle - 1, 2 * cycle - 1}
    train_blocks = set(range(num_blocks)) - blocks_of(x_val) - blocks_of(x_test)
    assert blocks_of(split.x_train) == train_blocks
    windows_per_block = (block - 1) // lm_data.CONTEXT
    assert len(split.x_train) == len(train_blocks) * windows_per_block
    for x, y in [(split.x_train, split.y_train), (x_val, y_val), (x_test, y_test)]:
        assert x.shape[1] == lm_data.CONTEXT
        assert torch.equal(y, x + 1)  # the targets are the next characters
        assert blocks_of(x) == blocks_of(y)  # no window crosses a block boundary
    assert list(lm_data.split_tokens(stream, validation=True).eval_sets) == ["validation"]


def test_corpus_is_the_standard_library_source(tmp_path: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    text = lm_data.read_corpus()
    assert len(text) >= lm_data.MIN_CHARACTERS
    first = lm_data.source_path(lm_data.SOURCE_MODULES[0], stdlib)
    assert first is not None
    assert text.startswith(first.read_text(encoding="utf-8"))
    assert lm_data.source_path("no_such_module", stdlib) is None
    with pytest.raises(FileNotFoundError, match=r"\.py sources"):
        lm_data.read_corpus(tmp_path)


def test_model_is_causal() -> None:
    torch.manual_seed(0)
    model = CharTransformer(context=16, d_model=16, heads=2, layers=1, feedforward=32).eval()
    tokens = torch.randint(0, lm_data.VOCAB_SIZE, (2, 16))
    changed = tokens.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % lm_data.VOCAB_SIZE
    with torch.no_grad():
        logits, logits_changed = model(tokens), model(changed)
    assert logits.shape == (2, 16, lm_data.VOCAB_SIZE)
    torch.testing.assert_close(logits[:, :10], logits_changed[:, :10])
    assert not torch.allclose(logits[:, 10:], logits_changed[:, 10:])
    with pytest.raises(ValueError, match="exceeds context 16"):
        model(torch.zeros(1, 17, dtype=torch.int64))


def test_singd_alone_trains_and_preconditions_every_parameter() -> None:
    torch.manual_seed(0)
    model = CharTransformer(context=8, d_model=16, heads=2, layers=2, feedforward=32)
    spec = OptimizerSpec.default(LM, "singd", "diagonal")
    optimizer = make_optimizer(spec, model)
    assert isinstance(optimizer, SINGD)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    tokens = torch.randint(0, lm_data.VOCAB_SIZE, (4, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no parameter left out, none unrecorded
        # the one reported fallback: the position table is added, not a linear map
        warnings.filterwarnings("ignore", message="parameter 'position' is used by Tensor.add")
        for _ in range(2):
            optimizer.zero_grad()
            logits = model(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
            loss.backward()
            optimizer.step()
    for name, param in model.named_parameters():
        assert not torch.equal(param, before[name]), f"{name} did not change"
    kinds = {block.name: block.kind for block in optimizer.blocks}
    elementwise = {name for name, kind in kinds.items() if kind == "elementwise"}
    assert "position" in elementwise
    assert all(kind in ("kronecker", "elementwise") for kind in kinds.values())
    kronecker = set(kinds) - elementwise
    maps = ("q_proj", "k_proj", "v_proj", "out_proj")
    layer_maps = [f"self_attn.{name}" for name in maps] + ["linear1", "linear2"]
    linear_maps = {"embedding", "head"} | {
        f"encoder.layers.{i}.{name}" for i in range(2) for name in layer_maps
    }
    assert kronecker == linear_maps
    assert all("norm" in name or name == "position" for name in elementwise)
    described = optimizer.describe()
    for name in before:
        assert name in described
    total = int(described.splitlines()[-1].split()[-1].replace(",", ""))
    assert total == optimizer_state_bytes(optimizer)
