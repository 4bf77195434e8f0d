"""The path a reader follows through one optimizer step: modules crossed and transitions.

One ``step()`` of SINGD on a small MLP (two linear layers around a layer norm,
``T=1`` so the step updates the preconditioners; with the reference's defaults otherwise,
and with the recommended ones) is traced with
:func:`sys.setprofile`. Every call of a Python function defined in the optimizer's
package or in ``structmat`` is an event; the table gives the number of distinct
modules the events visit and the number of transitions (consecutive events in
different modules). ``--reference`` traces the published ``singd`` package's step on
the same model for comparison.

Usage::

    python benchmarks/step_path.py
    python benchmarks/step_path.py --reference
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 4))


Factory = Callable[[nn.Module], torch.optim.Optimizer]


def trace_step(make_optimizer: Factory, roots: list[Path]) -> list[str]:
    """Return the modules of the traced calls of one ``step()``, in order."""
    model = _model()
    optimizer = make_optimizer(model)
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    prefixes = tuple(str(root) for root in roots)
    events: list[str] = []

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if event == "call" and frame.f_code.co_filename.startswith(prefixes):
            events.append(frame.f_globals.get("__name__", frame.f_code.co_filename))

    for _ in range(2):  # the second step is traced (nothing is created lazily any more)
        optimizer.zero_grad()
        functional.mse_loss(model(x), y).backward()
        events.clear()
        sys.setprofile(profile)
        try:
            optimizer.step()
        finally:
            sys.setprofile(None)
    return events


def summarise(events: list[str], collapse: str | None = None) -> tuple[int, int]:
    """Distinct modules and transitions between consecutive events.

    Args:
        events: The modules of the calls, in order.
        collapse: A package whose modules count as one (the reader of the optimizer
            sees ``structmat`` as one library), or ``None``.
    """
    if collapse is not None:
        events = [collapse if e.startswith(collapse + ".") else e for e in events]
    transitions = sum(1 for a, b in itertools.pairwise(events) if a != b)
    return len(set(events)), transitions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="also trace singd 0.0.5")
    args = parser.parse_args()
    import singd_opt
    import structmat

    roots = [Path(singd_opt.__file__).parent, Path(structmat.__file__).parent]
    rows = []
    for label, options in (
        ("reference defaults", {"defaults": "reference", "train_all_parameters": True}),
        ("recommended defaults", {}),
    ):
        events = trace_step(lambda m, o=options: singd_opt.SINGD(m, T=1, **o), roots)
        rows.append((f"singd_opt, {label}", *summarise(events)))
        rows.append(("  (structmat as one)", *summarise(events, collapse="structmat")))
    if args.reference:
        import singd
        from singd.optim import optimizer as reference

        reference_roots = [Path(singd.__file__).parent]
        events = trace_step(
            lambda m: reference.SINGD(m, T=1, warn_unsupported=False), reference_roots
        )
        rows.append(("singd 0.0.5", *summarise(events)))
    print(f"{'optimizer':<38}{'modules':>9}{'transitions':>13}")
    for name, modules, transitions in rows:
        print(f"{name:<38}{modules:>9}{transitions:>13}")


if __name__ == "__main__":
    main()
