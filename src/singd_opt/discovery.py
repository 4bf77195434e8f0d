"""Which block preconditions which parameter, and where its curvature is recorded.

With ``train_all_parameters=True`` (the default) every parameter in the groups gets a
block:

- the weight (and bias) of a :class:`~torch.nn.Linear`, ``Conv1d/2d/3d`` or
  :class:`~torch.nn.Embedding` module: a Kronecker block, recorded from every call of
  the weight as that map (:mod:`singd_opt.map_calls`; a weight shared by several
  modules of the same kind, with the same bias, is one block recording all of them);
- an embedding whose weight ``Linear`` modules share (tied input and output
  embeddings): one Kronecker block for the lookups and the projections
  (:mod:`singd_opt.layers.tied`), named after all the modules (``"wte+lm_head"``);
- the projections of a :class:`~torch.nn.MultiheadAttention`: one Kronecker block for
  each of query, key, value (rows of ``in_proj_weight`` and ``in_proj_bias``, or the
  separate ``q_proj_weight``, ... ) and the output projection, recorded through the
  attention's functional calls;
- any other parameter with two or more dimensions: a
  :class:`~singd_opt.blocks.deferred.DeferredBlock`, Kronecker if the forward pass
  uses it as the matrix of a linear map (``linear``, ``addmm``, ``matmul``, ``@``,
  ``conv*d``, ``embedding``; the module's own ``bias`` joins the block when the call
  adds it, as Hugging Face's ``Conv1D`` does), element-wise otherwise, with a warning
  naming the parameter and the function that used it (the weights of recurrent layers
  go to a fused kernel and are reported as not used as a linear map);
- everything else (normalisation scales and shifts, biases, parameters not in the
  model, weights shared between maps of different kinds, with a warning): an
  element-wise block.

A map whose weight has fewer entries than its group's ``elementwise_below`` (1024 in
the recommended defaults, 0 in the reference's) is trained element-wise instead, its
bias with it: a module's weight, a packed map's whole weight, a ``MultiheadAttention``'s
in-projection weights (all of them small) or output projection, a module's own
parameter. A Kronecker block's step costs the same hundred or more tensor operations
whatever the map's size, which on a few hundred weights outweighs what preconditioning
them buys (``docs/differences.rst``, "Small maps element-wise").

With ``train_all_parameters=False`` (the reference's behaviour) only the weights and
biases of ``Linear`` and ``Conv1d/2d/3d`` modules are trained; other parameters are left
alone, with a warning unless ``warn_unsupported=False``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from singd_opt.blocks import ElementwiseBlock, KroneckerBlock, PreconditionerBlock
from singd_opt.blocks.deferred import DeferredBlock
from singd_opt.capture import FunctionalTarget, install_functional_scope
from singd_opt.functional_targets import (
    AttentionLayout,
    BlockRecordFn,
    ProjectionPart,
    ProjectionTarget,
)
from singd_opt.layers import (
    CONV_MODULES,
    SUPPORTED_MODULES,
    ConvGeometry,
    ConvLayer,
    Layer,
    LinearLayer,
    ParameterRows,
    TiedEmbeddingLayer,
    make_layer,
)
from singd_opt.map_calls import MapTarget
from singd_opt.map_targets import DeferredTarget, KroneckerTarget, PackedTarget
from singd_opt.packed import Packing, packings, part_layer
from singd_opt.user_warnings import warn_user

#: Module types whose weight (and bias) form a Kronecker block chosen at construction.
KRONECKER_MODULES: tuple[type[nn.Module], ...] = (*SUPPORTED_MODULES, nn.Embedding)

#: ``install(record)`` installs a block's recording hooks and returns their handles.
Installer = Callable[[BlockRecordFn], list[RemovableHandle]]

#: ``(module, attribute, make_target)``: the tensor ``getattr(module, attribute)`` and
#: a function making its receiver of linear-map calls from the record function.
MapEntry = tuple[nn.Module, str, Callable[[BlockRecordFn], MapTarget]]


@dataclass
class Plan:
    """The blocks of a model and how to install their recording hooks.

    Attributes:
        blocks: The blocks, in the order of the model's modules.
        installers: Functions that install the functional scopes (attention layers).
        map_entries: The tracked parameters of :mod:`singd_opt.map_calls`.
        module_names: Layer modules of Kronecker blocks and their names.
    """

    blocks: list[PreconditionerBlock] = field(default_factory=list)
    installers: list[Installer] = field(default_factory=list)
    map_entries: list[MapEntry] = field(default_factory=list)
    module_names: dict[nn.Module, str] = field(default_factory=dict)

    def install(self, record: BlockRecordFn) -> list[RemovableHandle]:
        """Install the functional scopes; return the handles."""
        return [handle for install in self.installers for handle in install(record)]

    def map_targets(self, record: BlockRecordFn) -> list[tuple[nn.Module, str, MapTarget]]:
        """Return ``(module, attribute, target)`` of every tracked parameter."""
        return [(module, name, make(record)) for module, name, make in self.map_entries]


def _joined(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Planner:
    """Builds a :class:`Plan` (one pass over the model's modules)."""

    def __init__(
        self,
        model: nn.Module,
        groups: list[dict[str, Any]],
        train_all: bool,
        warn_unsupported: bool,
    ) -> None:
        self.groups = groups
        self.train_all = train_all
        self.warn_unsupported = warn_unsupported
        self.group_of: dict[int, int] = {}
        for index, group in enumerate(groups):
            for param in group["params"]:
                self.group_of.setdefault(id(param), index)
        self.claimed: set[int] = set()
        self.plan = Plan()
        # modules (by kind) that hold each parameter directly
        self.holders: dict[int, list[tuple[str, nn.Module]]] = defaultdict(list)
        self.param_names: dict[int, str] = {}
        self.attribute_names: dict[int, str] = {}
        for name, module in model.named_modules():
            for pname, param in module.named_parameters(recurse=False):
                self.holders[id(param)].append((name, module))
                self.param_names.setdefault(id(param), _joined(name, pname))
                self.attribute_names.setdefault(id(param), pname)
        self.model = model
        self.packings = packings(model)

    # -------------------------------------------------------------- helpers
    def trained(self, param: Tensor | None) -> bool:
        return isinstance(param, nn.Parameter) and id(param) in self.group_of

    def group_index(self, name: str, params: Iterable[nn.Parameter]) -> int:
        indices = {self.group_of[id(p)] for p in params}
        if len(indices) > 1:
            raise ValueError(
                f"params: the parameters of layer {name!r} are in different parameter "
                f"groups {sorted(indices)}; put them into the same group"
            )
        return indices.pop()

    def add(self, block: PreconditionerBlock) -> None:
        self.plan.blocks.append(block)
        for rows in block.params:
            self.claimed.add(id(rows.param))

    def add_elementwise(self, param: nn.Parameter, reason: str | None = None) -> None:
        name = self.param_names.get(id(param), f"param{len(self.plan.blocks)}")
        index = self.group_of[id(param)]
        self.add(ElementwiseBlock(name, ParameterRows(param), index, reason))

    def add_small(self, weight: nn.Parameter, *others: Tensor | None) -> None:
        """Element-wise blocks for a small map's ``weight`` and its ``others`` (biases)."""
        below = self.groups[self.group_of[id(weight)]]["elementwise_below"]
        reason = f"small map: {weight.numel()} weights < elementwise_below={below}"
        for param in (weight, *others):
            if self.trained(param) and id(param) not in self.claimed:
                self.add_elementwise(param, reason)

    def small(self, weight: Tensor | None) -> bool:
        """Whether ``weight`` is trained and has fewer entries than ``elementwise_below``."""
        return (
            self.trained(weight)
            and id(weight) not in self.claimed
            and weight.numel() < self.groups[self.group_of[id(weight)]]["elementwise_below"]
        )

    def small_map(self, weight: Tensor | None, *others: Tensor | None) -> bool:
        """Train a small ``weight`` and its map's ``others`` element-wise; return whether."""
        if not self.small(weight):
            return False
        self.add_small(weight, *others)
        return True

    # ------------------------------------------------------------ layers
    def kronecker(self, name: str, layer: Layer) -> KroneckerBlock:
        """Add and return the Kronecker block of ``layer``."""
        index = self.group_index(name, [rows.param for rows in layer.params])
        block = KroneckerBlock(name, layer, index, self.groups[index])
        self.add(block)
        return block

    def sharing_modules(self, module: nn.Module) -> list[nn.Module] | None:
        """Modules holding ``module``'s weight as the same map, or ``None`` if one differs.

        The same map: the same module type and bias (and geometry for convolutions).
        """
        bias = getattr(module, "bias", None)
        modules = []
        for _, other in self.holders[id(module.weight)]:
            if type(other) is not type(module) or getattr(other, "bias", None) is not bias:
                return None
            if isinstance(module, CONV_MODULES) and (
                ConvGeometry.of_module(other) != ConvGeometry.of_module(module)
            ):
                return None
            modules.append(other)
        return modules

    def tied_embedding(self, name: str, module: nn.Module) -> bool:
        """One block for an embedding whose weight output projections share.

        Applies when every holder of the embedding's weight is an ``Embedding`` or a
        ``Linear`` (its biases keep element-wise blocks). The weight's group chooses
        the block (``tied_embeddings``): an element-wise one, or one Kronecker block
        over both uses (:mod:`singd_opt.layers.tied`). Returns whether the weight
        was taken.
        """
        weight = module.weight
        holders = self.holders[id(weight)]
        if not self.trained(weight) or not isinstance(module, nn.Embedding):
            return False
        kinds = {type(m) for _, m in holders}
        if not any(isinstance(m, nn.Linear) for _, m in holders) or not all(
            isinstance(m, nn.Embedding | nn.Linear) for _, m in holders
        ):
            return False
        if any(isinstance(m, nn.Embedding) and m.sparse for _, m in holders):
            raise ValueError(
                f"params: embedding {name!r} has sparse=True; SINGD needs dense gradients "
                "(create it with sparse=False)"
            )
        del kinds
        if self.groups[self.group_of[id(weight)]]["tied_embeddings"] == "elementwise":
            self.add_elementwise(weight)
            return True
        names = [n for n, m in holders if isinstance(m, nn.Embedding)]
        names += [n for n, m in holders if not isinstance(m, nn.Embedding)]
        block = self.kronecker("+".join(names), TiedEmbeddingLayer(ParameterRows(weight)))
        for _, holder in holders:
            self.plan.module_names[holder] = block.name
        param_name = self.param_names[id(weight)]
        self.track(module, "weight", lambda record: KroneckerTarget(block, param_name, record))
        return True

    def track(
        self, module: nn.Module, attribute: str, make: Callable[[BlockRecordFn], MapTarget]
    ) -> None:
        """Hand the linear-map calls of ``getattr(module, attribute)`` to ``make(record)``."""
        self.plan.map_entries.append((module, attribute, make))

    def layer_module(self, name: str, module: nn.Module) -> None:
        weight = module.weight if self.trained(module.weight) else None
        bias = getattr(module, "bias", None)
        bias = bias if self.trained(bias) else None
        if self.small_map(weight, bias):
            return
        params = [p for p in (weight, bias) if p is not None]
        if not params or any(id(p) in self.claimed for p in params):
            return  # nothing to train, or a shared weight that is a block already
        modules = self.sharing_modules(module)
        if modules is None and self.train_all and self.tied_embedding(name, module):
            return
        if modules is None or any(len(self.holders[id(p)]) != len(modules) for p in params):
            users = sorted({n for p in params for n, _ in self.holders[id(p)]})
            if not self.train_all:
                raise ValueError(
                    f"params: a parameter of layer {name!r} is shared by layers {users}; "
                    "SINGD needs one map per parameter"
                )
            warn_user(
                f"the parameters of layer {name!r} are shared by layers {users} as different "
                "maps; they are trained with the element-wise rule"
            )
            for param in params:
                self.add_elementwise(param)
            return
        if isinstance(module, nn.Embedding):
            if module.sparse:
                raise ValueError(
                    f"params: embedding {name!r} has sparse=True; SINGD needs dense "
                    "gradients (create it with sparse=False)"
                )
            if weight is None:
                return
        layer = make_layer(module, weight, bias)
        if isinstance(module, CONV_MODULES) and module.padding_mode != "zeros":
            # such a module pads its input itself, then convolves without padding
            geometry = ConvGeometry.of_call(
                module.weight, module.stride, 0, module.dilation, module.groups
            )
            layer = ConvLayer(layer.weight, layer.bias, module.weight, geometry)
        block = self.kronecker(name, layer)
        for other in modules:
            self.plan.module_names[other] = name
        param_name = self.param_names[id(module.weight)]
        self.track(module, "weight", lambda record: KroneckerTarget(block, param_name, record))

    def packed(self, name: str, module: nn.Module, packing: Packing) -> bool:
        """One Kronecker block per projection of a packed map (:mod:`singd_opt.packed`).

        Applies when the weight's group has ``packed_projections="split"``, the weight
        is trained and held by this module alone (a shared weight is not split, with a
        warning). A bias that is 1-D with one entry per
        output and held alone is split with it. Returns whether the module was taken.

        Raises:
            ValueError: If such a bias is in another parameter group than the weight.
        """
        weight = module.weight
        if (
            not self.trained(weight)
            or id(weight) in self.claimed
            or self.small(weight)
            or self.groups[self.group_of[id(weight)]]["packed_projections"] != "split"
        ):
            return False
        if len(self.holders[id(weight)]) != 1:
            users = sorted(n for n, _ in self.holders[id(weight)])
            warn_user(
                f"the packed map {name!r} shares its weight with {users}; its projections "
                "are not split"
            )
            return False
        bias = getattr(module, "bias", None)
        outputs = packing.outputs
        if not (
            self.trained(bias)
            and id(bias) not in self.claimed
            and bias.shape == (outputs,)
            and len(self.holders[id(bias)]) == 1
        ):
            bias = None
        else:
            self.group_index(name, [weight, bias])  # one group for the map
        parts = [
            (
                self.kronecker(
                    _joined(name, part.name), part_layer(module, packing, part, weight, bias)
                ),
                part.rows,
            )
            for part in packing.parts
        ]
        param_name = self.param_names[id(weight)]
        self.track(
            module,
            "weight",
            lambda record: PackedTarget(parts, packing.transposed, param_name, record),
        )
        return True

    def attention(self, name: str, module: nn.MultiheadAttention) -> None:
        """Kronecker blocks for the query, key, value and output projections."""
        embed = module.embed_dim
        layout = AttentionLayout(module.batch_first)
        if module.in_proj_weight is not None:
            projections = [("in_proj_weight", slice(i * embed, (i + 1) * embed)) for i in range(3)]
        else:
            projections = [
                ("q_proj_weight", None),
                ("k_proj_weight", None),
                ("v_proj_weight", None),
            ]
        attributes = dict.fromkeys(attribute for attribute, _ in projections)
        trained_weights = [
            getattr(module, a) for a in attributes if self.trained(getattr(module, a))
        ]
        if trained_weights and all(self.small(w) for w in trained_weights):
            for weight in trained_weights:
                self.add_small(weight, module.in_proj_bias)
            projections = []  # small in-projections: trained element-wise
        roles = ("q_proj", "k_proj", "v_proj") if projections else ()
        bias = module.in_proj_bias if self.trained(module.in_proj_bias) else None
        parts: dict[str, list[ProjectionPart]] = defaultdict(list)
        for i, (role, (attribute, rows)) in enumerate(zip(roles, projections, strict=True)):
            weight = getattr(module, attribute)
            weight_rows = ParameterRows(weight, rows) if self.trained(weight) else None
            bias_rows = (
                ParameterRows(bias, slice(i * embed, (i + 1) * embed)) if bias is not None else None
            )
            if weight_rows is None and bias_rows is None:
                continue
            full = weight if rows is None else weight[rows]
            block = self.kronecker(_joined(name, role), LinearLayer(weight_rows, bias_rows, full))
            start = 0 if rows is None else rows.start
            parts[attribute].append(ProjectionPart(start, start + embed, block))
        targets = [
            (module, attribute, found, layout.input_projection)
            for attribute, found in parts.items()
        ]

        out = module.out_proj
        out_params = [p if self.trained(p) else None for p in (out.weight, out.bias)]
        if not self.small_map(out.weight, out.bias) and any(p is not None for p in out_params):
            block = self.kronecker(_joined(name, "out_proj"), make_layer(out, *out_params))
            self.plan.module_names[out] = block.name
            targets.append(
                (
                    out,
                    "weight",
                    [ProjectionPart(0, out.out_features, block)],
                    layout.output_projection,
                )
            )
        for extra in (module.bias_k, module.bias_v):
            if self.trained(extra):
                self.add_elementwise(extra)
        if not targets:
            return
        blocks = [part.block for *_, found, _ in targets for part in found]

        def install(record: BlockRecordFn) -> list[RemovableHandle]:
            scope: list[tuple[nn.Module, str, FunctionalTarget]] = [
                (owner, attribute, ProjectionTarget(found, record, lay))
                for owner, attribute, found, lay in targets
            ]
            return install_functional_scope(
                module, scope, lambda: any(b.recording for b in blocks), layout.note_call
            )

        self.plan.installers.append(install)

    def own_parameters(self, name: str, module: nn.Module) -> None:
        """Blocks for the parameters a module holds directly that no map claimed.

        A parameter of two or more dimensions gets a :class:`DeferredBlock` (with the
        module's own 1-D ``bias`` as a possible bias of its map when there is one
        such parameter); the others get element-wise blocks.
        """
        own = [
            (attribute, param)
            for attribute, param in module.named_parameters(recurse=False)
            if self.trained(param)
            and id(param) not in self.claimed
            and self.holders[id(param)][0][1] is module  # else handled with its first holder
        ]
        for _, param in own:
            if param.ndim >= 2 and self.small(param):
                self.add_small(param)
        own = [(attribute, param) for attribute, param in own if id(param) not in self.claimed]
        matrices = [(a, p) for a, p in own if p.ndim >= 2 and len(self.holders[id(p)]) == 1]
        bias = dict(own).get("bias")
        if bias is not None and (
            len(matrices) != 1
            or bias.ndim != 1
            or len(self.holders[id(bias)]) != 1
            or self.group_of[id(bias)] != self.group_of[id(matrices[0][1])]
        ):
            bias = None
        matrix_ids = {id(p) for _, p in matrices}
        for attribute, param in own:
            if param is bias:
                continue
            if id(param) not in matrix_ids:
                if param.ndim >= 2:
                    users = sorted(n for n, _ in self.holders[id(param)])
                    warn_user(
                        f"parameter {self.param_names[id(param)]!r} is held by several modules "
                        f"{users}; it is trained with the element-wise rule"
                    )
                self.add_elementwise(param)
                continue
            index = self.group_of[id(param)]
            block = DeferredBlock(
                self.param_names[id(param)],
                ParameterRows(param),
                index,
                self.groups[index],
                ParameterRows(bias) if bias is not None else None,
            )
            self.add(block)
            self.track(
                module,
                attribute,
                lambda record, block=block: DeferredTarget(block, record),  # type: ignore[misc]
            )

    # --------------------------------------------------------------- plans
    def build(self) -> Plan:
        for name, module in self.model.named_modules():
            packing = self.packings.get(module)
            if packing is not None and (self.train_all or isinstance(module, nn.Linear)):
                self.packed(name, module, packing)
            if isinstance(module, KRONECKER_MODULES) and (
                self.train_all or isinstance(module, SUPPORTED_MODULES)
            ):
                self.layer_module(name, module)
            elif isinstance(module, nn.MultiheadAttention) and self.train_all:
                self.attention(name, module)
            if self.train_all:
                self.own_parameters(name, module)
        untrained = [
            param
            for group in self.groups
            for param in group["params"]
            if id(param) not in self.claimed
        ]
        if self.train_all:
            for param in untrained:
                if id(param) not in self.claimed:  # a parameter given twice counts once
                    self.add_elementwise(param)
        elif untrained and self.warn_unsupported:
            warn_user(
                f"{len(untrained)} of the given parameters do not belong to a supported layer "
                f"({', '.join(t.__name__ for t in SUPPORTED_MODULES)}) of the model and will "
                "not be trained (train_all_parameters=True trains them)"
            )
        return self.plan


def plan_blocks(
    model: nn.Module,
    groups: list[dict[str, Any]],
    train_all: bool,
    warn_unsupported: bool,
) -> Plan:
    """Return the blocks of ``model`` for the parameters in ``groups``.

    Raises:
        ValueError: If a map's parameters are in different groups, an embedding has
            sparse gradients, or (with ``train_all=False``) a parameter is shared by
            two layers.
    """
    return _Planner(model, groups, train_all, warn_unsupported).build()
