"""Warnings that point at the user's line.

A warning raised deep inside the optimizer (a hook, a block, a helper reached at
different depths) names the line of the user's code that led to it: the innermost
frame outside ``singd_opt`` and ``torch`` (``optimizer.step()``, ``SINGD(model)``,
``loss.backward()`` for warnings from a recording hook, ``scaler.step(optimizer)``).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

_INTERNAL = tuple(
    str(Path(module.__file__).resolve().parent)
    for module in (sys.modules[__name__.rpartition(".")[0]], torch)
    if module.__file__ is not None
)


def _is_internal(filename: str) -> bool:
    try:
        path = str(Path(filename).resolve())
    except (OSError, ValueError):  # "<frozen ...>", "<string>"
        return filename.startswith("<frozen")
    return path.startswith(_INTERNAL) or filename.startswith("<frozen")


def user_stacklevel() -> int:
    """The ``stacklevel`` of :func:`warnings.warn` that names the caller's first outside frame.

    Counted from the function that calls :func:`warn_user` (or this function).
    """
    frame = sys._getframe(1)
    level = 1
    while frame is not None and _is_internal(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """Issue ``message`` as a warning attributed to the user's line.

    Args:
        message: The text.
        category: The warning class.
    """
    warnings.warn(message, category, stacklevel=user_stacklevel())
