"""Warning and error classes raised by :mod:`structmat`."""

from __future__ import annotations

import torch


class DenseFallbackWarning(UserWarning):
    """An operation ran through a dense ``d x d`` matrix instead of a structured kernel.

    Emitted by the generic defaults of :class:`structmat.StructuredMatrix`. Built-in
    structures implement every operation structurally and never emit it; the test
    suite turns it into an error.
    """


class SingularMatrixError(torch.linalg.LinAlgError, ValueError):
    """The matrix to invert is singular (or numerically singular in its dtype).

    Subclasses both :class:`torch.linalg.LinAlgError` and :class:`ValueError`, so
    code catching either keeps working.
    """
