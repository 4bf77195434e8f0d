"""``python -m singd_opt``: forwards to the ``singd-opt`` training command.

The command lives in the separate :mod:`singd_opt_demo` package of the same
distribution; it is imported only when this module runs, so the library itself never
imports the demo.
"""


def _run() -> int:
    """Run the ``singd-opt`` command with the process's arguments; its exit status."""
    from singd_opt_demo.program import run

    return run()


if __name__ == "__main__":
    raise SystemExit(_run())
