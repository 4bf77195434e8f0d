"""The ``singd-opt`` program: the console command and ``python -m singd_opt_demo``.

Ctrl-C while ``torch`` and the command load (a few seconds) ends like one during
training (:mod:`singd_opt_demo.interrupt`), without a traceback through the imports.
"""

from __future__ import annotations

from singd_opt_demo.interrupt import end_by_sigint, report_interrupt


def run() -> int:
    """Run the command on ``sys.argv[1:]``; its exit status.

    See :func:`singd_opt_demo.cli.main`.
    """
    try:
        from singd_opt_demo.cli import main
    except KeyboardInterrupt:
        status = report_interrupt()
        end_by_sigint()
        return status
    return main()
