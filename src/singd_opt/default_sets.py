r"""The two sets of defaults of :class:`~singd_opt.SINGD`: recommended and reference.

``SINGD(model, lr=...)`` takes every argument it is not given from a set of defaults,
chosen by the keyword ``defaults``:

- ``"recommended"`` (the default): the configuration that the measurements in
  ``benchmarks/defaults_study.py`` chose, for use in place of AdamW with AdamW's
  learning rate (see the Differences page of the documentation for the math);
- ``"reference"``: the defaults of the reference implementation (``singd`` 0.0.5):
  dense factors, absolute damping, no grafting, a summed momentum of 0.9, only
  ``Linear`` and ``Conv`` layers trained.

An argument passed explicitly (positionally or by keyword) always wins over either set;
parameter groups override both, as in every PyTorch optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from singd_opt.structure_choice import ADAMW_BUDGET, AUTO_BUDGET


class _Default:
    """The marker of an argument that was not passed (takes the set's value)."""

    def __repr__(self) -> str:
        return "DEFAULT"

    def __reduce__(self) -> str:
        return "DEFAULT"


#: The value of a constructor argument that takes its value from the set of defaults.
DEFAULT: Any = _Default()

#: The reference's defaults.
REFERENCE: Mapping[str, Any] = {
    "lr": 0.001,
    "momentum": 0.9,
    "damping": 0.001,
    "alpha1": 0.5,
    "weight_decay": 0.0,
    "T": 10,
    "loss_average": "batch",
    "lr_cov": 1e-2,
    "structures": ("dense", "dense"),
    "normalize_lr_cov": False,
    "train_all_parameters": False,
    "warm_start": False,
    "relative_damping": 0.0,
    "graft": None,
    "momentum_dampening": False,
    "tied_embeddings": "kronecker",
    "packed_projections": "whole",
    "auto_budget": AUTO_BUDGET,
    "elementwise_below": 0,
}

#: The arguments the sets give values to.
SETTINGS: tuple[str, ...] = tuple(REFERENCE)

#: The measured recommendation (see ``benchmarks/results/defaults_study.json``).
RECOMMENDED: Mapping[str, Any] = {
    **REFERENCE,
    "momentum": 0.7,
    "damping": 1e-8,
    "relative_damping": 0.1,
    "alpha1": 0.0,
    "T": 1,
    "lr_cov": 0.1,
    "structures": ("auto", "auto"),
    "train_all_parameters": True,
    "warm_start": True,
    "graft": "adafactor",
    "normalize_lr_cov": "spectral",
    "momentum_dampening": "bias_corrected",
    "tied_embeddings": "elementwise",
    "packed_projections": "split",
    "elementwise_below": 1024,
    "auto_budget": ADAMW_BUDGET,
}

#: The sets by name.
DEFAULT_SETS: Mapping[str, Mapping[str, Any]] = {
    "recommended": RECOMMENDED,
    "reference": REFERENCE,
}


def resolve_defaults(name: object, passed: Mapping[str, Any]) -> dict[str, Any]:
    """Return the arguments with every :data:`DEFAULT` replaced by the set's value.

    Args:
        name: The set's name, ``"recommended"`` or ``"reference"``.
        passed: The constructor's arguments of the sets' keys, :data:`DEFAULT` where
            not given.

    Raises:
        ValueError: If ``name`` names no set; the message lists the valid names.
    """
    if not isinstance(name, str) or name not in DEFAULT_SETS:
        raise ValueError(
            f"defaults must be one of {', '.join(map(repr, DEFAULT_SETS))}, got {name!r}"
        )
    values = DEFAULT_SETS[name]
    return {key: values[key] if value is DEFAULT else value for key, value in passed.items()}
