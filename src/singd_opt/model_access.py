"""The module a user hands the optimizer: unwrapped, with its parameters' names.

``SINGD(model)`` accepts the bare model, a ``DistributedDataParallel`` wrapper (whose
module it trains) and a ``torch.compile`` wrapper (whose original module it trains, so
block names and states are the same with and without compilation).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel


def _compiled_inner(model: object) -> nn.Module | None:
    """The module inside a ``torch.compile`` wrapper (``OptimizedModule``), else ``None``."""
    inner = getattr(model, "_orig_mod", None)
    if isinstance(model, nn.Module) and isinstance(inner, nn.Module):
        return inner
    return None


def unwrap_model(model: object) -> tuple[nn.Module, bool]:
    """Return the module to train and whether it came wrapped in ``DistributedDataParallel``.

    ``torch.compile``'s wrapper is unwrapped too (the optimizer names its blocks after
    the bare model, so states load across the wrapper).

    Raises:
        TypeError: For ``DataParallel`` (use ``DistributedDataParallel``) or a
            ``model`` that is not a module.
    """
    wrapped = False
    while True:
        inner = _compiled_inner(model)
        if inner is None and isinstance(model, DistributedDataParallel):
            inner, wrapped = model.module, True
        if inner is None:
            break
        model = inner
    if isinstance(model, DataParallel):
        raise TypeError(
            "model: DataParallel is not supported; use DistributedDataParallel or pass "
            "the wrapped module"
        )
    if not isinstance(model, nn.Module):
        hint = ""
        if isinstance(model, Iterable) and not isinstance(model, str | bytes):
            hint = (
                "; SINGD takes the model first, to find its layers: pass SINGD(model), or "
                "SINGD(model, params) to train only some parameters"
            )
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}{hint}")
    return model, wrapped


def parameter_names(model: nn.Module) -> dict[int, str]:
    """The model's names of its parameters by ``id``; a shared one as ``"a = b"``."""
    names: dict[int, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        known = names.get(id(param))
        names[id(param)] = name if known is None else f"{known} = {name}"
    return names
