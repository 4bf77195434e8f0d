"""``python -m singd_opt_demo``: the ``singd-opt`` training command."""

from singd_opt_demo.program import run

raise SystemExit(run())
