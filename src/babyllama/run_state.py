"""``<out_dir>/run_state.json``: per stage, the fingerprint it ran with, whether it finished, its seconds.

One owner: `babyllama run` records stages through this class, the sweep asks it which stages another run
finished and adopts them, and the reports ask it what is finished; nobody else reads or writes the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from babyllama.errors import UserError
from babyllama.io import atomic_write_json, read_json

STATE_FILE = "run_state.json"


class RunState:
    """The run state of one out_dir; every call reads the file afresh (another process may have written it)."""

    def __init__(self, out_dir: Path) -> None:
        self.path = Path(out_dir) / STATE_FILE

    def read(self) -> dict[str, dict[str, Any]]:
        """{stage: {fingerprint, done, seconds}}; {} when the run has not started; a damaged file is one error."""
        if not self.path.exists():
            return {}
        try:
            state = read_json(self.path)
        except ValueError:
            raise UserError(f"{self.path}: corrupted run state; delete it to start the run over") from None
        return {k: v for k, v in state.items() if isinstance(v, dict)} if isinstance(state, dict) else {}

    def read_or_empty(self) -> dict[str, dict[str, Any]]:
        """As read(), but {} for a damaged file: for readers that only show what is there (the reports)."""
        try:
            return self.read()
        except UserError:
            return {}

    def record(self, stage: str) -> dict[str, Any]:
        return self.read().get(stage, {})

    def finished_with(self, stage: str) -> str | None:
        """The fingerprint ``stage`` finished with, or None when it has not finished."""
        rec = self.record(stage)
        return rec.get("fingerprint") if rec.get("done") else None

    def write(self, stage: str, fingerprint: str | None, done: bool, seconds: float) -> None:
        state = self.read()
        state[stage] = {"fingerprint": fingerprint, "done": done, "seconds": seconds}
        atomic_write_json(self.path, state)

    def forget(self, stage: str) -> None:
        state = self.read()
        if state.pop(stage, None) is not None:
            atomic_write_json(self.path, state)

    def adopt(self, stage: str, other: RunState) -> bool:
        """Take ``stage``'s record from another run (whose outputs this run links to); True when it changed."""
        theirs = other.record(stage)
        state = self.read()
        if not theirs or state.get(stage) == theirs:
            return False
        state[stage] = theirs
        atomic_write_json(self.path, state)
        return True

    def seconds(self, order: list[str]) -> dict[str, float | None]:
        """Seconds per recorded stage, in ``order`` (stages no longer planned last, by name); {} if unreadable."""
        state = self.read_or_empty()
        rank = {name: i for i, name in enumerate(order)}
        return {k: state[k].get("seconds") for k in sorted(state, key=lambda k: (rank.get(k, len(order)), k))}
