"""Noticing parameters that something else updates in place between two steps.

With the reference optimizer, code commonly pairs SINGD with a second optimizer for
the parameters the reference does not train. Since SINGD trains every parameter by
default, such code would update those parameters twice. Every in-place change of a
tensor increments its version counter; :class:`ForeignUpdateWatch` remembers the
versions after each step and warns (once) when parameters changed between two steps
in two consecutive steps, which a second optimizer does and a one-off change (loading
a checkpoint into the model) does not.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from torch import nn

from singd_opt.blocks import PreconditionerBlock


class ForeignUpdateWatch:
    """Warns when parameters are changed in place outside the optimizer, step after step."""

    def __init__(self, blocks: Iterable[PreconditionerBlock]) -> None:
        named: dict[nn.Parameter, str] = {}
        for block in blocks:
            for rows in block.params:
                named.setdefault(rows.param, block.name)
        self._names = named
        self._versions: dict[nn.Parameter, int] | None = None
        self._changed_before = False
        self._warned = False

    def remember(self) -> None:
        """Note the parameters' versions (after a step)."""
        if not self._warned:
            self._versions = {param: param._version for param in self._names}

    def check(self) -> None:
        """Compare with the versions noted after the previous step (before a step)."""
        if self._warned or self._versions is None:
            return
        changed = sorted(
            {name for param, name in self._names.items() if param._version != self._versions[param]}
        )
        if changed and self._changed_before:
            self._warned = True
            warnings.warn(
                f"parameters of {changed[:5]}{' ...' if len(changed) > 5 else ''} were changed "
                "in place outside SINGD.step in two consecutive steps; if another optimizer "
                "also trains them they are updated twice (SINGD trains every parameter it is "
                "given; pass train_all_parameters=False to train only Linear and Conv layers, "
                "or give SINGD only its parameters)",
                stacklevel=4,
            )
        self._changed_before = bool(changed)
