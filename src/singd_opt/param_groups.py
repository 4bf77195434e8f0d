"""Parameter groups: which parameters the optimizer trains, with which hyper-parameters.

``params=None`` means every trainable parameter of the model (with
``train_all_parameters=False`` only those of ``Linear`` and ``Conv1d/2d/3d`` modules,
as in the reference). Otherwise ``params`` is an iterable of parameters or of
parameter groups (dicts with ``"params"`` and any hyper-parameter), filled with the
constructor's values for what they leave out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from singd_opt.layers import SUPPORTED_MODULES
from singd_opt.user_warnings import warn_user
from singd_opt.validation import check_group


def parameter_groups(
    model: nn.Module,
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]] | None,
    defaults: Mapping[str, Any],
    train_all: bool,
    warn_unsupported: bool,
) -> list[dict[str, Any]]:
    """Return default-filled parameter groups (new dicts; the caller's are not touched).

    ``params=None`` means every trainable parameter of the model (with
    ``train_all=False``: those of ``Linear`` and ``Conv1d/2d/3d`` modules, warning about
    the others unless ``warn_unsupported`` is false).

    Every group is validated; ``kfac_like`` groups get ``alpha1 = 0`` (with a warning
    if it was set).

    Raises:
        TypeError: If ``params`` is malformed, or a hyper-parameter has the wrong type.
        ValueError: For an invalid hyper-parameter, or nothing to train.
    """
    groups = _raw_groups(model, params, defaults, train_all, warn_unsupported)
    for index, group in enumerate(groups):
        check_group(group, index)
    if not any(group["params"] for group in groups):
        raise ValueError(
            "params: there is no parameter to train (the model has no trainable "
            "parameters, or params is empty)"
        )
    for index, group in enumerate(groups):
        if group["kfac_like"] and group["alpha1"] != 0.0:
            warn_user(
                f"parameter group {index}: kfac_like=True ignores the Riemannian momentum; "
                f"setting alpha1={group['alpha1']} to 0"
            )
            group["alpha1"] = 0.0
    return groups


def _raw_groups(
    model: nn.Module,
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]] | None,
    defaults: Mapping[str, Any],
    train_all: bool,
    warn_unsupported: bool,
) -> list[dict[str, Any]]:
    if params is None:
        if train_all:
            trainable = [p for p in model.parameters() if p.requires_grad]
            return [{**defaults, "params": trainable}]
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
                warn_user(
                    f"layer {name!r} ({type(module).__name__}) is not supported by SINGD; its "
                    "parameters will not be trained (warn_unsupported=False silences this; "
                    "train_all_parameters=True trains them)"
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
