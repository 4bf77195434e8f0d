"""How the ``singd-opt`` command ends after Ctrl-C: one line, then ``SIGINT``.

A program that handles Ctrl-C reports what it has to (one line on stderr here), then
ends by ``SIGINT`` with the default action, so that its parent (a shell, a script,
``torchrun``) sees the interruption and stops as well; a shell reports status
:math:`128 + 2 = 130`. Imports only the standard library, so that it works while
``torch`` is still loading.
"""

from __future__ import annotations

import os
import signal
import sys

PROG = "singd-opt"
#: Exit status after an interruption (Ctrl-C): 128 + SIGINT, as a shell reports it.
EXIT_INTERRUPTED = 128 + signal.SIGINT


def report_interrupt(message: str = "") -> int:
    """Print ``singd-opt: interrupted<message>`` on stderr; return :data:`EXIT_INTERRUPTED`."""
    print(f"{PROG}: interrupted{message}", file=sys.stderr)
    return EXIT_INTERRUPTED


def end_by_sigint() -> None:
    """End this process by ``SIGINT`` with the default action (POSIX; elsewhere return).

    Flushes stdout and stderr first. It also makes the status the same however the
    interruption reached Python (CPython itself ends by ``SIGINT`` when a
    ``KeyboardInterrupt`` escaped an ``exec`` of a string, even a handled one).
    """
    if os.name != "posix":
        return
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
