"""``python -m singd_opt``: the ``singd-opt`` training command."""

from singd_opt.cli import main

raise SystemExit(main())
