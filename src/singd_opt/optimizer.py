"""The SINGD optimizer: structured inverse-free natural gradient descent.

Lin, Dangel, Eschenhagen, Neklyudov, Kristiadi, Turner, Makhzani: "Structured
Inverse-Free Natural Gradient Descent: Memory-Efficient & Numerically-Stable KFAC",
ICML 2024 (arXiv 2312.05705).

The optimizer is a loop over preconditioner blocks (:mod:`singd_opt.blocks`): it
decides which block preconditions which parameter (:mod:`singd_opt.discovery`),
hands recorded calls to the blocks (:mod:`singd_opt.capture`), and in every step
collects each block's proposed directions and new state, checks them for
finiteness at once, commits them and applies momentum, weight decay and the
learning rate. The SINGD equations are in :mod:`singd_opt.preconditioner`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.optim import Optimizer

from singd_opt.blocks import PreconditionerBlock, StepContext
from singd_opt.blocks.batching import propose_blocks
from singd_opt.checkpoint_hooks import CheckpointHooks
from singd_opt.default_sets import DEFAULT
from singd_opt.diagnostics import ForeignUpdateWatch, warn_unrecorded
from singd_opt.discovery import plan_blocks
from singd_opt.distributed.optimizer_calls import DataParallelCalls
from singd_opt.distributed.setup import check_distribute, make_sync
from singd_opt.forward_switch import MapCapture
from singd_opt.grad_scale import GradScales
from singd_opt.layers import LOSS_AVERAGES, SUPPORTED_MODULES
from singd_opt.layers import preconditioner_dims as _preconditioner_dims
from singd_opt.model_access import parameter_names, unwrap_model
from singd_opt.param_groups import parameter_groups
from singd_opt.recording import CurvatureRecording
from singd_opt.skipping import StepSkipping
from singd_opt.structure_choice import warn_large_factors
from singd_opt.update import apply_directions
from singd_opt.validation import check_constructor_flags, group_defaults_of
from singd_opt.views import STANDARD_STRUCTURES, BlockViews
from structmat import StructuredMatrix


class SINGD(
    BlockViews, CurvatureRecording, StepSkipping, CheckpointHooks, DataParallelCalls, Optimizer
):
    r"""Structured inverse-free natural gradient descent (uses the empirical Fisher).

    Every trainable parameter is preconditioned by a block (see
    :mod:`singd_opt.discovery`). The weight and bias of each linear map (``Linear``,
    ``Conv1d/2d/3d``, ``Embedding``, the projections of ``MultiheadAttention``, a
    custom module's ``functional.linear`` weight) form a Kronecker block that keeps
    the factors ``K`` (input side) and ``C`` (output side) of the inverse
    preconditioner :math:`(C C^\top) \otimes (K K^\top)`, both starting at the
    identity, and their momenta ``m_K, m_C`` (when ``alpha1 != 0``). Every step
    preconditions the gradient matrix :math:`G` (weight flattened to
    ``d_out x d_in``, bias as the last column) and updates the parameters
    :math:`\theta`:

    .. math::
        N = C C^\top G K K^\top, \quad
        b \leftarrow \mu b + N + \gamma \theta, \quad
        \theta \leftarrow \theta - \beta_2 b.

    Every ``T``-th step also updates ``K, C`` from the curvature recorded in that
    step's backward passes (see :mod:`singd_opt.preconditioner`). Other parameters
    get an element-wise block (:mod:`singd_opt.blocks.elementwise`).

    Attributes:
        SUPPORTED_STRUCTURES: The standard structure names and their structmat classes;
            every other name registered in structmat is accepted as well.
        SUPPORTED_MODULES: The layer types the reference trains (with
            ``train_all_parameters=False`` the only ones).
        SUPPORTED_LOSS_AVERAGE: The valid values of ``loss_average``.
        blocks: The preconditioner blocks, in the order of the model's modules.
        module_names: Layer modules of the Kronecker blocks and their block names.
        parameter_names: The model's names of the parameters, by ``id`` (the names of a
            shared parameter joined by ``" = "``).
        steps: Number of steps taken (skipped steps do not count).
        skipped_steps: Number of steps skipped because something was not finite.
        hook_handles: Handles of the recording hooks installed on the model (and of
            the recording switch of its ``forward``); each has ``remove()``.
    """

    SUPPORTED_STRUCTURES: ClassVar[Mapping[str, type[StructuredMatrix]]] = STANDARD_STRUCTURES
    SUPPORTED_MODULES: ClassVar[tuple[type[nn.Module], ...]] = SUPPORTED_MODULES
    SUPPORTED_LOSS_AVERAGE: ClassVar[tuple[str | None, ...]] = LOSS_AVERAGES
    _step_supports_amp_scaling = True  # GradScaler passes grad_scale and found_inf

    def __init__(
        self,
        model: nn.Module,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]] | None = None,
        lr: float = DEFAULT,
        momentum: float = DEFAULT,
        damping: float = DEFAULT,
        alpha1: float = DEFAULT,
        weight_decay: float = DEFAULT,
        T: int = DEFAULT,
        loss_average: str | None = DEFAULT,
        lr_cov: float | Callable[[int], float] = DEFAULT,
        structures: tuple[str, str] = DEFAULT,
        kfac_approx: str = "expand",
        warn_unsupported: bool = True,
        kfac_like: bool = False,
        preconditioner_dtype: tuple[torch.dtype | None, torch.dtype | None] = (None, None),
        init_grad_scale: float = 1.0,
        normalize_lr_cov: bool | str = DEFAULT,
        *,
        train_all_parameters: bool = DEFAULT,
        skip_nonfinite: bool = True,
        elementwise_lr: float | None = None,
        elementwise_beta2: float = 0.999,
        elementwise_eps: float = 1e-8,
        max_update_rms: float | None = None,
        process_group: dist.ProcessGroup | None = None,
        distribute: str = "replicate",
        average_gradients: bool | None = None,
        warm_start: bool = DEFAULT,
        relative_damping: float = DEFAULT,
        graft: str | None = DEFAULT,
        momentum_dampening: bool | str = DEFAULT,
        tied_embeddings: str = DEFAULT,
        packed_projections: str = DEFAULT,
        auto_budget: str | float = DEFAULT,
        elementwise_below: int = DEFAULT,
        defaults: str = "recommended",
    ) -> None:
        r"""Create the optimizer and install its recording hooks on ``model``.

        Arguments left at ``DEFAULT`` take their value from the set of defaults named
        by ``defaults`` (:mod:`singd_opt.default_sets`): ``"recommended"`` (Adafactor
        grafting, Adam's bias-corrected momentum with ``momentum=0.7``, relative
        damping 0.1 over an absolute 1e-8, warm start, bounded factor steps, ``T=1``,
        ``alpha1=0``, ``structures=("auto", "auto")``, every parameter trained, tied
        embeddings element-wise, packed projections split; the rest as the reference) or
        ``"reference"`` (the reference's defaults).

        Args:
            model: The network (a ``DistributedDataParallel`` wrapper is unwrapped).
            params: ``None`` (every trainable parameter of the model), an iterable of
                parameters, or parameter groups (dicts with ``"params"`` and any of the
                hyper-parameters below, including ``structures``). The parameters of
                one linear map must be in the same group.
            lr: :math:`\beta_2`, learning rate of the parameters.
            momentum: :math:`\mu \in [0, 1)`, momentum of the parameter updates.
            damping: :math:`\lambda \geq 0`, damping of the preconditioner.
            alpha1: :math:`\alpha_1 \in [0, 1]`, Riemannian momentum of ``K, C``.
            weight_decay: :math:`\gamma \geq 0`, (coupled) weight decay.
            T: Update ``K, C`` every ``T`` steps.
            loss_average: How the loss averages: ``"batch"`` (mean over the batch),
                ``"batch+sequence"`` (mean over batch and weight-shared positions)
                or ``None`` (a sum).
            lr_cov: :math:`\beta_1 \geq 0`, learning rate of ``K, C``; or a callable
                mapping the step number to it.
            structures: Structure names of ``(K, C)``, e.g. ``("dense", "diagonal")``;
                any name structmat knows. An embedding's ``K`` is always diagonal.
            kfac_approx: ``"expand"`` or ``"reduce"`` for weight-shared dimensions
                (sequence positions, convolution patches).
            warn_unsupported: With ``train_all_parameters=False``, warn about
                parameters that will not be trained.
            kfac_like: Use the IKFAC update (sets ``alpha1`` to 0 with a warning).
            preconditioner_dtype: Dtypes of ``(K and m_K, C and m_C)``; ``None``
                means the weight's dtype.
            init_grad_scale: Initial scale of a gradient scaler, if one is used.
            normalize_lr_cov: Divide :math:`\beta_1` by :math:`\max(1, \|m\|_\infty)`
                (normalised gradient descent on ``K, C``); ``"spectral"`` also by
                :math:`2 \beta_1 \|m\|_F`, so that no step reverses a direction of a
                factor.
            train_all_parameters: Train every parameter (``True``), or, like the
                reference, only those of ``Linear`` and ``Conv1d/2d/3d`` layers.
            skip_nonfinite: Skip a step whose directions or new ``K, C`` are not all
                finite, leaving the whole state untouched (one check per step).
            elementwise_lr: Learning rate of the element-wise blocks; ``None`` means
                ``lr``.
            elementwise_beta2: :math:`\beta \in [0, 1)`, averaging of the element-wise
                blocks' squared gradients.
            elementwise_eps: :math:`\epsilon > 0` of the element-wise blocks.
            max_update_rms: If set, each block's directions are scaled down to this
                root mean square (before momentum); ``None`` disables clipping.
            process_group: The data-parallel processes; ``None`` means the default
                group when one is initialised (see :mod:`singd_opt.distributed`).
            distribute: ``"replicate"`` (every process updates every preconditioner)
                or ``"split"`` (each Kronecker block's work is done by one process,
                whose results reach the others).
            average_gradients: Whether the optimizer averages the gradients over the
                processes itself; ``None`` means yes unless ``model`` is wrapped in
                ``DistributedDataParallel`` or sharded by FSDP2 (which average them).
                Pass ``False`` for a bare model that is wrapped in
                ``DistributedDataParallel`` after the optimizer was created.
            warm_start: Replace each Kronecker block's first preconditioner update by a
                jump to the fixed point of that update's curvature
                (:func:`singd_opt.warm_start.fixed_point_factors`: exact for dense,
                diagonal and block-diagonal factors, a trace-matched multiple of the
                identity for the others). Needs ``damping > 0``.
            relative_damping: :math:`\lambda_r \geq 0`, damping in units of each
                layer's curvature, added to the absolute ``damping``
                (:mod:`singd_opt.damping`).
            graft: Give each Kronecker block's direction the size of another rule's
                (:mod:`singd_opt.grafting`): ``"rms"``, ``"adafactor"`` or ``None``.
            momentum_dampening: Average the directions in the momentum buffer,
                :math:`b \leftarrow \mu b + (1 - \mu) N`, instead of summing them:
                ``False`` (sum), ``True`` (the first step sets :math:`b`) or
                ``"bias_corrected"`` (from :math:`b = 0`, divided by
                :math:`1 - \mu^t` as Adam's first moment: every step has the
                directions' size; :mod:`singd_opt.update`).
            tied_embeddings: How an embedding whose weight output projections share
                (tied input and output embeddings) is trained: ``"elementwise"`` (the
                element-wise rule) or ``"kronecker"`` (one Kronecker block over both
                uses, :mod:`singd_opt.layers.tied`).
            packed_projections: How a map whose output packs several projections
                (GPT-2's query, key and value ``c_attn``; see :mod:`singd_opt.packed`)
                is trained: ``"split"`` (one Kronecker block per projection) or
                ``"whole"`` (one block for the map).
            auto_budget: The memory of the factors that ``structures="auto"`` chooses
                (:mod:`singd_opt.structure_choice`): ``"adamw"`` (recommended) gives
                each block's factors what keeps its whole state (factors, momentum
                buffer, grafting moment) within AdamW's two numbers per weight, the
                narrower side choosing first; a number :math:`f > 0` gives each side
                :math:`f` times the weight's numbers (the reference set's 0.25).
            elementwise_below: Weights of linear maps with fewer entries than this
                (with their biases) are trained with the element-wise rule instead of
                a Kronecker block (:mod:`singd_opt.discovery`): a Kronecker block's
                step is a hundred or more tensor operations whatever its size, which
                on tiny layers costs more than their preconditioning gains. 0 gives
                every map a Kronecker block.
            defaults: The set of defaults of every argument not passed
                (:mod:`singd_opt.default_sets`): ``"recommended"`` or ``"reference"``
                (the reference implementation's defaults).

        Raises:
            TypeError: For a ``DataParallel`` model, or an argument of the wrong type.
            ValueError: For an invalid hyper-parameter, no parameter to train, a
                map whose parameters are in different groups, or (on every process) a
                set-up that differs between the processes of the group, naming the first
                difference. Nothing changes on error.
        """
        group_defaults, train_all_parameters = group_defaults_of(defaults, locals())
        model, wrapped = unwrap_model(model)
        check_constructor_flags(
            warn_unsupported=warn_unsupported,
            train_all_parameters=train_all_parameters,
            skip_nonfinite=skip_nonfinite,
            average_gradients=average_gradients,
            init_grad_scale=init_grad_scale,
        )
        check_distribute(distribute, process_group)

        groups = parameter_groups(
            model, params, group_defaults, train_all_parameters, warn_unsupported
        )
        plan = plan_blocks(model, groups, train_all_parameters, warn_unsupported)
        sync = make_sync(
            plan.blocks,
            [p for group in groups for p in group["params"]],
            process_group,
            distribute,
            average_gradients,
            wrapped,
            groups,
            {
                "skip_nonfinite": skip_nonfinite,
                "init_grad_scale": init_grad_scale,
                "train_all_parameters": train_all_parameters,
            },
        )

        super().__init__(groups, group_defaults)
        warn_large_factors(plan.blocks)
        self._constructed = True
        self.blocks: list[PreconditionerBlock] = plan.blocks
        self.module_names: dict[nn.Module, str] = plan.module_names
        self.parameter_names: dict[int, str] = parameter_names(model)
        self.steps: int = 0
        self.skipped_steps: int = 0
        self.skip_nonfinite = skip_nonfinite
        self._grad_scales = GradScales(init_grad_scale)
        self._foreign_updates = ForeignUpdateWatch(self.blocks)
        self._unrecorded: set[str] = set()  # Kronecker blocks already warned about
        self._sync = sync
        self._recording_any = False
        self._set_recording()
        self.hook_handles: list[Any] = list(plan.install(self._record))
        self._capture = MapCapture(model, plan.map_targets(self._record), self._is_recording)
        self.hook_handles += self._capture.install()
        self._install_checkpoint_hooks()

    # ------------------------------------------------------------------ set-up
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; only possible while the optimizer is being created.

        Raises:
            RuntimeError: After construction: the blocks and hooks are set up once;
                create a new optimizer instead.
        """
        if getattr(self, "_constructed", False):
            raise RuntimeError(
                "SINGD sets up its blocks and hooks at construction; pass every "
                "parameter group to the constructor"
            )
        super().add_param_group(param_group)

    @staticmethod
    def preconditioner_dims(module: nn.Module) -> tuple[int, int]:
        """Return ``(dim_K, dim_C)`` of a layer module whose weight and bias are trained.

        Raises:
            TypeError: If the layer is not supported.
        """
        return _preconditioner_dims(module)

    # ------------------------------------------------------------------ step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Update the preconditioners (on update steps) and the parameters.

        A step is skipped, leaving the whole state untouched, when a
        :class:`torch.amp.GradScaler` found non-finite gradients or (with
        ``skip_nonfinite``) a direction or a new ``K, C`` is not finite; the curvature
        recorded for it is dropped, :attr:`skipped_steps` counts it and :attr:`steps`
        does not. A warning reports the 1st, 2nd, 4th, 8th, ... skipped step. With
        several processes the step is skipped on all of them when one of them finds
        a reason to.

        The step computes in :func:`torch.inference_mode`: the parameters stay ordinary
        tensors, the optimizer's state tensors are inference tensors (not to be changed
        in place outside that mode), and :meth:`state_dict` holds ordinary copies of them.

        Args:
            closure: Optional callable that re-evaluates the model (forward and
                backward) and returns the loss; it runs with gradients enabled.

        Returns:
            The closure's return value, or ``None`` without a closure.

        Raises:
            RuntimeError: On every process, when the gradient scalers of some
                processes found non-finite gradients and others did not (call
                :meth:`synchronize_gradients` before the scaler's ``unscale_`` and
                ``step``).
            ValueError: On every process, when a weight is used as different maps
                (linear, convolution, embedding) on different processes.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._foreign_updates.check()
        grad_factor = self._grad_scales.resolve(self.steps, self.__dict__)
        skipped, found_inf = self._scaler_decision()
        taken = False
        if not skipped:
            with torch.inference_mode():
                taken = self._step(grad_factor, found_inf)
        if taken:
            self.steps += 1
            self._grad_scales.forget_before(self.steps)
        if self._recording_any:  # parameters that became element-wise need no more calls
            self._capture.drop(lambda target: target.active())
        self._set_recording()
        self._foreign_updates.remember()
        return loss

    def _step(self, grad_factor: float, found_inf: Tensor | None = None) -> bool:
        """Propose, check (with a scaler's ``found_inf``), commit, apply; return if taken.

        With several processes, the blocks' open decisions are taken together first
        (a deferred block's choice), and every process votes on skipping the step.
        """
        sync = self._sync
        if sync is not None:
            sync.decide(self.blocks)
        working = [block.for_step() for block in self.blocks]  # a deferred block's choice
        warn_unrecorded(working, self._unrecorded)
        gradients = sync.prepare_step(working, self.param_groups) if sync else None
        updating = any(block.has_curvature() for block in working)
        context = StepContext(
            step=self.steps,
            grad_factor=grad_factor,
            grad_unscaling=self._grad_scales.unscaling(self.steps) if updating else 1.0,
            gradients=gradients,
        )
        computed = [block for block in working if sync is None or sync.computes(block)]
        proposals = propose_blocks(computed, self.param_groups, context)
        votes = self._local_votes(proposals, found_inf)
        if sync is not None:
            votes = sync.exchange(working, proposals, votes, self.param_groups, context)
        if votes is not None and self._skips(votes, working):
            self._skip(bool(votes[1] > 0), working)
            return False
        taken = [(block, proposals[block.name]) for block in working]
        for _, proposal in taken:
            proposal.commit()
        self.blocks[:] = working  # a block that turned into another is replaced for good
        apply_directions(self, taken, sync.fit_update if sync is not None else None)
        return True
