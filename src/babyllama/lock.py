"""One command at a time per out_dir: an exclusive advisory lock held for the command's whole life.

Two `run`s on one out_dir would interleave their writes (metrics truncated under the other's appends, a
folder swapped while the other renames it), so every command that writes into an out_dir first takes
``<out_dir>/.lock`` with ``flock``. The kernel drops the lock when its process ends, however it ends, so a
lock file left by a killed process is simply taken over (and said so); a live holder makes the second
command stop with one line naming its pid. Under torchrun only rank 0 takes it: the other ranks are
part of the same command. While the lock is held no other babyllama process writes there, which makes
it the moment to clear the temporary folders of writes a kill interrupted.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from babyllama.errors import UserError
from babyllama.io import remove_stale_temporaries

LOCK_FILE = ".lock"


def _holder(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict) -> str:
    if not info.get("pid"):
        return "pid unknown"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info['pid']} on {info.get('host', '?')}, `{info.get('command', '?')}` since {since}"


@contextmanager
def out_dir_lock(out: Path, command: str, *, clean: bool = True) -> Iterator[None]:
    """Hold ``<out>/.lock`` exclusively until the block ends; UserError naming the holder if it is taken.
    ``clean``: remove the temporaries of interrupted writes (not when other processes write below ``out``
    under locks of their own, as the members of a sweep do under ``<out>/sweep/``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"out_dir {out}: is a file, expected a folder")
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"out_dir {out} is in use by another babyllama command ({_describe(_holder(path))}); "
                            "wait for it to finish or stop it, then run again") from None
        previous = _holder(path)
        if previous.get("pid") and previous.get("host") == socket.gethostname() and previous["pid"] != os.getpid():
            print(f"note: {path} was left by {_describe(previous)}, which is no longer running; taking it over",
                  flush=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command, "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        removed = remove_stale_temporaries(out) if clean else 0
        if removed:
            print(f"note: removed {removed} temporary folder(s) under {out} left by an interrupted command", flush=True)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # a clean exit leaves no holder to report
    finally:
        os.close(fd)  # closing the descriptor releases the lock
