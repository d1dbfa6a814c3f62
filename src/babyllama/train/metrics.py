"""Training metrics: metrics.jsonl (always), a tqdm bar, and optional TensorBoard / W&B.

Only rank 0 writes. Every line of metrics.jsonl is one JSON object with a "step"; training lines carry
step, epoch, loss, lr, grad_norm, tokens_per_s, tokens_seen, words_seen and the objective's extras
(ce, kd ...), evaluation lines carry dev_loss. On resume the lines past the resumed step are dropped,
so the file reads like one uninterrupted run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from babyllama import progress
from babyllama.config import LoggingConfig
from babyllama.errors import UserError
from babyllama.io import atomic_write_text


def truncate_after(path: Path, step: int) -> None:
    """Keep only the lines with step <= ``step`` (everything after a resumed checkpoint is redone);
    a fresh run (step 0) starts an empty file."""
    if not path.exists():
        return
    if step == 0:
        path.unlink()
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a line torn by a kill
    atomic_write_text(path, "".join(k + "\n" for k in kept))


class MetricsLogger:
    """Appends metric lines to a jsonl file and mirrors them to the bar and the enabled trackers."""

    def __init__(
        self,
        path: Path,
        logging: LoggingConfig,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int,
        run_name: str,
        label: str = "",
        description: str = "",
    ) -> None:
        self.enabled = enabled
        self.path = path
        self._file = None
        self._bar = None
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        truncate_after(path, start_step)
        self._file = open(path, "a", encoding="utf-8")
        if logging.progress:
            # A short label keeps room for the percentage, rate and ETA; the description gets its own line.
            self._bar = progress.bar(total_steps, label or run_name, "step", initial=start_step,
                                     detail=description if len(description) > progress.LABEL_WIDTH else None)
        if logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("logging.tensorboard is true but tensorboard is not installed (pip install tensorboard)") from None
            self._tb = SummaryWriter(log_dir=str(path.parent / "tensorboard"))
        if logging.wandb:
            try:
                import wandb
            except ImportError:
                raise UserError("logging.wandb is true but wandb is not installed (pip install wandb)") from None
            # Offline unless the user configured W&B (WANDB_MODE=online or `wandb login` + WANDB_MODE).
            mode = os.environ.get("WANDB_MODE", "offline")
            self._wandb = wandb.init(project=logging.wandb_project, name=run_name, mode=mode, dir=str(path.parent))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        assert self._file is not None
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        step = int(record["step"])
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, int | float)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)
        if self._bar is not None:
            if "loss" in record:  # one number: at 80 columns more would push the ETA off the line
                self._bar.set_postfix(loss=f"{record['loss']:.3g}", refresh=False)

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(steps)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        self._file = self._bar = self._tb = self._wandb = None
