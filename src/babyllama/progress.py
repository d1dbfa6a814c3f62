"""Progress bars that stay readable: a short label, the details on their own line, sane in a log file.

Why one module: a bar's label is the first thing tqdm drops space for, so a 120-character label left
an 80-column terminal with the label alone — no percentage, rate or ETA for an hours-long stage.
Every bar of babyllama is made here, labelled ``<model> <stage>`` (at most ``LABEL_WIDTH`` characters);
a longer description is printed once, on its own line, before the bar.

On a terminal the bar redraws in place. When stderr is not a terminal (a log file, a scheduler's
output) each update is written as its own line, at most one a minute (``INTERVAL_ENV`` seconds where set:
a stage that `babyllama run` runs side by side, whose lines it relays), so the log reads top to bottom
without carriage returns.

``current(label)`` names what the bars inside it belong to (the evaluation of one model), so scorers
deep in evaluate/ label their bars without threading a name through every call.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

from tqdm import tqdm

LABEL_WIDTH = 32
LOG_INTERVAL_S = 60.0
INTERVAL_ENV = "BABYLLAMA_PROGRESS_INTERVAL"

_CONTEXT: ContextVar[str | None] = ContextVar("babyllama_progress_label", default=None)


def short(label: str, width: int = LABEL_WIDTH) -> str:
    """``label`` cut to ``width`` characters (an ellipsis marks the cut)."""
    return label if len(label) <= width else label[: width - 1] + "…"


@contextmanager
def current(label: str) -> Iterator[None]:
    """Bars made inside this block (without a label of their own) are labelled ``label``."""
    token = _CONTEXT.set(label)
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def context_label(fallback: str) -> str:
    """The label of the enclosing ``current`` block, or ``fallback`` outside one."""
    return _CONTEXT.get() or fallback


class _LineWriter:
    """A file for tqdm that turns each in-place redraw into one line (for logs, not terminals)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._last = ""

    def write(self, text: str) -> None:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line and line != self._last:
            self.stream.write(line + "\n")
            self._last = line

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def bar(total: int | None, label: str, unit: str, *, enabled: bool = True, initial: int = 0,
        detail: str | None = None, stream: IO[str] | None = None) -> tqdm:
    """A tqdm bar labelled ``label`` (cut to LABEL_WIDTH); ``detail``, when given, printed first on its own line."""
    stream = stream or sys.stderr
    tty = is_terminal(stream)
    if enabled and detail:
        stream.write(detail + "\n")
        stream.flush()
    interval = 0.1 if tty else _log_interval()
    return tqdm(total=total, initial=initial, desc=short(label), unit=unit, disable=not enabled,
                file=stream if tty else _LineWriter(stream), dynamic_ncols=tty, ncols=None if tty else 100,
                mininterval=interval, maxinterval=max(interval, 10.0), leave=True)


def _log_interval() -> float:
    try:
        return max(1.0, float(os.environ.get(INTERVAL_ENV, LOG_INTERVAL_S)))
    except ValueError:
        return LOG_INTERVAL_S


def iterate(items: Any, fallback: str, unit: str, *, enabled: bool = True, total: int | None = None) -> Any:
    """``items`` wrapped in a bar labelled by the enclosing ``current`` block (else ``fallback``)."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    with bar(total, context_label(fallback), unit, enabled=enabled) as b:
        for x in items:
            yield x
            b.update(1)
