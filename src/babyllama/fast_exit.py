"""Ending a babyllama process without tearing the interpreter down.

Why: once torch and transformers' model code are loaded, Python's own shutdown (clearing tens of thousands
of module objects, collecting them, torch's teardown) took about 1 s of CPU on 2 cores, after the command's
output was complete and its files written: a fixed cost of every command that loads a model
(benchmarks/bench_fixed_costs.py). Everything a normal exit does that a user could see is still done here:
the ``atexit`` handlers run (logging flushes, temporary folders registered with ``weakref.finalize`` are
removed, multiprocessing joins its children), and stdout and stderr are flushed; only then does the process
end with ``os._exit``. Where a non-daemon thread is still running, the normal exit waits for it, as it
always did.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_now(code: int) -> NoReturn:
    """End this process with status ``code``: the atexit handlers, then the flushed streams, then ``os._exit``."""
    main = threading.main_thread()
    if any(t is not main and not t.daemon and t.is_alive() for t in threading.enumerate()):
        sys.exit(code)  # a normal exit joins the threads first
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):  # a closed or vanished console: nothing more can be shown there
            pass
    os._exit(code)
