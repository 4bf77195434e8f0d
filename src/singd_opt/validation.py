"""Checks of the optimizer's arguments and hyper-parameters, before any state changes."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any

import torch

from singd_opt.default_sets import SETTINGS, resolve_defaults
from singd_opt.grafting import GRAFTS
from singd_opt.layers.base import KFAC_APPROXIMATIONS, LOSS_AVERAGES
from singd_opt.packed import PACKED_PROJECTIONS
from singd_opt.preconditioner import NORMALIZE_LR_COV
from singd_opt.structure_choice import ADAMW_BUDGET, AUTO
from singd_opt.structures import resolve_structure, where
from singd_opt.update import MOMENTUM_DAMPENINGS

HYPERPARAMETERS: tuple[str, ...] = (
    "lr",
    "momentum",
    "damping",
    "alpha1",
    "weight_decay",
    "T",
    "loss_average",
    "lr_cov",
    "structures",
    "kfac_approx",
    "kfac_like",
    "preconditioner_dtype",
    "normalize_lr_cov",
    "elementwise_lr",
    "elementwise_beta2",
    "elementwise_eps",
    "max_update_rms",
    "warm_start",
    "relative_damping",
    "graft",
    "momentum_dampening",
    "tied_embeddings",
    "packed_projections",
    "auto_budget",
    "elementwise_below",
)

#: The valid values of ``tied_embeddings``.
TIED_EMBEDDINGS: tuple[str, ...] = ("elementwise", "kronecker")


def _is_real(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and value.dtype.is_floating_point
    return isinstance(value, Real)


def check_nonnegative(name: str, value: object, group_index: int | None = None) -> None:
    """Require a finite real number ``>= 0``.

    Raises:
        TypeError: If ``value`` is not a real number.
        ValueError: If it is negative, NaN or infinite.
    """
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number{where(group_index)}, got {value!r}")
    number = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(number) and number >= 0.0):
        raise ValueError(f"{name} must be finite and >= 0{where(group_index)}, got {value!r}")


def check_interval(
    name: str, value: object, group_index: int | None = None, closed: bool = True
) -> None:
    """Require a real number in ``[0, 1]`` (``closed``) or ``[0, 1)``.

    Raises:
        TypeError: If ``value`` is not a real number.
        ValueError: If it lies outside the interval.
    """
    check_nonnegative(name, value, group_index)
    number = float(value)  # type: ignore[arg-type]
    if number > 1.0 or (not closed and number == 1.0):
        interval = "[0, 1]" if closed else "[0, 1)"
        raise ValueError(f"{name} must lie in {interval}{where(group_index)}, got {value!r}")


def check_positive(name: str, value: object, group_index: int | None = None) -> None:
    """Require a finite real number ``> 0``.

    Raises:
        TypeError: If ``value`` is not a real number.
        ValueError: If it is not finite and positive.
    """
    check_nonnegative(name, value, group_index)
    if float(value) == 0.0:  # type: ignore[arg-type]
        raise ValueError(f"{name} must be finite and > 0{where(group_index)}, got {value!r}")


def check_flag(name: str, value: object, group_index: int | None = None) -> None:
    """Require a ``bool``.

    Raises:
        TypeError: If ``value`` is not a bool.
    """
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False{where(group_index)}, got {value!r}")


def check_flag_or_name(
    name: str,
    value: object,
    choices: tuple[bool | str, ...],
    group_index: int | None = None,
    wrong_type: type[Exception] = TypeError,
) -> None:
    """Require a ``bool`` or one of the names among ``choices``.

    Raises:
        ValueError: If ``value`` is a string that is not a choice; the message lists them.
        TypeError: If ``value`` is neither a bool nor a string (``wrong_type``).
    """
    if isinstance(value, bool) or (isinstance(value, str) and value in choices):
        return
    listed = ", ".join(map(repr, choices))
    error = ValueError if isinstance(value, str) else wrong_type
    raise error(f"{name} must be one of {listed}{where(group_index)}, got {value!r}")


def check_budget(value: object, group_index: int | None = None) -> None:
    """Require ``auto_budget`` to be ``"adamw"`` or a finite number ``> 0``.

    Raises:
        ValueError: If ``value`` is another string, or a number that is not positive.
        TypeError: If ``value`` is neither a string nor a real number.
    """
    if isinstance(value, str):
        if value != ADAMW_BUDGET:
            raise ValueError(
                f"auto_budget must be {ADAMW_BUDGET!r} or a number > 0{where(group_index)}, "
                f"got {value!r}"
            )
        return
    check_positive("auto_budget", value, group_index)


def check_group(group: dict[str, Any], group_index: int | None = None) -> None:
    """Validate every SINGD hyper-parameter of a (default-filled) parameter group.

    Raises:
        TypeError: For a value of the wrong type.
        ValueError: For a value out of range or not among the valid choices.
    """
    in_group = where(group_index)
    for name in ("lr", "damping", "weight_decay"):
        check_nonnegative(name, group[name], group_index)
    check_interval("momentum", group["momentum"], group_index, closed=False)
    check_interval("alpha1", group["alpha1"], group_index, closed=True)
    check_interval("elementwise_beta2", group["elementwise_beta2"], group_index, closed=False)
    check_positive("elementwise_eps", group["elementwise_eps"], group_index)
    if group["elementwise_lr"] is not None:
        check_nonnegative("elementwise_lr", group["elementwise_lr"], group_index)
    if group["max_update_rms"] is not None:
        check_positive("max_update_rms", group["max_update_rms"], group_index)

    for name, least in (("T", 1), ("elementwise_below", 0)):
        value = group[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int{in_group}, got {value!r}")
        if value < least:
            raise ValueError(f"{name} must be >= {least}{in_group}, got {value}")

    lr_cov: float | Callable[[int], float] = group["lr_cov"]
    if not callable(lr_cov):
        check_nonnegative("lr_cov", lr_cov, group_index)

    if group["loss_average"] not in LOSS_AVERAGES:
        raise ValueError(
            f"loss_average must be one of {LOSS_AVERAGES}{in_group}, got {group['loss_average']!r}"
        )
    if group["kfac_approx"] not in KFAC_APPROXIMATIONS:
        raise ValueError(
            f"kfac_approx must be one of {KFAC_APPROXIMATIONS}{in_group}, "
            f"got {group['kfac_approx']!r}"
        )

    structures = group["structures"]
    if isinstance(structures, str) or not isinstance(structures, tuple | list):
        raise TypeError(
            "structures must be a pair (structure of K, structure of C)"
            f"{in_group}, got {structures!r}"
        )
    if len(structures) != 2:
        raise ValueError(f"structures must have two entries{in_group}, got {structures!r}")
    for name in structures:
        if name != AUTO:
            resolve_structure(name, group_index=group_index)

    dtypes = group["preconditioner_dtype"]
    if not isinstance(dtypes, tuple | list) or len(dtypes) != 2:
        raise TypeError(
            f"preconditioner_dtype must be a pair (dtype of K, dtype of C), each a floating "
            f"torch.dtype or None{in_group}, got {dtypes!r}"
        )
    for dtype in dtypes:
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(
                f"preconditioner_dtype entries must be floating torch.dtypes or None{in_group}, "
                f"got {dtype!r}"
            )

    check_flag("kfac_like", group["kfac_like"], group_index)
    check_flag_or_name("normalize_lr_cov", group["normalize_lr_cov"], NORMALIZE_LR_COV, group_index)
    check_flag("warm_start", group["warm_start"], group_index)
    check_nonnegative("relative_damping", group["relative_damping"], group_index)
    check_budget(group["auto_budget"], group_index)
    check_flag_or_name(
        "momentum_dampening",
        group["momentum_dampening"],
        MOMENTUM_DAMPENINGS,
        group_index,
        wrong_type=ValueError,
    )
    for option, choices in (
        ("tied_embeddings", TIED_EMBEDDINGS),
        ("packed_projections", PACKED_PROJECTIONS),
    ):
        if group[option] not in choices:
            raise ValueError(
                f"{option} must be one of {', '.join(map(repr, choices))}{in_group}, "
                f"got {group[option]!r}"
            )
    if group["graft"] not in GRAFTS:
        raise ValueError(f"graft must be one of {GRAFTS}{in_group}, got {group['graft']!r}")
    if group["warm_start"] and float(group["damping"]) + float(group["relative_damping"]) == 0.0:
        raise ValueError(
            f"warm_start=True needs damping > 0 or relative_damping > 0 (the fixed point of "
            f"a singular curvature does not exist){in_group}"
        )


def check_init_grad_scale(value: object) -> None:
    """Require a finite positive number.

    Raises:
        TypeError: If ``value`` is not a real number.
        ValueError: If it is not finite and positive.
    """
    check_positive("init_grad_scale", value)


def check_constructor_flags(
    *,
    warn_unsupported: object,
    train_all_parameters: object,
    skip_nonfinite: object,
    average_gradients: object,
    init_grad_scale: object,
) -> None:
    """Validate the constructor's arguments that are not hyper-parameters of a group.

    Raises:
        TypeError: For a flag that is not a bool (``average_gradients`` may be ``None``)
            or an ``init_grad_scale`` that is not a number.
        ValueError: For an ``init_grad_scale`` that is not finite and positive.
    """
    for flag, value in (
        ("warn_unsupported", warn_unsupported),
        ("train_all_parameters", train_all_parameters),
        ("skip_nonfinite", skip_nonfinite),
    ):
        check_flag(flag, value)
    if average_gradients is not None:
        check_flag("average_gradients", average_gradients)
    check_init_grad_scale(init_grad_scale)


def group_defaults_of(defaults: str, passed: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """The constructor's group hyper-parameters and ``train_all_parameters``, validated.

    Arguments left at ``DEFAULT`` take their value from the set named by ``defaults``
    (:mod:`singd_opt.default_sets`).

    Args:
        defaults: ``"recommended"`` or ``"reference"``.
        passed: The constructor's arguments by name.

    Returns:
        The defaults of the parameter groups (every name of :data:`HYPERPARAMETERS`)
        and whether every parameter is trained.

    Raises:
        TypeError, ValueError: As :func:`check_group`, or for an unknown ``defaults``.
    """
    arguments = resolve_defaults(defaults, {k: v for k, v in passed.items() if k in SETTINGS})
    train_all = arguments.pop("train_all_parameters")
    group = {k: v for k, v in {**passed, **arguments}.items() if k in HYPERPARAMETERS}
    if isinstance(group["structures"], list):
        group["structures"] = tuple(group["structures"])
    check_group(group)
    return group, train_all
