r"""The Kronecker-factored block: SINGD's preconditioner of one linear map.

The block keeps the factors ``K`` (input side, ``d_K x d_K``) and ``C`` (output side,
``d_C x d_C``) of the inverse preconditioner :math:`(C C^\top) \otimes (K K^\top)`,
both starting at the identity, their Riemannian momenta ``m_K, m_C`` (when
:math:`\alpha_1 \neq 0`), and the curvature recorded since the last update. The
equations are in :mod:`singd_opt.preconditioner`; the way the parameters form the
gradient matrix and the calls form curvature rows in :mod:`singd_opt.layers`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from singd_opt.blocks.base import PreconditionerBlock, Proposal, StepContext
from singd_opt.blocks.kronecker_step import (
    STACK_MAX_ENTRIES,
    BlockState,
    StepSettings,
    StepSignature,
    advance,
    advance_batch,
)
from singd_opt.blocks.matrix_state import matrix_from_state, matrix_to_state
from singd_opt.curvature import CurvatureSums
from singd_opt.grafting import FactoredMoment, advance_moment
from singd_opt.layers import EmbeddingLayer, Layer, ParameterRows
from singd_opt.preconditioner import UpdateConfig, factor_step
from singd_opt.structure_choice import auto_structures, byte_size, copies_per_side
from singd_opt.structures import resolve_structure
from structmat import StructuredMatrix

_FACTORS = ("K", "C", "m_K", "m_C")
_GRAPH_TASK_ID = getattr(torch._C, "_current_graph_task_id", None)


def _current_backward_pass() -> int | None:
    """Identify the running backward pass (autograd's graph task), ``None`` if unknown."""
    return _GRAPH_TASK_ID() if _GRAPH_TASK_ID is not None else None


def _tensors(first: StructuredMatrix, second: StructuredMatrix) -> list[Tensor]:
    """The stored tensors of two matrices, in a fixed order."""
    return [*first.tensors().values(), *second.tensors().values()]


def _matrices_like(
    K: StructuredMatrix, C: StructuredMatrix, tensors: list[Tensor]
) -> tuple[StructuredMatrix, StructuredMatrix]:
    """Two matrices of the structures of ``K, C`` from :func:`_tensors`' layout."""
    values = iter(tensors)
    first = type(K).from_tensors({name: next(values) for name in K.tensors()})
    second = type(C).from_tensors({name: next(values) for name in C.tensors()})
    return first, second


class KroneckerBlock(PreconditionerBlock):
    """SINGD's Kronecker-factored preconditioner of one linear map.

    Attributes:
        layer: The map: how its parameters form the gradient matrix, and its calls
            the curvature.
        structures: Structure names of ``(K, C)``.
        K, C: The factors.
        m_K, m_C: Their momenta (``None`` when ``alpha1 == 0``).
        curvature: The curvature recorded since the last update, or ``None``.
    """

    kind = "kronecker"
    splittable = True
    mixes_rows = True

    def __init__(
        self,
        name: str,
        layer: Layer,
        group_index: int,
        group: Mapping[str, Any],
    ) -> None:
        """Create the block with identity factors and zero momenta.

        Args:
            name: The block's name.
            layer: The linear map.
            group_index: Index of the parameter group.
            group: The parameter group (``structures``, ``preconditioner_dtype``,
                ``alpha1``).
        """
        super().__init__(name, layer.params, group_index)
        self.layer = layer
        self.structures: tuple[str, str] = self.structures_for(layer, group)
        dtype_K, dtype_C = self.dtypes(group)
        device = layer.params[0].param.device
        cls_K, cls_C = (resolve_structure(s) for s in self.structures)
        self.K: StructuredMatrix = cls_K.eye(layer.dim_K, dtype=dtype_K, device=device)
        self.C: StructuredMatrix = cls_C.eye(layer.dim_C, dtype=dtype_C, device=device)
        self.m_K: StructuredMatrix | None = None
        self.m_C: StructuredMatrix | None = None
        if group["alpha1"] != 0.0:
            self.m_K = cls_K.zeros(layer.dim_K, dtype=dtype_K, device=device)
            self.m_C = cls_C.zeros(layer.dim_C, dtype=dtype_C, device=device)
        self.curvature: CurvatureSums | None = None
        self.ever_updated = False  # whether K, C have been updated at least once
        # whether some process recorded curvature for the coming first update (set by
        # :meth:`decide` with several processes; else the own curvature decides)
        self.recorded_somewhere = False
        # (K, C, K K^T, C C^T) for structures closed under transposition; rebuilt
        # whenever K or C is replaced.
        self._squares: tuple[Any, Any, Any, Any] | None = None
        # the factored second moment of the gradient matrix (graft="adafactor")
        self._graft_moment: FactoredMoment | None = None

    @staticmethod
    def structures_for(layer: Layer, group: Mapping[str, Any]) -> tuple[str, str]:
        """Return the structure names of ``(K, C)``: the group's, diagonal ``K`` for embeddings.

        ``"auto"`` sides are chosen within the group's ``auto_budget``
        (:mod:`~singd_opt.structure_choice`): with ``"adamw"`` the block's whole state
        stays within AdamW's, with a number each side keeps that fraction of the weight.
        """
        name_K, name_C = group["structures"]
        if isinstance(layer, EmbeddingLayer):
            name_K = "diagonal"
        moment = layer.dim_K + layer.dim_C if group["graft"] == "adafactor" else 0
        return auto_structures(
            (name_K, name_C),
            (layer.dim_K, layer.dim_C),
            copies_per_side(group["alpha1"], group["T"]),
            group["auto_budget"],
            group["momentum"] != 0.0,
            moment,
            layer.bias is not None,
        )

    def dtypes(self, group: Mapping[str, Any]) -> tuple[torch.dtype, torch.dtype]:
        """Return the dtypes of ``(K, C)``: the group's, else the weight's."""
        dtype_K, dtype_C = group["preconditioner_dtype"]
        weight_dtype = self.layer.params[0].param.dtype
        return dtype_K or weight_dtype, dtype_C or weight_dtype

    # ------------------------------------------------------------- curvature
    def record(
        self,
        x: Tensor,
        grad_output: Tensor,
        group: Mapping[str, Any],
        grad_prescale: float = 1.0,
    ) -> None:
        r"""Add one call's :math:`H_K, H_C` to the recorded curvature.

        Args:
            x: The call's input.
            grad_output: Gradient of the loss w.r.t. the call's output.
            group: The parameter group (``kfac_approx``, ``loss_average``).
            grad_prescale: Gradient scale to divide :math:`H_C` by now (the rest is
                un-scaled at the update, see :mod:`singd_opt.grad_scale`).
        """
        K, C = self.K, self.C
        kfac_approx, loss_average = group["kfac_approx"], group["loss_average"]
        with torch.inference_mode():  # as the step (SINGD.step): no autograd bookkeeping
            H_K, rows = self.layer.input_curvature(K, x, kfac_approx)
            H_C, terms = self.layer.output_curvature(
                C, grad_output.to(C.dtype), loss_average, kfac_approx, grad_prescale
            )
            backward_pass = _current_backward_pass()
            if self.curvature is None:
                self.curvature = CurvatureSums(
                    H_K, H_C, rows, terms, loss_average is not None, backward_pass
                )
            else:
                self.curvature.add(H_K, H_C, rows, terms, backward_pass)

    def has_curvature(self) -> bool:
        """See :meth:`PreconditionerBlock.has_curvature`."""
        return self.curvature is not None

    def drop_curvature(self) -> None:
        """See :meth:`PreconditionerBlock.drop_curvature`."""
        self.curvature = None
        self.recorded_somewhere = False

    def decision(self) -> Tensor | None:
        """Whether this process recorded curvature, before the first update.

        See :meth:`PreconditionerBlock.decision`: the processes agree on whether the
        block lacks curvature (a layer may be used on some processes only).
        """
        if not self.recording or self.ever_updated:
            return None
        return torch.tensor([float(self.curvature is not None)], dtype=torch.float64)

    def decide(self, seen: list[Tensor]) -> None:
        """Note whether any process recorded curvature (see :meth:`decision`)."""
        self.recorded_somewhere = any(bool(s[0] > 0) for s in seen)

    def lacks_curvature(self) -> bool:
        """See :meth:`PreconditionerBlock.lacks_curvature` (what every process recorded)."""
        return (
            self.recording
            and not self.ever_updated
            and self.curvature is None
            and not self.recorded_somewhere
            and any(rows.param.grad is not None for rows in self.layer.params)
        )

    def curvature_buffers(self) -> list[Tensor]:
        """``H_K``'s and ``H_C``'s tensors (laid out like ``K``, ``C``), then the counts.

        See :meth:`PreconditionerBlock.curvature_buffers`.
        """
        if not self.recording:
            return []
        counts = torch.zeros(2, dtype=torch.float64, device=self.K.device)
        return [*_tensors(self.K, self.C), counts]

    def reducible_curvature(self) -> list[Tensor] | None:
        """See :meth:`PreconditionerBlock.reducible_curvature`, :meth:`CurvatureSums.reducible`."""
        if self.curvature is None:
            return None
        tensors, counts = self.curvature.reducible()
        return [*tensors, torch.tensor(counts, dtype=torch.float64)]

    def set_reduced_curvature(
        self, sums: list[Tensor], processes: int, group: Mapping[str, Any]
    ) -> None:
        """See :meth:`PreconditionerBlock.set_reduced_curvature` (copies ``sums``)."""
        *matrices, counts = sums
        rows, terms = counts.tolist()
        if rows == 0:
            self.curvature = None
            return
        # copies: the block's state does not keep the communication buffer alive
        H_K, H_C = _matrices_like(self.K, self.C, [t.clone() for t in matrices])
        curvature = CurvatureSums(H_K, H_C, 1, 1, group["loss_average"] is not None)
        curvature.set_reduced([rows, terms], processes)
        self.curvature = curvature

    # ------------------------------------------------------------------ step
    def _update_config(self, group: Mapping[str, Any], context: StepContext) -> UpdateConfig:
        lr_cov = group["lr_cov"]
        if callable(lr_cov):
            lr_cov = lr_cov(context.step)
        return UpdateConfig(
            damping=group["damping"],
            alpha1=group["alpha1"],
            kfac_like=group["kfac_like"],
            normalize_lr_cov=group["normalize_lr_cov"],
            lr_cov=lr_cov,
            grad_unscaling=context.grad_unscaling,
            relative_damping=group.get("relative_damping", 0.0),
        )

    def _state_for_step(self, context: StepContext) -> BlockState:
        """The state :func:`~singd_opt.blocks.kronecker_step.advance` starts from.

        The recorded curvature (if any) is handed over: its storage becomes the new
        momenta.
        """
        curvature = self.curvature
        KKT, CCT = self._cached_squares()
        return BlockState(
            self.K,
            self.C,
            self.m_K,
            self.m_C,
            H_K=curvature.H_K if curvature is not None else None,
            H_C=curvature.H_C if curvature is not None else None,
            grad=self.layer.gradient_matrix(context.gradients),
            KKT=KKT,
            CCT=CCT,
            moment=self._graft_moment,
        )

    def _cached_squares(self) -> tuple[StructuredMatrix | None, StructuredMatrix | None]:
        """The cached ``K K^T``, ``C C^T`` of the current factors (``None`` where not kept)."""
        cached = self._squares
        if cached is None or cached[0] is not self.K or cached[1] is not self.C:
            return None, None
        return cached[2], cached[3]

    def _settings(self, group: Mapping[str, Any], context: StepContext) -> StepSettings:
        """The step's hyper-parameters for :func:`~singd_opt.blocks.kronecker_step.advance`."""
        return StepSettings(
            config=self._update_config(group, context) if self.curvature is not None else None,
            warm_start=self._warm_starts(group),
            uses=group["T"],
            grad_factor=context.grad_factor,
            graft=group.get("graft"),
            group=group,
        )

    def batch_key(self, group: Mapping[str, Any], context: StepContext) -> StepSignature | None:
        """See :meth:`PreconditionerBlock.batch_key`: the block's :class:`StepSignature`.

        A block goes alone (``None``) for a warm start, without a gradient for every
        parameter, with sharded parameters (``context.gradients``), with a structure
        that does not declare :attr:`~structmat.StructuredMatrix.batches_natively`, and
        with a gradient matrix of more than
        :data:`~singd_opt.blocks.kronecker_step.STACK_MAX_ENTRIES` entries.
        """
        if not (type(self.K).batches_natively and type(self.C).batches_natively):
            return None
        if self.layer.dim_K * self.layer.dim_C > STACK_MAX_ENTRIES:
            return None
        if context.gradients is not None or (
            self.curvature is not None and self._warm_starts(group)
        ):
            return None
        if any(rows.param.grad is None for rows in self.layer.params):
            return None
        KKT, CCT = self._cached_squares()
        moment = self._graft_moment
        return StepSignature(
            structures=self.structures,
            dims=(self.layer.dim_K, self.layer.dim_C),
            dtypes=(self.K.dtype, self.C.dtype, self.layer.params[0].param.dtype),
            device=self.K.device,
            updating=self.curvature is not None,
            momenta=self.m_K is not None,
            squares=(KKT is not None, CCT is not None),
            moment_updates=moment.updates if moment is not None else None,
        )

    def propose(self, group: Mapping[str, Any], context: StepContext) -> Proposal:
        r"""Update ``K, C`` from the recorded curvature (if any) and precondition.

        The natural gradient :math:`C C^\top G K K^\top` uses the new factors.
        """
        settings = self._settings(group, context)
        start = self._state_for_step(context)
        self.curvature = None  # consumed: its storage becomes the new momenta
        return self._proposal(advance(start, settings))

    def propose_batch(
        self, blocks: list[PreconditionerBlock], group: Mapping[str, Any], context: StepContext
    ) -> list[Proposal]:
        """See :meth:`PreconditionerBlock.propose_batch`: one :func:`advance` on stacks."""
        members = [block for block in blocks if isinstance(block, KroneckerBlock)]
        if len(members) != len(blocks):
            raise TypeError("propose_batch: every block must be a KroneckerBlock")
        settings = self._settings(group, context)
        starts = []
        for block in members:
            starts.append(block._state_for_step(context))
            block.curvature = None
        results = advance_batch(starts, settings)
        return [block._proposal(result) for block, result in zip(members, results, strict=True)]

    def _proposal(self, result: BlockState) -> Proposal:
        """The proposal that commits ``result`` (from :func:`advance`) as the new state."""
        updating = result.shared is not None
        checked: list[Tensor] = []
        if updating:
            checked = [*result.K.tensors().values(), *result.C.tensors().values()]
        directions = self.layer.split(result.direction) if result.direction is not None else []
        shared = list(_tensors(*result.shared)) if result.shared is not None else None
        has_grad = result.grad is not None

        def commit() -> None:
            if updating:
                self.K, self.C, self.m_K, self.m_C = result.K, result.C, result.m_K, result.m_C
                self.ever_updated = True
            if has_grad:
                self._squares = (result.K, result.C, result.KKT, result.CCT)
                self._graft_moment = result.moment

        return Proposal(directions, checked + [d for _, d in directions], commit, shared)

    def _warm_starts(self, group: Mapping[str, Any]) -> bool:
        """Whether this update is a warm start (the first update, with ``warm_start``)."""
        return bool(group.get("warm_start")) and not self.ever_updated

    def shared_buffers(self) -> list[Tensor]:
        """Room for the new momenta ``m_K, m_C`` (or, for a warm start, ``K, C``).

        See :meth:`PreconditionerBlock.shared_buffers`; only on recording steps.
        """
        return _tensors(self.K, self.C) if self.recording else []

    def received(
        self,
        directions: list[tuple[ParameterRows, Tensor]],
        shared: list[Tensor] | None,
        group: Mapping[str, Any],
        context: StepContext,
    ) -> Proposal:
        """The proposal of this block from another process's results.

        Args:
            directions: The owner's directions.
            shared: What the owner shared of its update: the new momenta
                ``m_K, m_C``, from which the new factors follow (:func:`factor_step`)
                exactly as the owner computed them; or, for a warm start, the new
                factors ``K, C`` themselves; ``None`` without update.
            group: The block's parameter group.
            context: The step.
        """
        K, C = self.K, self.C
        momenta: tuple[StructuredMatrix, StructuredMatrix] | None = None
        if shared is not None:
            first, second = _matrices_like(self.K, self.C, shared)
            if self._warm_starts(group):
                K, C = first, second
            else:
                momenta = (first, second)
                K, C = factor_step(K, C, first, second, self._update_config(group, context))

        graft_moment = self._graft_moment
        grad = self.layer.gradient_matrix(context.gradients) if group.get("graft") else None
        if grad is not None:  # the grafting state follows the gradients, as on the owner
            if context.grad_factor != 1.0:
                grad = grad / context.grad_factor
            graft_moment = advance_moment(grad, group["graft"], graft_moment, group)

        def commit() -> None:
            self.curvature = None  # the owner used it
            self._graft_moment = graft_moment
            if shared is not None:
                self.K, self.C = K, C
                if momenta is not None and group["alpha1"] != 0.0:
                    self.m_K, self.m_C = momenta
                self.ever_updated = True
                self._squares = None

        return Proposal(directions, [], commit)

    def cost(self) -> float:
        r"""See :meth:`PreconditionerBlock.cost`.

        With :math:`s_K` the stored entries of ``K`` (``d_K^2`` dense, ``d_K``
        diagonal, ...), updating ``K`` costs about :math:`2 s_K d_K` multiply-adds (the
        products :math:`K^\top K` and :math:`K m_K`), and the natural gradient about
        :math:`2 d_C d_K (s_K / d_K + s_C / d_C)` (one structured product per side and
        row or column of the gradient matrix, twice).
        """
        dim_K, dim_C = self.layer.dim_K, self.layer.dim_C
        stored_K = sum(t.numel() for t in self.K.tensors().values())
        stored_C = sum(t.numel() for t in self.C.tensors().values())
        update = 2.0 * (stored_K * dim_K + stored_C * dim_C)
        precondition = 2.0 * dim_C * dim_K * (stored_K / dim_K + stored_C / dim_C)
        return update + precondition

    # ---------------------------------------------------------------- state
    def matrices(self) -> dict[str, StructuredMatrix]:
        """Return ``K, C`` and, when kept, ``m_K, m_C`` by name."""
        found = {"K": self.K, "C": self.C, "m_K": self.m_K, "m_C": self.m_C}
        return {key: matrix for key, matrix in found.items() if matrix is not None}

    def state_dict(self) -> dict[str, Any]:
        """See :meth:`PreconditionerBlock.state_dict`.

        Matrices appear as ``{"structure": name, "tensors": {...}}``; the recorded
        curvature (when there is some) as ``H_K``, ``H_C`` and ``counts``.
        """
        state: dict[str, Any] = {"kind": self.kind}
        for key, matrix in self.matrices().items():
            state[key] = matrix_to_state(self.structures[key.endswith("C")], matrix)
        if self.curvature is not None:
            state["H_K"] = matrix_to_state(self.structures[0], self.curvature.H_K)
            state["H_C"] = matrix_to_state(self.structures[1], self.curvature.H_C)
            state["counts"] = [self.curvature.row_count, self.curvature.terms]
        if self._graft_moment is not None:
            moment = self._graft_moment
            state["graft_moment"] = {
                "rows": moment.rows,
                "columns": moment.columns,
                "updates": moment.updates,
            }
        return state

    def settled_state_dict(self) -> dict[str, Any]:
        """See :meth:`PreconditionerBlock.settled_state_dict`: without the curvature."""
        state = self.origin.state_dict()
        for key in ("H_K", "H_C", "counts"):
            state.pop(key, None)
        return state

    def load_state_dict(
        self, state: Mapping[str, Any], group: Mapping[str, Any]
    ) -> Callable[[], PreconditionerBlock]:
        """See :meth:`PreconditionerBlock.load_state_dict`.

        Raises:
            ValueError: If an entry is missing or malformed, or its structure differs
                from the one ``group`` asks for (the message names both).
        """
        what = f"state_dict: block {self.name!r}"
        if state.get("kind") != self.kind:
            raise ValueError(f"{what} is a {state.get('kind')!r} block, expected {self.kind!r}")
        structures = self.structures_for(self.layer, group)
        dtypes = self.dtypes(group)
        device = self.layer.params[0].param.device
        keep_momenta = group["alpha1"] != 0.0
        loaded: dict[str, StructuredMatrix | None] = {}
        for key in (*_FACTORS, "H_K", "H_C"):
            side = int(key.endswith("C"))
            dim = self.layer.dim_C if side else self.layer.dim_K
            if key not in state:
                required = key in ("K", "C") or (key.startswith("m_") and keep_momenta)
                if required:
                    raise ValueError(f"{what} has no entry {key!r}")
                loaded[key] = None
                continue
            structure, matrix = matrix_from_state(
                state[key], dim, dtypes[side], device, f"block {self.name!r} {key}"
            )
            if structure != structures[side]:
                raise ValueError(
                    f"{what} {key} has structure {structure!r} but this optimizer uses "
                    f"{structures[side]!r}; create the optimizer with the saved structures "
                    "to load it"
                )
            loaded[key] = matrix
        if not keep_momenta:
            loaded["m_K"] = loaded["m_C"] = None
        curvature = None
        if (loaded["H_K"] is None) != (loaded["H_C"] is None):
            raise ValueError(f"{what} must hold both H_K and H_C or neither")
        if loaded["H_K"] is not None:
            counts = state.get("counts")
            if not (
                isinstance(counts, list | tuple)
                and len(counts) == 2
                and all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in counts)
            ):
                raise ValueError(f"{what} counts must be two positive ints, got {counts!r}")
            curvature = CurvatureSums(
                loaded["H_K"],  # type: ignore[arg-type]
                loaded["H_C"],  # type: ignore[arg-type]
                counts[0],
                counts[1],
                mean_loss=group["loss_average"] is not None,
            )

        graft_moment = self._load_graft_moment(state.get("graft_moment"), what, device)

        def load() -> PreconditionerBlock:
            self._graft_moment = graft_moment
            self.structures = structures
            self.K, self.C = loaded["K"], loaded["C"]  # type: ignore[assignment]
            self.m_K, self.m_C = loaded["m_K"], loaded["m_C"]
            self.curvature = curvature
            self._squares = None
            self.ever_updated = True  # a loaded state counts as updated (no first-update warning)
            return self

        return load

    def _load_graft_moment(
        self, entry: Any, what: str, device: torch.device
    ) -> FactoredMoment | None:
        """Return the saved grafting moment (``graft="adafactor"``), checked, or ``None``."""
        if entry is None:
            return None
        shapes = ((self.layer.dim_C,), (self.layer.dim_K,))
        if not (
            isinstance(entry, dict)
            and all(isinstance(entry.get(k), Tensor) for k in ("rows", "columns"))
            and (entry["rows"].shape, entry["columns"].shape) == shapes
            and isinstance(entry.get("updates"), int)
            and not isinstance(entry["updates"], bool)
            and entry["updates"] >= 0
        ):
            raise ValueError(
                f"{what} graft_moment must hold rows {shapes[0]}, columns {shapes[1]} "
                "and a non-negative int updates"
            )
        return FactoredMoment(
            entry["rows"].to(device=device, copy=True),
            entry["columns"].to(device=device, copy=True),
            entry["updates"],
        )

    def state_tensors(self) -> list[Tensor]:
        """See :meth:`PreconditionerBlock.state_tensors` (the cached ``K K^T`` included)."""
        tensors = [t for m in self.matrices().values() for t in m.tensors().values()]
        if self._graft_moment is not None:
            tensors.extend((self._graft_moment.rows, self._graft_moment.columns))
        if self._squares is not None:
            tensors.extend(
                t for m in self._squares[2:] if m is not None for t in m.tensors().values()
            )
        return tensors

    def oversized(self, multiple: float, min_bytes: int) -> str | None:
        """See :meth:`PreconditionerBlock.oversized`: ``K``, ``C`` and momenta vs. the weight."""
        layer = self.layer
        weight = layer.dim_K * layer.dim_C * layer.params[0].param.element_size()
        tensors = [t for m in self.matrices().values() for t in m.tensors().values()]
        size = sum(t.numel() * t.element_size() for t in tensors)
        if size <= multiple * weight or size <= min_bytes:
            return None
        return (
            f"{self.name or 'model'}: K {self.structures[0]} {layer.dim_K}, "
            f"C {self.structures[1]} {layer.dim_C}: {byte_size(size)}, "
            f"{size / weight:.1f}x the weight's {byte_size(weight)}"
        )

    def pending_curvature(self) -> tuple[StructuredMatrix, StructuredMatrix, int, int] | None:
        """See :meth:`PreconditionerBlock.pending_curvature`."""
        found = self.curvature
        return None if found is None else (found.H_K, found.H_C, found.row_count, found.terms)

    def describe(self) -> dict[str, Any]:
        """See :meth:`PreconditionerBlock.describe`."""
        (structure_K, structure_C), layer = self.structures, self.layer
        return {
            "kind": f"{self.kind} ({type(layer).__name__})",
            "preconditioner": f"K {structure_K} {layer.dim_K}, C {structure_C} {layer.dim_C}",
            "layer": type(layer).__name__,
            "structures": self.structures,
            "dims": (layer.dim_K, layer.dim_C),
        }
