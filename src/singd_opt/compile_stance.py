"""Recording steps run eagerly under ``torch.compile``; the other steps run the graphs.

Curvature is recorded by tensor hooks on the outputs of the model's linear maps,
installed from a torch function mode during the forward pass
(:mod:`singd_opt.map_calls`). Inside a compiled graph such hooks either split the
graph (a hook that records into the optimizer has side effects Dynamo cannot trace
without compiled autograd) or are traced away. So on the steps that record (one in
``T``) the optimizer sets Dynamo's stance to ``"force_eager"`` from the end of the
previous :meth:`~singd_opt.SINGD.step` to the end of the recording one, and restores
the stance found before afterwards. The compiled graphs are therefore those of the
model alone: no graph, graph break or recompilation is added, and the other steps run
them unchanged. The cost is an eager forward and backward pass every ``T`` steps.
While the stance is set, every compiled function of the process runs eagerly; it is
restored when no optimizer's next step records, when the optimizer's hooks are removed
(:meth:`~singd_opt.SINGD.remove_hooks`) or when the optimizer is deleted.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

_eager_owners: weakref.WeakSet[Any] = weakref.WeakSet()
_saved: list[Any] = []  # the stance found when the first owner asked for eager execution


def _current_stance() -> Any:
    from torch._dynamo import eval_frame

    return eval_frame._stance


def eager_while_recording(owner: object, eager: bool) -> None:
    """Ask for (``eager=True``) or release eager execution of compiled code for ``owner``.

    The stance is ``"force_eager"`` while at least one owner asks for it; when the last
    one releases it, the stance found before is restored.
    """
    if eager:
        if owner in _eager_owners:
            return
        if next(iter(_eager_owners), None) is None:
            _saved[:] = [_current_stance()]
            torch.compiler.set_stance("force_eager")
        _eager_owners.add(owner)
        weakref.finalize(owner, _restore_if_unowned)  # an optimizer deleted mid-schedule
        return
    if owner in _eager_owners:
        _eager_owners.discard(owner)
        _restore_if_unowned()


def _restore_if_unowned() -> None:
    """Restore the saved stance when no (living) owner asks for eager execution."""
    living = next(iter(_eager_owners), None)  # iteration skips owners being deleted
    if living is None and _saved:
        stance = _saved.pop()
        torch.compiler.set_stance(
            stance.stance,
            skip_guard_eval_unsafe=stance.skip_guard_eval_unsafe,
            force_backend=stance.backend,
        )

