"""What a user of a data-parallel optimizer calls on it: the collectives so far, averaging now.

A mixin of :class:`~singd_opt.SINGD`; the work is the :class:`DataParallelSync`'s.
"""

from __future__ import annotations

from typing import Any

from singd_opt.distributed.collectives import CommunicationStats
from singd_opt.distributed.data_parallel import DataParallelSync


class DataParallelCalls:
    """The data-parallel calls of an optimizer; it provides the attributes below."""

    param_groups: list[dict[str, Any]]
    _sync: DataParallelSync | None

    @property
    def communication(self) -> CommunicationStats | None:
        """Collectives issued so far (calls and payload bytes), ``None`` without processes."""
        return self._sync.collectives.stats if self._sync is not None else None

    def synchronize_gradients(self) -> None:
        """Average the gradients over the processes now, instead of in :meth:`step`.

        For a model the optimizer averages the gradients of (see
        ``average_gradients``): call it after the backward passes when something
        reads the gradients before :meth:`step`, such as gradient clipping or
        ``GradScaler.unscale_``, so that every process sees the averaged ones. Does
        nothing in a single process or when the gradients are averaged elsewhere.
        """
        if self._sync is not None:
            self._sync.synchronize_gradients(self.param_groups)
