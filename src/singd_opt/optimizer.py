"""The SINGD optimizer: structured inverse-free natural gradient descent.

Lin, Dangel, Eschenhagen, Neklyudov, Kristiadi, Turner, Makhzani: "Structured
Inverse-Free Natural Gradient Descent: Memory-Efficient & Numerically-Stable KFAC",
ICML 2024 (arXiv 2312.05705). The per-layer equations live in
:mod:`singd_opt.preconditioner`, the layer-specific processing in
:mod:`singd_opt.layers` and the curvature collection in :mod:`singd_opt.hooks`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.parallel import DataParallel, DistributedDataParallel
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from singd_opt.checkpoint import matrix_from_state, matrix_to_state
from singd_opt.hooks import PendingTerms, install_hooks
from singd_opt.layers import (
    LOSS_AVERAGES,
    SUPPORTED_MODULES,
    Layer,
    make_layer,
)
from singd_opt.layers import preconditioner_dims as _preconditioner_dims
from singd_opt.preconditioner import (
    UpdateConfig,
    all_finite,
    gram,
    natural_gradient,
    update_preconditioner,
)
from singd_opt.validation import (
    check_flag,
    check_group,
    check_init_grad_scale,
    resolve_structure,
)
from singd_opt.warm_start import fixed_point_factors
from structmat import StructuredMatrix, get_structure

_CALLABLE = "<callable>"  # stands for a callable ``lr_cov`` in a state_dict


class StructureTable(Mapping[str, type[StructuredMatrix]]):
    """Read-only mapping from the standard structure names to their structmat classes.

    Classes are looked up in the structmat registry on access.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._names = tuple(names)

    def __getitem__(self, name: str) -> type[StructuredMatrix]:
        if name not in self._names:
            raise KeyError(name)
        return get_structure(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"StructureTable({list(self._names)})"


class SINGD(Optimizer):
    r"""Structured inverse-free natural gradient descent (uses the empirical Fisher).

    For every supported layer (:class:`~torch.nn.Linear`, :class:`~torch.nn.Conv1d`,
    :class:`~torch.nn.Conv2d`, :class:`~torch.nn.Conv3d`) the optimizer keeps the
    factors ``K`` (input side) and ``C`` (output side) of the inverse preconditioner
    :math:`(C C^\top) \otimes (K K^\top)`, both starting at the identity, and the
    momenta ``m_K, m_C`` (only when ``alpha1 != 0``). Every step preconditions the
    gradient matrix :math:`G` (weight flattened to ``d_out x d_in``, bias as the last
    column) and updates the parameters :math:`\theta`:

    .. math::
        N = C C^\top G K K^\top, \quad
        b \leftarrow \mu b + N + \gamma \theta, \quad
        \theta \leftarrow \theta - \beta_2 b.

    Every ``T``-th step also updates ``K, C`` from the curvature collected in that
    step's backward passes (see :mod:`singd_opt.preconditioner`).

    Attributes:
        SUPPORTED_STRUCTURES: The standard structure names and their structmat classes;
            every other name registered in structmat is accepted as well.
        SUPPORTED_MODULES: The layer types that are trained.
        SUPPORTED_LOSS_AVERAGE: The valid values of ``loss_average``.
        STATE_ATTRIBUTES: Attributes saved by :meth:`state_dict` besides the torch state.
        module_names: Trained layers and their names in the model.
        Ks, Cs, m_Ks, m_Cs: ``K, C, m_K, m_C`` per layer name.
        steps: Number of calls to :meth:`step` so far.
        hook_handles: Handles of the forward hooks installed on the layers.
    """

    SUPPORTED_STRUCTURES: ClassVar[Mapping[str, type[StructuredMatrix]]] = StructureTable(
        (
            "dense",
            "diagonal",
            "block30diagonal",
            "hierarchical15_15",
            "triltoeplitz",
            "triutoeplitz",
        )
    )
    SUPPORTED_MODULES: ClassVar[tuple[type[nn.Module], ...]] = SUPPORTED_MODULES
    SUPPORTED_LOSS_AVERAGE: ClassVar[tuple[str | None, ...]] = LOSS_AVERAGES
    STATE_ATTRIBUTES: ClassVar[tuple[str, ...]] = (
        "steps",
        "_grad_scales",
        "Ks",
        "Cs",
        "m_Ks",
        "m_Cs",
        "H_Ks",
        "H_Cs",
        "H_counts",
    )
    _step_supports_amp_scaling = True  # GradScaler passes grad_scale and found_inf

    def __init__(
        self,
        model: nn.Module,
        params: Iterable[nn.Parameter] | Iterable[dict[str, Any]] | None = None,
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
        warn_unsupported: bool = True,
        kfac_like: bool = False,
        preconditioner_dtype: tuple[torch.dtype | None, torch.dtype | None] = (None, None),
        init_grad_scale: float = 1.0,
        normalize_lr_cov: bool = False,
        warm_start: bool = False,
    ) -> None:
        r"""Create the optimizer and install its hooks on ``model``.

        Args:
            model: The network; its supported layers are trained.
            params: ``None`` (every trainable parameter of a supported layer), an
                iterable of parameters, or parameter groups (dicts with ``"params"``
                and any of the hyper-parameters below, including ``structures``).
                A layer's weight and bias must be in the same group.
            lr: :math:`\beta_2`, learning rate of the parameters.
            momentum: :math:`\alpha_2`, momentum of the parameter updates.
            damping: :math:`\lambda`, damping of the preconditioner.
            alpha1: :math:`\alpha_1 \in [0, 1]`, Riemannian momentum of ``K, C``.
            weight_decay: :math:`\gamma`, (coupled) weight decay.
            T: Update ``K, C`` every ``T`` steps.
            loss_average: How the loss averages: ``"batch"`` (mean over the batch),
                ``"batch+sequence"`` (mean over batch and weight-shared positions)
                or ``None`` (a sum).
            lr_cov: :math:`\beta_1`, learning rate of ``K, C``; or a callable mapping
                the step number to it.
            structures: Structure names of ``(K, C)``, e.g. ``("dense", "diagonal")``;
                any name structmat knows.
            kfac_approx: ``"expand"`` or ``"reduce"`` for weight-shared dimensions
                (sequence positions, convolution patches).
            warn_unsupported: Warn about parameters that will not be trained because
                their layer is not supported.
            kfac_like: Use the IKFAC update (sets ``alpha1`` to 0 with a warning).
            preconditioner_dtype: Dtypes of ``(K and m_K, C and m_C)``; ``None``
                means the weight's dtype.
            init_grad_scale: Initial scale of a gradient scaler, if one is used.
            normalize_lr_cov: Divide :math:`\beta_1` by :math:`\max(1, \|m\|_\infty)`
                (normalised gradient descent on ``K, C``).
            warm_start: Replace each layer's first preconditioner update by a jump to
                the fixed point of that update's curvature
                (:func:`singd_opt.warm_start.fixed_point_factors`: exact for dense,
                diagonal and block-diagonal factors, a trace-matched multiple of the
                identity for the others) instead of a Riemannian step from the identity.
                Needs ``damping > 0``. ``False`` (default) keeps the reference behaviour.

        Raises:
            TypeError: For a model wrapped in ``DataParallel`` or
                ``DistributedDataParallel``, or an argument of the wrong type.
            ValueError: For an invalid hyper-parameter, or a layer whose weight and
                bias are in different parameter groups. Nothing changes on error.
        """
        if isinstance(model, DataParallel | DistributedDataParallel):
            raise TypeError(
                "model: DataParallel and DistributedDataParallel wrappers are not supported; "
                "pass the wrapped module instead"
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        defaults: dict[str, Any] = {
            "lr": lr,
            "momentum": momentum,
            "damping": damping,
            "alpha1": alpha1,
            "weight_decay": weight_decay,
            "T": T,
            "loss_average": loss_average,
            "lr_cov": lr_cov,
            "structures": tuple(structures) if isinstance(structures, list) else structures,
            "kfac_approx": kfac_approx,
            "kfac_like": kfac_like,
            "preconditioner_dtype": preconditioner_dtype,
            "normalize_lr_cov": normalize_lr_cov,
            "warm_start": warm_start,
        }
        check_group(defaults)
        check_flag("warn_unsupported", warn_unsupported)
        check_init_grad_scale(init_grad_scale)

        groups = _parameter_groups(model, params, defaults, warn_unsupported)
        for index, group in enumerate(groups):
            check_group(group, index)
        layers = _find_layers(model, groups, warn_unsupported)

        for index, group in enumerate(groups):
            if group["kfac_like"] and group["alpha1"] != 0.0:
                warnings.warn(
                    f"parameter group {index}: kfac_like=True ignores the Riemannian momentum; "
                    f"setting alpha1={group['alpha1']} to 0",
                    stacklevel=2,
                )
                group["alpha1"] = 0.0

        super().__init__(groups, defaults)
        self._constructed = True

        self.steps: int = 0
        self._layers: list[Layer] = layers
        self.module_names: dict[nn.Module, str] = {layer.module: layer.name for layer in layers}
        self._structure_names: dict[str, tuple[str, str]] = {}
        self.Ks: dict[str, StructuredMatrix] = {}
        self.Cs: dict[str, StructuredMatrix] = {}
        self.m_Ks: dict[str, StructuredMatrix] = {}
        self.m_Cs: dict[str, StructuredMatrix] = {}
        self._pending = PendingTerms()
        # (K, C, K K^T, C C^T) per layer name, the products only for structures closed
        # under transposition; dropped whenever K or C changes.
        self._grams: dict[str, tuple[StructuredMatrix, StructuredMatrix, Any, Any]] = {}
        # Gradient scale of the backward passes of each step; -1 is the initial guess.
        self._grad_scales: dict[int, float] = {-1: float(init_grad_scale)}
        self._warned_unscaled = False
        # Layers whose first preconditioner update still has to be a warm start.
        self._cold: set[str] = {
            layer.name for layer in layers if self.param_groups[layer.group_index]["warm_start"]
        }
        for layer in layers:
            self._init_preconditioner(layer)
        self.hook_handles: list[RemovableHandle] = install_hooks(
            layers, self._should_record, self._record
        )

    # ------------------------------------------------------------------ set-up
    def _dtypes(self, layer: Layer, group: Mapping[str, Any]) -> tuple[torch.dtype, torch.dtype]:
        dtype_K, dtype_C = group["preconditioner_dtype"]
        weight_dtype = layer.module.weight.dtype
        return dtype_K or weight_dtype, dtype_C or weight_dtype

    def _init_preconditioner(self, layer: Layer) -> None:
        group = self.param_groups[layer.group_index]
        name_K, name_C = group["structures"]
        cls_K, cls_C = resolve_structure(name_K), resolve_structure(name_C)
        dtype_K, dtype_C = self._dtypes(layer, group)
        device = layer.module.weight.device
        self._structure_names[layer.name] = (name_K, name_C)
        self.Ks[layer.name] = cls_K.eye(layer.dim_K, dtype=dtype_K, device=device)
        self.Cs[layer.name] = cls_C.eye(layer.dim_C, dtype=dtype_C, device=device)
        if group["alpha1"] != 0.0:
            self.m_Ks[layer.name] = cls_K.zeros(layer.dim_K, dtype=dtype_K, device=device)
            self.m_Cs[layer.name] = cls_C.zeros(layer.dim_C, dtype=dtype_C, device=device)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; only possible while the optimizer is being created.

        Raises:
            RuntimeError: After construction: the layers, hooks and
                preconditioners are set up once; create a new optimizer instead.
        """
        if getattr(self, "_constructed", False):
            raise RuntimeError(
                "SINGD sets up its layers and preconditioners at construction; pass every "
                "parameter group to the constructor"
            )
        super().add_param_group(param_group)

    @staticmethod
    def preconditioner_dims(module: nn.Module) -> tuple[int, int]:
        """Return ``(dim_K, dim_C)`` of a supported layer whose weight and bias are trained.

        Raises:
            TypeError: If the layer is not supported.
        """
        return _preconditioner_dims(module)

    @property
    def H_Ks(self) -> dict[str, StructuredMatrix]:
        """Curvature terms :math:`H_K` collected since the last update, per layer name."""
        return self._pending.H_Ks

    @property
    def H_Cs(self) -> dict[str, StructuredMatrix]:
        """Curvature terms :math:`H_C` collected since the last update, per layer name."""
        return self._pending.H_Cs

    @property
    def H_counts(self) -> dict[str, tuple[int, int]]:
        """``(input rows, loss terms)`` behind :attr:`H_Ks` and :attr:`H_Cs`, per layer name."""
        return self._pending.counts

    def remove_hooks(self) -> None:
        """Detach the optimizer's hooks from the model (no more curvature is collected)."""
        for handle in self.hook_handles:
            handle.remove()
        self.hook_handles = []

    # ------------------------------------------------------- curvature hooks
    def _should_record(self, layer: Layer) -> bool:
        return self.steps % self.param_groups[layer.group_index]["T"] == 0

    def _record(self, layer: Layer, x: Tensor, grad_output: Tensor) -> None:
        """Add one backward pass's :math:`H_K, H_C` to the layer's pending terms."""
        group = self.param_groups[layer.group_index]
        K, C = self.Ks[layer.name], self.Cs[layer.name]
        kfac_approx, loss_average = group["kfac_approx"], group["loss_average"]
        with torch.no_grad():
            A = layer.input_matrix(x.to(K.dtype), kfac_approx)
            G, loss_terms = layer.grad_output_matrix(
                grad_output.to(C.dtype), loss_average, kfac_approx
            )
            # Un-scale by the previous step's gradient scale (this step's is not known
            # yet); the update finishes the un-scaling, see `_grad_unscaling`.
            prev_scale = self._grad_scales.get(self.steps - 1, 1.0)
            if prev_scale != 1.0:
                G = G / math.sqrt(prev_scale)
            H_K = K.from_inner(A.mT)
            H_C = C.from_inner(G.mT)
        self._pending.add(
            layer.name, H_K, H_C, A.shape[0], loss_terms, mean_loss=loss_average is not None
        )

    # -------------------------------------------------------- gradient scale
    def set_current_grad_scale(self, grad_scale: float) -> None:
        """Set the gradient (loss) scale of the current step's backward passes.

        Needed only when the loss is scaled without handing the scale to
        :meth:`step` through :class:`torch.amp.GradScaler` (which does so itself),
        for example after ``scaler.unscale_(optimizer)``.

        Args:
            grad_scale: The factor the loss was multiplied with.
        """
        check_init_grad_scale(grad_scale)
        self._grad_scales[self.steps] = float(grad_scale)
        if self.steps == 0 and self._grad_scales[-1] == 1.0 and grad_scale != 1.0:
            warnings.warn(
                f"gradient scale {grad_scale} at step 0 but init_grad_scale=1.0; passing "
                f"init_grad_scale={grad_scale} makes the first preconditioner update "
                "numerically safer",
                stacklevel=2,
            )

    def _resolve_grad_scale(self) -> float:
        """Record this step's gradient scale; return the scale the ``.grad``s carry."""
        t = self.steps
        if "grad_scale" in self.__dict__:  # set by GradScaler.step
            scaler_scale = self.__dict__["grad_scale"]
            if scaler_scale is None:  # the scaler already un-scaled the gradients
                if t not in self._grad_scales:
                    if not self._warned_unscaled:
                        warnings.warn(
                            "the gradients were un-scaled before step(); call "
                            "optimizer.set_current_grad_scale(scaler.get_scale()) before "
                            "step() so the preconditioner is un-scaled exactly (assuming "
                            "the previous step's scale)",
                            stacklevel=3,
                        )
                        self._warned_unscaled = True
                    self._grad_scales[t] = self._grad_scales.get(t - 1, 1.0)
                return 1.0
            scale = float(scaler_scale)
            if t not in self._grad_scales:
                self.set_current_grad_scale(scale)
            return scale
        if t not in self._grad_scales:
            self._grad_scales[t] = 1.0
        return self._grad_scales[t]

    def _grad_unscaling(self) -> float:
        """Factor that turns the recorded :math:`H_C` into the un-scaled one.

        The backward hooks divided by the previous step's scale; in total the square
        of this step's scale has to go.
        """
        prev_scale = self._grad_scales.get(self.steps - 1, 1.0)
        scale = self._grad_scales[self.steps]
        if prev_scale == 1.0 and scale == 1.0:
            return 1.0
        return prev_scale / scale**2

    def _remove_used_grad_scales(self) -> None:
        for t in [t for t in self._grad_scales if t < self.steps - 1]:
            del self._grad_scales[t]

    # ------------------------------------------------------------------ step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """Update the preconditioners (on update steps) and the parameters.

        A step whose gradients a :class:`torch.amp.GradScaler` found non-finite is
        skipped with a warning, and the curvature collected for it is dropped.

        Args:
            closure: Optional callable that re-evaluates the model (forward and
                backward) and returns the loss; it runs with gradients enabled.

        Returns:
            The closure's return value, or ``None`` without a closure.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_factor = self._resolve_grad_scale()
        found_inf = self.__dict__.get("found_inf")
        if found_inf is not None and bool(found_inf):
            warnings.warn(
                "non-finite gradients found by the gradient scaler; skipping this step",
                stacklevel=2,
            )
            self._pending.clear()
        else:
            with torch.no_grad():
                self._step(grad_factor)
        self.steps += 1
        self._remove_used_grad_scales()
        return loss

    def _step(self, grad_factor: float) -> None:
        pending = [layer for layer in self._layers if layer.name in self._pending]
        finite: list[bool] = []
        if pending:
            flags = [all_finite(self.H_Ks[layer.name], self.H_Cs[layer.name]) for layer in pending]
            finite = torch.stack(flags).tolist()
        is_finite = {layer.name: ok for layer, ok in zip(pending, finite, strict=True)}
        grad_unscaling = self._grad_unscaling() if pending else 1.0

        for layer in self._layers:
            group = self.param_groups[layer.group_index]
            if layer.name in is_finite:
                H_K, H_C = self._pending.pop(layer.name)
                if is_finite[layer.name]:
                    self._update_preconditioner(layer, group, H_K, H_C, grad_unscaling)
                else:
                    warnings.warn(
                        f"non-finite curvature for layer {layer.name!r}; skipping its "
                        "preconditioner update in this step",
                        stacklevel=3,
                    )
            self._update_parameters(layer, group, grad_factor)

    def _update_preconditioner(
        self,
        layer: Layer,
        group: Mapping[str, Any],
        H_K: StructuredMatrix,
        H_C: StructuredMatrix,
        grad_unscaling: float,
    ) -> None:
        lr_cov = group["lr_cov"]
        if callable(lr_cov):
            lr_cov = lr_cov(self.steps)
        config = UpdateConfig(
            damping=group["damping"],
            alpha1=group["alpha1"],
            kfac_like=group["kfac_like"],
            normalize_lr_cov=group["normalize_lr_cov"],
            lr_cov=lr_cov,
            grad_unscaling=grad_unscaling,
        )
        name = layer.name
        if name in self._cold:  # warm start: jump to the fixed point of this curvature
            self._cold.discard(name)
            self.Ks[name], self.Cs[name] = fixed_point_factors(
                H_K, H_C.mul_(grad_unscaling), float(group["damping"]), group["kfac_like"]
            )
            self._grams.pop(name, None)
            return
        m_K, m_C = update_preconditioner(
            self.Ks[name],
            self.Cs[name],
            self.m_Ks.get(name),
            self.m_Cs.get(name),
            H_K,
            H_C,
            config,
        )
        if config.alpha1 != 0.0:
            self.m_Ks[name], self.m_Cs[name] = m_K, m_C
        self._grams.pop(name, None)

    def _update_parameters(
        self, layer: Layer, group: Mapping[str, Any], grad_factor: float
    ) -> None:
        grad = layer.gradient_matrix()
        if grad is None:
            return
        if grad_factor != 1.0:
            grad = grad / grad_factor
        K, C = self.Ks[layer.name], self.Cs[layer.name]
        cached = self._grams.get(layer.name)
        if cached is None or cached[0] is not K or cached[1] is not C:
            cached = self._grams[layer.name] = (K, C, gram(K), gram(C))
        nat_grad = natural_gradient(K, C, grad, cached[2], cached[3])
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        for param, update in layer.split(nat_grad):
            if weight_decay != 0.0:
                update.add_(param, alpha=weight_decay)
            if momentum != 0.0:
                state = self.state[param]
                buffer = state.get("momentum_buffer")
                if buffer is None:
                    buffer = state["momentum_buffer"] = update.clone()
                else:
                    buffer.mul_(momentum).add_(update)
                update = buffer
            param.add_(update, alpha=-lr)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Return the optimizer state: only tensors and plain Python values.

        Structured matrices appear as ``{"structure": name, "tensors": {...}}``; a
        callable ``lr_cov`` as the string ``"<callable>"`` (the loading optimizer
        keeps its own). The tensors are the live ones, not copies (as in torch).
        """
        state = super().state_dict()
        for group in state["param_groups"]:
            if callable(group["lr_cov"]):
                group["lr_cov"] = _CALLABLE

        def matrices(store: Mapping[str, StructuredMatrix], side: int) -> dict[str, Any]:
            return {
                name: matrix_to_state(self._structure_names[name][side], matrix)
                for name, matrix in store.items()
            }

        state["steps"] = self.steps
        state["_grad_scales"] = dict(self._grad_scales)
        state["Ks"], state["Cs"] = matrices(self.Ks, 0), matrices(self.Cs, 1)
        state["m_Ks"], state["m_Cs"] = matrices(self.m_Ks, 0), matrices(self.m_Cs, 1)
        state["H_Ks"], state["H_Cs"] = matrices(self.H_Ks, 0), matrices(self.H_Cs, 1)
        state["H_counts"] = {name: list(counts) for name, counts in self.H_counts.items()}
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a state from :meth:`state_dict` (of an optimizer on the same model).

        Raises:
            ValueError: If the state does not fit this optimizer; nothing changes then.
        """
        state = dict(state_dict)
        missing = [key for key in self.STATE_ATTRIBUTES if key not in state]
        if missing:
            raise ValueError(f"state_dict: missing SINGD entries {missing}")
        extra = {key: state.pop(key) for key in self.STATE_ATTRIBUTES}

        groups = state.get("param_groups")
        if not isinstance(groups, list) or len(groups) != len(self.param_groups):
            raise ValueError(
                f"state_dict: expected {len(self.param_groups)} parameter groups, got "
                f"{len(groups) if isinstance(groups, list) else groups!r}"
            )
        new_groups = []
        for index, (saved, current) in enumerate(zip(groups, self.param_groups, strict=True)):
            group = dict(saved)
            if group.get("lr_cov") == _CALLABLE:
                if not callable(current["lr_cov"]):
                    raise ValueError(
                        f"state_dict: parameter group {index} has a callable lr_cov; create "
                        "the optimizer with a callable lr_cov to load it"
                    )
                group["lr_cov"] = current["lr_cov"]
            filled = {**current, **group}
            check_group(filled, index)
            new_groups.append(group)
        state["param_groups"] = new_groups

        steps = extra["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"state_dict: steps must be a non-negative int, got {steps!r}")
        scales = extra["_grad_scales"]
        if not isinstance(scales, dict) or not all(
            isinstance(k, int) and isinstance(v, int | float) for k, v in scales.items()
        ):
            raise ValueError("state_dict: _grad_scales must map ints to numbers")

        names = set(self.Ks)
        structure_names: dict[str, list[str]] = {}
        loaded: dict[str, dict[str, StructuredMatrix]] = {}
        for key in ("Ks", "Cs", "m_Ks", "m_Cs", "H_Ks", "H_Cs"):
            entries = extra[key]
            required = key in ("Ks", "Cs")
            if not isinstance(entries, dict) or (
                set(entries) != names if required else not set(entries) <= names
            ):
                raise ValueError(
                    f"state_dict: {key} must hold entries for the layers {sorted(names)}"
                )
            loaded[key] = {}
            side = 0 if key.endswith("Ks") else 1
            for layer in self._layers:
                if layer.name not in entries:
                    continue
                group = {**self.param_groups[layer.group_index], **new_groups[layer.group_index]}
                dtype = self._dtypes(layer, group)[side]
                dim = layer.dim_K if side == 0 else layer.dim_C
                structure, matrix = matrix_from_state(
                    entries[layer.name],
                    dim,
                    dtype,
                    layer.module.weight.device,
                    f"{key}[{layer.name!r}]",
                )
                structure_names.setdefault(layer.name, ["", ""])
                previous = structure_names[layer.name][side]
                if previous and previous != structure:
                    raise ValueError(
                        f"state_dict: layer {layer.name!r} mixes structures {previous!r} and "
                        f"{structure!r}"
                    )
                structure_names[layer.name][side] = structure
                loaded[key][layer.name] = matrix
        if set(loaded["H_Ks"]) != set(loaded["H_Cs"]):
            raise ValueError("state_dict: H_Ks and H_Cs must hold the same layers")
        counts = extra["H_counts"]
        if not isinstance(counts, dict) or set(counts) != set(loaded["H_Ks"]):
            raise ValueError("state_dict: H_counts must hold the layers of H_Ks")
        for name, value in counts.items():
            if not (
                isinstance(value, list | tuple)
                and len(value) == 2
                and all(isinstance(v, int) and v > 0 for v in value)
            ):
                raise ValueError(f"state_dict: H_counts[{name!r}] must be two positive ints")

        super().load_state_dict(state)

        self.steps = steps
        # A state from step 0 has had no preconditioner update yet.
        self._cold = {
            layer.name
            for layer in self._layers
            if steps == 0 and self.param_groups[layer.group_index].get("warm_start", False)
        }
        self._grad_scales = {int(k): float(v) for k, v in scales.items()}
        self._structure_names = {
            name: (sides[0], sides[1]) for name, sides in structure_names.items()
        }
        self.Ks, self.Cs = loaded["Ks"], loaded["Cs"]
        self.m_Ks, self.m_Cs = loaded["m_Ks"], loaded["m_Cs"]
        self._grams.clear()
        self._pending.clear()
        for name in loaded["H_Ks"]:
            self._pending.H_Ks[name] = loaded["H_Ks"][name]
            self._pending.H_Cs[name] = loaded["H_Cs"][name]
            rows, terms = counts[name]
            self._pending.counts[name] = (int(rows), int(terms))


# ---------------------------------------------------------------------- helpers
def _parameter_groups(
    model: nn.Module,
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]] | None,
    defaults: Mapping[str, Any],
    warn_unsupported: bool,
) -> list[dict[str, Any]]:
    """Return default-filled parameter groups (new dicts; the caller's are not touched).

    Raises:
        TypeError: If ``params`` is malformed.
    """
    if params is None:
        trainable = []
        for name, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if isinstance(module, SUPPORTED_MODULES):
                trainable.extend(
                    p for p in (module.weight, module.bias) if p is not None and p.requires_grad
                )
            elif warn_unsupported:
                warnings.warn(
                    f"layer {name!r} ({type(module).__name__}) is not supported by SINGD; its "
                    "parameters will not be trained (warn_unsupported=False silences this)",
                    stacklevel=4,
                )
        return [{**defaults, "params": trainable}]
    if isinstance(params, Tensor):
        raise TypeError("params must be an iterable of parameters or of dicts, got a tensor")
    entries = list(params)
    if not entries:
        return [{**defaults, "params": []}]
    if all(isinstance(entry, dict) for entry in entries):
        groups = []
        for index, entry in enumerate(entries):
            if "params" not in entry:
                raise TypeError(f"params: parameter group {index} has no 'params' entry")
            group = {**defaults, **entry}
            if isinstance(group["structures"], list):
                group["structures"] = tuple(group["structures"])
            group_params = group["params"]
            group["params"] = (
                [group_params] if isinstance(group_params, Tensor) else list(group_params)
            )
            groups.append(group)
        return groups
    if any(isinstance(entry, dict) for entry in entries):
        raise TypeError("params must hold either only parameters or only parameter groups (dicts)")
    return [{**defaults, "params": entries}]


def _find_layers(
    model: nn.Module, groups: list[dict[str, Any]], warn_unsupported: bool
) -> list[Layer]:
    """Return the trained layers, in the order of ``model.named_modules()``.

    Raises:
        ValueError: If a layer's weight and bias are in different groups, or a
            parameter belongs to two trained layers.
    """
    group_of: dict[int, int] = {}
    for index, group in enumerate(groups):
        for param in group["params"]:
            group_of.setdefault(id(param), index)
    owner: dict[int, str] = {}
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, SUPPORTED_MODULES):
            continue
        weight = module.weight if id(module.weight) in group_of else None
        bias = module.bias if module.bias is not None and id(module.bias) in group_of else None
        if weight is None and bias is None:
            continue
        indices = {group_of[id(p)] for p in (weight, bias) if p is not None}
        if len(indices) > 1:
            raise ValueError(
                f"params: the weight and bias of layer {name!r} are in different parameter "
                f"groups {sorted(indices)}; put them into the same group"
            )
        for param in (weight, bias):
            if param is not None:
                if id(param) in owner:
                    raise ValueError(
                        f"params: a parameter is shared by layers {owner[id(param)]!r} and "
                        f"{name!r}; SINGD needs one layer per parameter"
                    )
                owner[id(param)] = name
        layers.append(make_layer(name, module, weight, bias, indices.pop()))
    if warn_unsupported:
        untrained = [
            param for group in groups for param in group["params"] if id(param) not in owner
        ]
        if untrained:
            warnings.warn(
                f"{len(untrained)} of the given parameters do not belong to a supported layer "
                f"({', '.join(t.__name__ for t in SUPPORTED_MODULES)}) of the model and will "
                "not be trained",
                stacklevel=4,
            )
    return layers
