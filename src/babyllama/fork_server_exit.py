"""Imported only by the side-by-side stages' fork server (the last of ``side_by_side.PRELOAD``): when that
server exits, it ends at once instead of tearing the interpreter down.

Why: the server has imported torch and transformers' model code. When its run ends (a kill included) and
the stages are gone, it sees its lifeline close and exits; Python's teardown of those modules then kept it
alive for 4 to 9 s on a loaded 2-core machine, after its run and stages had died (longer than the 10 s the
kill test allows, under more load). It has nothing to flush or write (it only forks), so nothing is lost.
The stages forked from it inherit this handler, and skip it: only the server's own pid ends this way.
"""

from __future__ import annotations

import atexit
import os

_SERVER = os.getpid()


def _end_now() -> None:
    """Registered last, so it runs first among the exit handlers: the server ends without its teardown."""
    if os.getpid() == _SERVER:
        os._exit(0)


atexit.register(_end_now)
