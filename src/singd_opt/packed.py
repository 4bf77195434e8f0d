r"""Maps whose output packs several projections: one Kronecker block per projection.

Many models compute several projections of the same input with one map and split its
output: GPT-2's attention computes query, key and value with one ``Conv1D`` of
``3E`` outputs (``c_attn``), then splits them. One Kronecker block over such a map
has one output-side factor :math:`C` coupling the three projections and one
input-side factor :math:`K` shared by them. With ``packed_projections="split"`` (the
recommended set) each projection gets its own Kronecker block over its rows of the
weight and bias, as if the projections were separate layers (as the query, key and
value rows of :class:`~torch.nn.MultiheadAttention`'s ``in_proj_weight`` are). Every
call of the packed map records the shared input for each block and hands each block
its columns of the output gradient.

A packing is a declared fact about a module, never guessed from the data:

- :func:`declare_packed` declares it for any ``nn.Linear`` or :math:`W^\top`-stored
  map (it sets the module attribute ``singd_packed_outputs``, which survives
  ``copy.deepcopy`` and wins over the rules);
- the rules in :data:`KNOWN_PACKINGS` declare it for the Hugging Face classes whose
  layout they know, by class name (a fused map of another layout, such as CodeGen's
  ``qkv_proj``, is not guessed at):

  - :data:`CONTIGUOUS_C_ATTN` (GPT-2's family): ``c_attn`` with two or three times
    ``split_size`` outputs, query, key, value, or key and value for cross-attention;
  - :data:`CONTIGUOUS_QKV_PROJ` (Phi-3): ``qkv_proj`` with ``num_attention_heads *
    head_dim`` query, then ``num_key_value_heads * head_dim`` key and value outputs;
  - :data:`GATE_THEN_UP` (the gated MLPs of Phi-3 and GLM): ``gate_up_proj``, gate,
    then up, in halves;
  - :data:`PER_HEAD_QKV` (GPT-NeoX, BLOOM, Persimmon): ``query_key_value`` holding
    query, key and value of each head in turn;
  - :data:`QUERY_THEN_KEY_VALUE_OR_PER_HEAD` (GPT-BigCode, StarCoder): the
    self-attention's ``c_attn`` with the query heads, then one key and one value head
    (``multi_query``), else query, key and value of each head in turn;
  - :data:`FALCON_QKV` (Falcon): ``query_key_value`` by key-value group, by query then
    key and value, or per head, as its configuration says.

The parts are consecutive ranges of the output features, or (``heads > 1``) ranges
repeated in each of ``heads`` equal groups.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from singd_opt.layers import Layer, LinearLayer, ParameterRows, TransposedLinearLayer

#: The module attribute that holds a declared packing (a :class:`Packing`).
PACKED_OUTPUTS_ATTRIBUTE = "singd_packed_outputs"

#: The valid values of the ``packed_projections`` option.
PACKED_PROJECTIONS: tuple[str, ...] = ("split", "whole")


@dataclass(frozen=True)
class PackedPart:
    """The output features of a packed map that form one projection.

    The features ``[start, stop)`` of each of ``heads`` consecutive groups of
    ``period`` features (one group, ``heads = 1``: the range itself).

    Attributes:
        name: The projection's name (the block is named ``"<module>.<name>"``).
        start: First output feature (in each group).
        stop: One past the last output feature (in each group).
        period: The size of a group (``0`` for one group).
        heads: The number of groups.
    """

    name: str
    start: int
    stop: int
    period: int = 0
    heads: int = 1

    @property
    def rows(self) -> slice | tuple[int, ...]:
        """The output features: a slice for one group, else their indices in order."""
        if self.heads == 1:
            return slice(self.start, self.stop)
        group = range(self.start, self.stop)
        return tuple(head * self.period + i for head in range(self.heads) for i in group)


@dataclass(frozen=True)
class Packing:
    r"""A module's declared packing.

    Attributes:
        parts: The projections, in the order of the output features.
        transposed: Whether the weight is stored as :math:`W^\top` (``(d_in, d_out)``,
            the map ``x @ weight``, as Hugging Face's ``Conv1D``).
    """

    parts: tuple[PackedPart, ...]
    transposed: bool

    @property
    def outputs(self) -> int:
        """The map's number of output features."""
        last = self.parts[-1]
        return last.stop + (last.heads - 1) * last.period


def _output_features(module: nn.Module, transposed: bool | None) -> tuple[int, bool]:
    """The number of outputs of a linear map module and how its weight is stored.

    Raises:
        TypeError: If the module has no 2-D weight, or its orientation is unknown and
            ``transposed`` is not given.
    """
    weight = getattr(module, "weight", None)
    if not isinstance(weight, nn.Parameter) or weight.ndim != 2:
        raise TypeError(
            f"module: a packed map needs a 2-D weight parameter, {type(module).__name__} has none"
        )
    if transposed is None:
        if isinstance(module, nn.Linear):
            transposed = False
        elif getattr(module, "nf", None) == weight.shape[1]:  # Hugging Face's Conv1D
            transposed = True
        else:
            raise TypeError(
                f"module: the orientation of {type(module).__name__}'s weight is unknown; "
                "pass transposed=False for y = x @ weight.T or transposed=True for "
                "y = x @ weight"
            )
    return weight.shape[1 if transposed else 0], transposed


def declare_packed(
    module: nn.Module,
    parts: Mapping[str, int] | Sequence[int],
    *,
    transposed: bool | None = None,
    heads: int = 1,
) -> None:
    r"""Declare that ``module``'s output features are consecutive projections.

    With ``heads > 1`` the outputs are ``heads`` groups of equal size, each holding a
    slice of every projection in order (GPT-NeoX's per-head ``[query, key, value]``
    layout), and ``parts`` gives the sizes per group.

    Args:
        module: An ``nn.Linear``, Hugging Face ``Conv1D``, or another module with a
            2-D ``weight`` (then give ``transposed``) and optionally a 1-D ``bias``.
        parts: The projections' sizes in output order, by name (``{"query": 64,
            ...}``) or as a sequence (named ``"0"``, ``"1"``, ...). They must sum to
            the map's number of outputs.
        transposed: Whether ``weight`` is stored as :math:`W^\top` (``y = x @ weight``);
            ``None`` knows ``nn.Linear`` (``False``) and ``Conv1D`` (``True``).
        heads: The number of groups the outputs are interleaved in (1: none).

    Raises:
        TypeError: If the module is not a linear map of known orientation, or a size
            or ``heads`` is not an integer.
        ValueError: If there are fewer than two parts, a size or ``heads`` is not
            positive, or ``heads`` times the sizes' sum is not the number of outputs.
    """
    setattr(module, PACKED_OUTPUTS_ATTRIBUTE, make_packing(module, parts, transposed, heads))


def make_packing(
    module: nn.Module,
    parts: Mapping[str, int] | Sequence[int],
    transposed: bool | None,
    heads: int = 1,
) -> Packing:
    """The :class:`Packing` of :func:`declare_packed`'s arguments (same checks)."""
    named = list(parts.items()) if isinstance(parts, Mapping) else list(enumerate(parts))
    outputs, transposed = _output_features(module, transposed)
    if isinstance(heads, bool) or not isinstance(heads, int):
        raise TypeError(f"heads must be an int, got {heads!r}")
    if heads < 1:
        raise ValueError(f"heads must be >= 1, got {heads}")
    if len(named) < 2:
        raise ValueError(f"parts: a packed map has two or more parts, got {len(named)}")
    found: list[PackedPart] = []
    start = 0
    for name, size in named:
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"parts: the size of part {name!r} must be an int, got {size!r}")
        if size <= 0:
            raise ValueError(f"parts: the size of part {name!r} must be > 0, got {size}")
        found.append(PackedPart(str(name), start, start + size))
        start += size
    if heads * start != outputs:
        total = f"sum to {start}" if heads == 1 else f"sum to {start}, times {heads} heads"
        raise ValueError(
            f"parts: the sizes {total}, but {type(module).__name__} has {outputs} outputs"
        )
    if heads > 1:
        found = [PackedPart(p.name, p.start, p.stop, start, heads) for p in found]
    return Packing(tuple(found), transposed)


#: Attention classes whose ``c_attn`` holds query, key and value (key and value for
#: cross-attention) one after the other, ``split_size`` each (GPT-2's family).
CONTIGUOUS_C_ATTN: tuple[str, ...] = (
    "GPT2Attention",
    "DecisionTransformerGPT2Attention",
    "ImageGPTAttention",
)
#: Attention classes whose ``qkv_proj`` holds the query heads, then the key and the
#: value heads (Phi-3's grouped-query layout).
CONTIGUOUS_QKV_PROJ: tuple[str, ...] = ("Phi3Attention",)
#: Gated MLP classes whose ``gate_up_proj`` holds the gate's outputs, then the up
#: projection's, in halves.
GATE_THEN_UP: tuple[str, ...] = ("Phi3MLP", "GlmMLP", "Glm4MLP")
#: Attention classes whose ``c_attn`` holds the query heads, then the key and the value
#: heads (``multi_query``), else query, key and value of each head in turn (GPT-BigCode).
QUERY_THEN_KEY_VALUE_OR_PER_HEAD: tuple[str, ...] = ("GPTBigCodeAttention",)
#: Attention classes whose ``query_key_value`` holds, for ``new_decoder_architecture``,
#: each key-value group's query heads, key and value in turn; for ``multi_query`` the
#: query heads, then one key and one value head; else each head's query, key, value.
FALCON_QKV: tuple[str, ...] = ("FalconAttention",)
#: Attention classes whose ``query_key_value`` holds query, key and value of each head
#: in turn.
PER_HEAD_QKV: tuple[str, ...] = ("GPTNeoXAttention", "BloomAttention", "PersimmonAttention")


def _of(module: nn.Module, classes: tuple[str, ...]) -> bool:
    return type(module).__name__ in classes


def _int_attribute(owner: object, name: str) -> int | None:
    """A positive integer attribute, else ``None``."""
    value = getattr(owner, name, None)
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    return value if ok else None


def _gpt2_attention(module: nn.Module) -> Iterable[tuple[nn.Module, dict[str, int]]]:
    """GPT-2's attention: ``c_attn`` packs query, key, value (key, value for cross)."""
    c_attn, split = getattr(module, "c_attn", None), _int_attribute(module, "split_size")
    if not _of(module, CONTIGUOUS_C_ATTN) or not isinstance(c_attn, nn.Module) or not split:
        return []
    try:
        outputs, _ = _output_features(c_attn, None)
    except TypeError:
        return []
    names = {3 * split: ("query", "key", "value"), 2 * split: ("key", "value")}.get(outputs)
    return [] if names is None else [(c_attn, dict.fromkeys(names, split))]


def _fused_attention(module: nn.Module) -> Iterable[tuple[nn.Module, dict[str, int]]]:
    """Phi-3's attention: ``qkv_proj`` packs query, key, value (grouped-query sizes)."""
    qkv = getattr(module, "qkv_proj", None)
    head_dim = _int_attribute(module, "head_dim")
    kv_heads = _int_attribute(module, "num_key_value_heads")
    heads = _int_attribute(getattr(module, "config", None), "num_attention_heads")
    if not _of(module, CONTIGUOUS_QKV_PROJ) or not isinstance(qkv, nn.Linear):
        return []
    if head_dim is None or kv_heads is None or heads is None:
        return []
    sizes = {"query": heads * head_dim, "key": kv_heads * head_dim, "value": kv_heads * head_dim}
    return [(qkv, sizes)] if sum(sizes.values()) == qkv.out_features else []


def _fused_gate_up(module: nn.Module) -> Iterable[tuple[nn.Module, dict[str, int]]]:
    """A gated MLP's ``gate_up_proj`` (Phi-3): the gate's outputs, then the up projection's."""
    gate_up = getattr(module, "gate_up_proj", None)
    if (
        not _of(module, GATE_THEN_UP)
        or not isinstance(gate_up, nn.Linear)
        or gate_up.out_features % 2
    ):
        return []
    half = gate_up.out_features // 2
    return [(gate_up, {"gate": half, "up": half})]


def _per_head_attention(module: nn.Module) -> Iterable[tuple[nn.Module, dict[str, int], int]]:
    """GPT-NeoX's and BLOOM's ``query_key_value``: query, key, value of each head in turn."""
    qkv = getattr(module, "query_key_value", None)
    head = _int_attribute(module, "head_size") or _int_attribute(module, "head_dim")
    if not _of(module, PER_HEAD_QKV) or not isinstance(qkv, nn.Linear) or not head:
        return []
    heads, rest = divmod(qkv.out_features, 3 * head)
    return [] if rest else [(qkv, dict.fromkeys(("query", "key", "value"), head), heads)]


def _gpt_bigcode_attention(module: nn.Module) -> Iterable[tuple[Any, ...]]:
    """GPT-BigCode's self-attention ``c_attn``: by query, key, value, or per head."""
    c_attn = getattr(module, "c_attn", None)
    head, heads = _int_attribute(module, "head_dim"), _int_attribute(module, "num_heads")
    if (
        not _of(module, QUERY_THEN_KEY_VALUE_OR_PER_HEAD)
        or getattr(module, "is_cross_attention", True)
        or not isinstance(c_attn, nn.Linear)
        or head is None
        or heads is None
    ):
        return []
    if getattr(module, "multi_query", False):
        sizes = {"query": heads * head, "key": head, "value": head}
        return [(c_attn, sizes)] if sum(sizes.values()) == c_attn.out_features else []
    if c_attn.out_features != 3 * heads * head:
        return []
    return [(c_attn, dict.fromkeys(("query", "key", "value"), head), heads)]


def _falcon_attention(module: nn.Module) -> Iterable[tuple[Any, ...]]:
    """Falcon's ``query_key_value`` in its three layouts (see :data:`FALCON_QKV`)."""
    qkv = getattr(module, "query_key_value", None)
    head, heads = _int_attribute(module, "head_dim"), _int_attribute(module, "num_heads")
    groups = _int_attribute(module, "num_kv_heads")
    if not _of(module, FALCON_QKV) or not isinstance(qkv, nn.Linear):
        return []
    if head is None or heads is None or groups is None or heads % groups:
        return []
    if getattr(module, "new_decoder_architecture", False):
        sizes = {"query": heads // groups * head, "key": head, "value": head}
    elif getattr(module, "multi_query", False):
        sizes, groups = {"query": heads * head, "key": head, "value": head}, 1
    else:
        sizes, groups = dict.fromkeys(("query", "key", "value"), head), heads
    return [(qkv, sizes, groups)] if groups * sum(sizes.values()) == qkv.out_features else []


#: Rules that declare the packings of known models: each takes a module and returns
#: ``(packed submodule, {part name: size})`` pairs, or ``(..., heads)`` triples for
#: outputs interleaved per head.
KNOWN_PACKINGS: list[Callable[[nn.Module], Iterable[tuple[Any, ...]]]] = [
    _gpt2_attention,
    _fused_attention,
    _fused_gate_up,
    _per_head_attention,
    _gpt_bigcode_attention,
    _falcon_attention,
]


def packings(model: nn.Module) -> dict[nn.Module, Packing]:
    """The packings of ``model``'s modules: those declared on a module, else the rules'."""
    found: dict[nn.Module, Packing] = {}
    for module in model.modules():
        for rule in KNOWN_PACKINGS:
            for packed, parts, *heads in rule(module):
                found[packed] = make_packing(packed, parts, None, *heads)
    for module in model.modules():
        packing = getattr(module, PACKED_OUTPUTS_ATTRIBUTE, None)
        if isinstance(packing, Packing):
            found[module] = packing
    return found


def part_layer(
    module: nn.Module,
    packing: Packing,
    part: PackedPart,
    weight: nn.Parameter | None,
    bias: nn.Parameter | None,
) -> Layer:
    """The linear map of one projection: its rows of the weight and of the bias.

    Args:
        module: The packed module.
        packing: Its packing.
        part: The projection.
        weight: The module's weight if trained, else ``None``.
        bias: The module's bias if trained (1-D, one entry per output), else ``None``.
    """
    rows, dim = part.rows, int(packing.transposed)
    weight_rows = ParameterRows(weight, rows, dim) if weight is not None else None
    bias_rows = ParameterRows(bias, rows) if bias is not None else None
    # the map's shape only: a sharded (FSDP2) weight is not indexed
    full = torch.empty(ParameterRows(module.weight, rows, dim).shape, device="meta")
    if packing.transposed:
        return TransposedLinearLayer(weight_rows, bias_rows, full)
    return LinearLayer(weight_rows, bias_rows, full)
