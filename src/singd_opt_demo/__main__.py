"""``python -m singd_opt_demo``: the ``singd-opt`` training command."""

from singd_opt_demo.cli import main

raise SystemExit(main())
